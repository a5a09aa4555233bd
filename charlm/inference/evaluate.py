"""Held-out scores: loss in nats/token, perplexity, and bits per character of the source text."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.nn import functional as F

from charlm.config import RunConfig
from charlm.data.batching import (
    IGNORE_INDEX,
    Batcher,
    Cursor,
    make_batcher,
    to_tensors,
)
from charlm.data.prepare import read_text
from charlm.data.tokenizer import Encoder, count_chars, special_ids
from charlm.errors import DataError
from charlm.model.network import RNNLanguageModel, detach_state
from charlm.rundir.checkpoint import open_for_use
from charlm.tasks.curriculum import TaskRun
from charlm.tasks.masks import read_mask

Reducer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean negative log-likelihood, nats per predicted token
    perplexity: float
    bits_per_char: float  # total information over the characters of the source text
    tokens: int  # tokens predicted (with a mask: the scored targets)
    chars: int  # characters of the source text the tokens stand for
    task: dict | None = None  # with a mask: scored_tokens and task metrics (tasks/curriculum.py)

    def as_dict(self) -> dict[str, Any]:
        result = asdict(self)
        task = result.pop("task")
        return {**result, **(task or {})}


def make_result(nll_sum: float, predicted: int, tokens: int, chars: int) -> EvalResult:
    """Scores from a summed loss. Bits per character spreads the per-token loss over the text:

    loss * (tokens / chars) / ln 2, so char, word and BPE models of the same text compare.
    """
    loss = nll_sum / max(predicted, 1)
    bpc = loss * tokens / max(chars, 1) / math.log(2)
    perplexity = math.exp(loss) if loss < 700 else math.inf
    return EvalResult(loss, perplexity, bpc, predicted, chars)


def _eval_batcher(
    ids: np.ndarray,
    batching: str,
    batch_size: int,
    seq_len: int,
    special_ids: dict | None,
    rank: int,
    world_size: int,
    mask: np.ndarray | None,
) -> Batcher:
    """The batches of `ids` in their training order, unshuffled: lines, sentences or streams
    (as many streams as the text can fill, for a short text)."""
    if batching == "stream":
        streams = max(1, min(batch_size * world_size, len(ids) - 1))
        batch_size = streams // world_size or 1
    return make_batcher(
        batching, ids, batch_size, seq_len, special_ids or {}, rank=rank,
        world_size=world_size, mask=mask,
    )  # fmt: skip


@torch.inference_mode()
def evaluate_ids(
    model: RNNLanguageModel,
    ids: np.ndarray,
    *,
    batching: str,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    special_ids: dict | None = None,
    max_batches: int = 0,
    rank: int = 0,
    world_size: int = 1,
    reduce: Reducer | None = None,
    mask: np.ndarray | None = None,
    correct: list[int] | None = None,
) -> tuple[float, int]:
    """Summed negative log-likelihood and the number of predicted tokens over `ids`.

    Streams carry the state through each stream as training does; sentences and lines start
    from zero. With several processes each takes its own streams and `reduce` sums the totals.
    `mask` (charlm/tasks/masks.py, one byte per id): only targets with bit 0 set are scored.
    `correct`, when given, gets the number of scored targets the model ranked first appended.
    """
    was_training = model.training
    model.eval()
    try:
        batcher = _eval_batcher(
            ids, batching, batch_size, seq_len, special_ids, rank, world_size, mask
        )
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.float64, device=device)
        right = torch.zeros((), dtype=torch.float64, device=device)
        cursor = Cursor()
        state = model.initial_state(batcher.batch_size, device)
        steps = batcher.steps_per_epoch
        if max_batches:
            steps = min(steps, max_batches)
        for _ in range(steps):
            x, y, cursor = batcher.batch(cursor)
            if x.shape[1] == 0:
                break
            inputs, targets = to_tensors(x, y, device)
            if not batcher.carries_state or inputs.shape[1] != batcher.batch_size:
                state = model.initial_state(inputs.shape[1], device)
            logits, state = model(inputs, state)
            state = detach_state(state)
            total += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            count += (targets != IGNORE_INDEX).sum()
            if correct is not None:  # an ignored target (-100) is never the argmax
                right += (logits.argmax(dim=-1) == targets).sum()
        if reduce is not None:
            total, count = reduce(total), reduce(count)
            right = reduce(right) if correct is not None else right
        if correct is not None:
            correct.append(int(right))
        return float(total), int(count)
    finally:
        model.train(was_training)


def score_text(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    config: RunConfig,
    raw: str,
    *,
    level: str,
    batch_size: int | None = None,
    seq_len: int | None = None,
    source: str = "the text",
    mask: Path | None = None,
    meta: dict[str, Any] | None = None,
) -> EvalResult:
    """Score `raw` with a model and the vocabulary it was trained with, batched as the run was
    (`batch_size`/`seq_len` default to its training's); unseen input becomes the unknown token.

    A `mask` file (charlm/tasks/masks.py, char level) scores only the targets it marks, as training
    did, and adds the task metrics of its groups (`meta`: the run's prepared-data meta)."""
    ids = Encoder(tokenizer, level).encode(raw)
    if len(ids) < 2:
        raise DataError(f"{source}: too short to evaluate (needs at least 2 tokens)")
    if mask is not None and level != "char":
        raise DataError(f"{mask}: a mask scores characters; this checkpoint is {level} level")
    marks = read_mask(mask, len(ids)) if mask is not None else None
    newline = tokenizer.token_to_id("\n") if level == "char" else None
    special = {**special_ids(tokenizer), "newline": newline}

    def score(part: np.ndarray, **options: Any) -> tuple[float, int]:
        return evaluate_ids(
            model,
            part,
            batching=config.data.batching,
            batch_size=batch_size or config.train.batch_size,
            seq_len=seq_len or config.train.seq_len,
            device=model.embedding.weight.device,
            special_ids=special,
            **options,
        )

    nll, predicted = score(ids, mask=marks)
    result = make_result(nll, predicted, len(ids), count_chars(raw))
    if marks is None:
        return result
    fields = TaskRun(config, meta or {}, newline).evaluate(ids, marks, score)
    fields.pop("stage", None)  # a training run's state, not a property of the scored text
    return replace(result, task={"scored_tokens": predicted, **fields})


def evaluate_checkpoint(
    checkpoint: Path,
    text: Path,
    *,
    batch_size: int | None = None,
    seq_len: int | None = None,
    device: str = "auto",
    which: str = "best",
    errors: str = "strict",
    csv_column: str | None = None,
    mask: Path | None = None,
) -> EvalResult:
    """Score a checkpoint on a text file, tokenised with the checkpoint's own vocabulary.

    A .csv text is read from `csv_column`, by default the column the run trained on. A `mask`
    file (charlm/tasks/masks.py, char level) scores only the targets it marks, as training did, and
    adds the task metrics of its groups.

    Characters or words the vocabulary never saw become the unknown token, not an error.
    """
    loaded, model = open_for_use(checkpoint, which, device)
    raw = read_text(text, errors=errors, csv_column=csv_column or loaded.config.data.csv_column)
    return score_text(
        model,
        Tokenizer.from_str(loaded.tokenizer_json),
        loaded.config,
        raw,
        level=loaded.meta["level"],
        batch_size=batch_size,
        seq_len=seq_len,
        source=str(text),
        mask=mask,
        meta=loaded.meta,
    )
