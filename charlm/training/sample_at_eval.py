"""The short sample drawn at each evaluation (train.sample_every_eval), outside training's RNG.

Training's random stream (dropout masks, shuffles, variable windows) comes from the global torch,
NumPy and Python generators, which checkpoints save for an exact resume. The sample draws from a
`torch.Generator` of its own, seeded from (train.seed, step), and steps a `LeanStepper` copy of
the weights (no dropout, no autograd), so a run with samples on trains to the same weights as
one without, and a resumed run draws the same samples as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer

from charlm.data.tokenizer import Encoder, StreamDecoder, special_ids
from charlm.inference.sample import choose, start_ids
from charlm.model.network import LeanStepper, RNNLanguageModel


@dataclass(frozen=True)
class EvalSample:
    step: int
    text: str
    length: int  # tokens generated
    temperature: float
    seed: int
    finite: bool = True  # False: the logits stopped being finite, and generation with them

    @property
    def shown(self) -> str:
        """What training prints."""
        if not self.finite:
            return f"{self.text.rstrip()}[stopped: the model's outputs are not finite]"
        return self.text.rstrip()

    def record(self) -> dict[str, object]:
        """The metrics.jsonl record (kind "sample")."""
        return {
            "kind": "sample",
            "step": self.step,
            "text": self.text,
            "length": self.length,
            "temperature": self.temperature,
            "seed": self.seed,
            "finite": self.finite,
        }


def sample_seed(train_seed: int, step: int) -> int:
    """The seed of the sample at `step`: fixed by the run's seed and the step, so reruns and
    resumes draw the same text (SeedSequence touches no global generator)."""
    return int(np.random.SeedSequence([train_seed, step]).generate_state(1, np.uint64)[0] >> 1)


@torch.no_grad()
def draw_sample(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    level: str,
    *,
    step: int,
    length: int,
    temperature: float,
    train_seed: int,
) -> EvalSample:
    """`length` tokens from the model's current weights (fewer when its logits stop being finite,
    as an exploding run's do); the model and every global generator are left as they were."""
    device = model.embedding.weight.device
    seed = sample_seed(train_seed, step)
    generator = torch.Generator(device=device).manual_seed(seed)
    stepper = LeanStepper(model)
    special = special_ids(tokenizer)
    banned = [special["unk"]] + ([special["start"]] if level == "word" else [])
    banned_ids = [b for b in banned if b is not None]
    decoder = StreamDecoder(tokenizer, level)
    current = torch.tensor(start_ids(Encoder(tokenizer, level), level, special), device=device)
    state = model.initial_state(1, device)
    pieces, finite = [], True
    for _ in range(length):
        logits, state = stepper(current, state)  # (1, vocab)
        if not bool(torch.isfinite(logits).all()):
            finite = False
            break
        if banned_ids:
            logits[:, banned_ids] = float("-inf")
        current = choose(logits, temperature, 0, 1.0, generator)
        pieces.append(decoder.step(int(current[0])))
    generated = len(pieces)
    pieces.append(decoder.finish())
    return EvalSample(step, "".join(pieces), generated, temperature, seed, finite)
