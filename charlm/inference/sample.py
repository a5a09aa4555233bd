"""Generating text from a checkpoint: one step per token, state carried, temperature/top-k/top-p."""

from __future__ import annotations

import contextlib
import math
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import torch
from tokenizers import Tokenizer

from charlm.config import SEED_MAX
from charlm.data.tokenizer import Encoder, StreamDecoder, special_ids
from charlm.errors import (
    ArgumentError,
    DataError,
    InputTooLarge,
    UsageError,
    check_type,
    environment_error,
    human_bytes,
)
from charlm.model.network import LeanStepper, State
from charlm.rundir.checkpoint import open_for_use
from charlm.system.device import available_memory

PRIME_MAX = 1_000_000  # a prime is a prompt: at most this many bytes (--prime-file) or characters
PRIME_CHUNK = 512  # a longer prime goes through the model this many tokens at a time

_TYPES = (  # the option, the types the API takes for it, and how its message names them
    ("prime", str, "a str"),
    ("length", Integral, "an int"),
    ("temperature", Real, "a number"),
    ("top_k", Integral, "an int"),
    ("top_p", Real, "a number"),
    ("seed", (Integral, type(None)), "an int or None"),
    ("num_samples", Integral, "an int"),
    ("sentences", (bool, type(None)), "True, False or None"),
    ("min_words", Integral, "an int"),
)


def option_name(field: str, caller: str | None) -> str:
    """How a message names an option: its flag (`--top-k`) for the command line, with `caller`
    (the API function) the Python argument (`top_k`)."""
    return field if caller else "--" + field.replace("_", "-")


@dataclass(frozen=True)
class SampleOptions:
    prime: str = ""
    length: int = 500  # tokens per sample (words per sentence in sentence mode)
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # keep the k most likely tokens (0 = all)
    top_p: float = 1.0  # keep the smallest set whose probability reaches p (1 = all)
    seed: int | None = None
    num_samples: int = 1
    sentences: bool | None = None  # None: as the model was trained (data.batching)
    min_words: int = 0  # sentence mode: SENTENCE_END is not allowed before this many words

    def validate(self, caller: str | None = None) -> None:
        """Refuse options out of range, naming the command line's flags (`--length`); with
        `caller` (an API function's name) check the types first and name the arguments."""
        if caller is not None:
            for field, kinds, what in _TYPES:
                check_type(getattr(self, field), kinds, what, field, caller)

        def refuse(field: str, rule: str) -> ArgumentError:
            value = getattr(self, field)
            return ArgumentError(f"{option_name(field, caller)} {rule} (got {value})")

        if self.length < 1:
            raise refuse("length", "must be at least 1")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise refuse("temperature", "must be 0 (greedy) or a finite positive number")
        if self.seed is not None and not 0 <= self.seed <= SEED_MAX:
            raise refuse("seed", f"must be in 0..{SEED_MAX}")
        if self.top_k < 0:
            raise refuse("top_k", "must be 0 (off) or positive")
        if not 0 < self.top_p <= 1:
            raise refuse("top_p", "must be in (0, 1]")
        if self.num_samples < 1:
            raise refuse("num_samples", "must be at least 1")
        if self.min_words < 0:
            raise refuse("min_words", "must not be negative")
        if len(self.prime) > PRIME_MAX:
            raise ArgumentError(
                f"{option_name('prime', caller)} is {len(self.prime):,} characters, more than "
                f"a prime may be ({PRIME_MAX:,}); start from the end of the text instead"
            )


def read_prime(path: Path) -> str:
    """--prime-file: the file's text exactly (a final line break included), or stdin's for -;
    at most PRIME_MAX bytes are read, so an endless input (/dev/urandom, a pipe) is refused."""
    try:
        with contextlib.ExitStack() as stack:
            file = sys.stdin.buffer if str(path) == "-" else stack.enter_context(open(path, "rb"))  # noqa: SIM115
            data = file.read(PRIME_MAX + 1)
    except FileNotFoundError:
        raise UsageError(
            f"--prime-file {path}: no such file; give the file to start from"
        ) from None
    except IsADirectoryError:
        raise UsageError(f"--prime-file {path}: is a folder; give a text file") from None
    except OSError as error:
        found = environment_error(error)
        raise found or DataError(
            f"--prime-file {path}: cannot read it ({error.strerror})"
        ) from None
    if len(data) > PRIME_MAX:
        raise InputTooLarge(
            f"--prime-file {path}: longer than {human_bytes(PRIME_MAX)}, the most a prime may "
            f"be; give a shorter prompt (tail -c {PRIME_MAX} FILE keeps its end)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"--prime-file {path}: not UTF-8 text (invalid byte at offset {error.start}); "
            "save it as UTF-8"
        ) from None


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set excluded logits to -inf: outside the top k, or outside the top-p nucleus."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # Stable: tied tokens keep their index order, so the cut between them is reproducible.
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1, stable=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches p; the first always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator
) -> torch.Tensor:
    """Next token per row of logits (batch, vocab)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def start_ids(encoder: Encoder, level: str, special: dict[str, int | None]) -> list[int]:
    """Where generation starts without a prime: SENTENCE_START for a sentence (word) model,
    else the token of a line break."""
    if level == "word" and special.get("start") is not None:
        return [int(special["start"])]  # type: ignore[arg-type]
    ids = [int(i) for i in encoder.encode("\n")]
    return ids[-1:] if ids else [0]


class Sampler:
    """A loaded model ready to generate; `generate` calls `emit(sample_index, text)` as it goes."""

    def __init__(self, checkpoint: Path, device: str = "auto", which: str = "best") -> None:
        loaded, self.model = open_for_use(checkpoint, which, device)
        self.loaded = loaded
        self.config = loaded.config
        self.level: str = loaded.meta["level"]
        self.device = self.model.embedding.weight.device
        self.step = LeanStepper(self.model)  # weights laid out once for one-token steps
        self.tokenizer = Tokenizer.from_str(loaded.tokenizer_json)
        self.special = special_ids(self.tokenizer)
        self.encoder = Encoder(self.tokenizer, self.level)

    def _prime_ids(self, prime: str) -> list[int]:
        if prime:
            ids = [int(i) for i in self.encoder.encode(prime)]
            if self.level == "word" and ids and ids[-1] == self.special["end"]:
                ids = ids[:-1]  # continue the last sentence rather than start a new one
            return ids
        return start_ids(self.encoder, self.level, self.special)

    def check_memory(self, options: SampleOptions, caller: str | None = None) -> None:
        """Refuse --num-samples/--length that cannot fit: per sample, the carried state, a few
        copies of the logits (filtering sorts them), the text kept, and the outputs of one
        PRIME_CHUNK of the prime. `caller` (an API function) names the Python arguments."""
        m = self.config.model
        vocab = self.tokenizer.get_vocab_size()
        prefix = min(len(self._prime_ids(options.prime)), PRIME_CHUNK) if options.prime else 0
        per_sample = 4 * (8 * vocab + 4 * m.layers * m.hidden_size) + 8 * options.length
        per_sample += 4 * prefix * (vocab + 6 * m.layers * m.hidden_size)
        needed = options.num_samples * per_sample
        free = available_memory(self.device)
        if free is not None and needed > free:
            asked = " x ".join(
                f"{option_name(field, caller)} {getattr(options, field)}"
                for field in ("num_samples", "length")
                if caller is None or field != "num_samples"
            )
            raise ArgumentError(
                f"{asked} needs about {human_bytes(needed)}, but {self.device.type} has "
                f"{human_bytes(free)} free; ask for fewer or shorter samples"
            )

    def generate(self, options: SampleOptions, emit: Callable[[int, str], None]) -> list[str]:
        """Every sample's text; `emit(sample_index, piece)` is called with each piece as made."""
        texts = ["" for _ in range(options.num_samples)]
        for index, piece in self.pieces(options):
            texts[index] += piece
            emit(index, piece)
        return texts

    @torch.inference_mode()
    def pieces(self, options: SampleOptions) -> Iterator[tuple[int, str]]:
        """(sample index, text piece) as the samples are generated, the prime's pieces first."""
        options.validate()
        self.check_memory(options)
        sentence_mode = options.sentences
        if sentence_mode is None:
            sentence_mode = self.config.data.batching == "sentence"
        if sentence_mode and (self.level != "word" or self.special.get("end") is None):
            raise UsageError("sentence sampling needs a word-level model (data.level=word)")
        seed = options.seed if options.seed is not None else secrets.randbits(31)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        n = options.num_samples
        prime = self._prime_ids(options.prime)
        decoders = [StreamDecoder(self.tokenizer, self.level) for _ in range(n)]
        if options.prime:
            for i in range(n):
                for token in prime:
                    piece = decoders[i].step(token)
                    if piece:
                        yield i, piece
        tokens = torch.tensor(prime, device=self.device).unsqueeze(1).expand(-1, n)  # (T, n)
        state: State = self.model.initial_state(n, self.device)
        # The prefix goes through the fused kernel (in PRIME_CHUNK pieces, so a long prime takes
        # bounded memory); every later step is one token.
        for start in range(0, tokens.shape[0] - 1, PRIME_CHUNK):
            _, state = self.model(tokens[start : min(start + PRIME_CHUNK, len(prime) - 1)], state)
        current = tokens[-1]
        banned = [self.special.get("unk")]
        if sentence_mode:
            banned.append(self.special.get("start"))
        banned_ids = [b for b in banned if b is not None]
        end_id = self.special.get("end")
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        for position in range(options.length + (1 if sentence_mode else 0)):
            logits, state = self.step(current, state)  # (n, vocab)
            if banned_ids:
                logits[:, banned_ids] = float("-inf")
            if sentence_mode and position < options.min_words and end_id is not None:
                logits[:, end_id] = float("-inf")
            if sentence_mode and position == options.length and end_id is not None:
                logits[:] = float("-inf")  # the longest sentence allowed: end it here
                logits[:, end_id] = 0.0
            current = choose(logits, options.temperature, options.top_k, options.top_p, generator)
            finished = done.tolist()
            for i, token in enumerate(current.tolist()):
                piece = "" if finished[i] else decoders[i].step(token)
                if piece:
                    yield i, piece
            if sentence_mode and end_id is not None:
                done |= current == end_id
                if bool(done.all()):
                    break
        for i, decoder in enumerate(decoders):
            tail = decoder.finish()
            if tail:
                yield i, tail
