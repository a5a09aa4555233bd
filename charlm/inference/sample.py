"""Generating text from a checkpoint: one step per token, state carried, temperature/top-k/top-p."""

from __future__ import annotations

import contextlib
import math
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import torch
from tokenizers import Tokenizer

from charlm.config import SEED_MAX
from charlm.data.tokenizer import Encoder, StreamDecoder, special_ids
from charlm.errors import (
    ArgumentError,
    ArgumentTypeError,
    DataError,
    InputTooLarge,
    UsageError,
    check_type,
    environment_error,
    human_bytes,
)
from charlm.model.network import LeanStepper, RNNLanguageModel, State, SteppedModel
from charlm.model.quantize import check_quantize, check_quantize_device
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
    ("repetition_penalty", Real, "a number"),
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
    stop: str | Sequence[str] | None = None  # end a sample where its text first contains one
    repetition_penalty: float = 1.0  # CTRL's: logits of tokens already seen / (or *) this

    def stops(self) -> tuple[str, ...]:
        """The stop strings as a tuple (`stop` may be one str, a list of them or None)."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def validate(self, caller: str | None = None) -> None:
        """Refuse options out of range, naming the command line's flags (`--length`); with
        `caller` (an API function's name) check the types first and name the arguments."""
        if caller is not None:
            for field, kinds, what in _TYPES:
                check_type(getattr(self, field), kinds, what, field, caller)
            _check_stop_type(self.stop, caller)

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
        penalty = self.repetition_penalty
        if not (math.isfinite(penalty) and penalty > 0):
            raise refuse("repetition_penalty", "must be a finite number above 0 (1 = off)")
        if "" in self.stops():
            raise ArgumentError(
                f"{option_name('stop', caller)} must not be empty; give the text to stop at"
            )
        if len(self.prime) > PRIME_MAX:
            raise ArgumentError(
                f"{option_name('prime', caller)} is {len(self.prime):,} characters, more than "
                f"a prime may be ({PRIME_MAX:,}); start from the end of the text instead"
            )


def _check_stop_type(stop: object, caller: str) -> None:
    what = "a str, a list of str or None"
    if stop is None or isinstance(stop, str):
        return
    check_type(stop, (list, tuple), what, "stop", caller)
    for item in stop:  # type: ignore[attr-defined]
        if not isinstance(item, str):
            raise ArgumentTypeError(
                f"{caller}() takes stop as {what}, got {type(item).__name__} among its items"
            )


_ESCAPE = re.compile(r"\\(?:([ntr\\])|x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|(.?))", re.DOTALL)
_ESCAPED = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(value: str, flag: str) -> str:
    r"""A command line's text with its backslash escapes read: \n \t \r \\ \xHH \uHHHH (a
    shell passes `"\n"` as two characters); any other backslash is refused, naming `flag`."""

    def one(match: re.Match[str]) -> str:
        simple, byte, code, other = match.groups()
        if other is not None:
            raise UsageError(
                f'{flag} "{value}": unknown escape \\{other} (the escapes are \\n \\t \\r '
                "\\\\ \\xHH \\uHHHH; write \\\\ for a backslash)"
            )
        return _ESCAPED[simple] if simple else chr(int(byte or code, 16))

    return _ESCAPE.sub(one, value)


class StopMatcher:
    """Where one sample's generated text first contains a stop string: `feed` each piece as it
    is made and print what it returns. The text ends with the stop string (included); nothing
    after it is returned, also when it ends inside a piece or spans several pieces."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.keep = max(len(stop) for stop in stops) - 1  # the text a match may start in
        self.tail = ""  # the last `keep` characters returned so far
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The part of `piece` to print: all of it, or up to the end of the first stop string
        (then `stopped` is set, and every later piece is '')."""
        if self.stopped:
            return ""
        window = self.tail + piece
        ends = [found + len(stop) for stop in self.stops if (found := window.find(stop)) >= 0]
        if ends:
            self.stopped = True
            return piece[: min(ends) - len(self.tail)]
        self.tail = window[-self.keep :] if self.keep else ""
        return piece


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
    if logits.dtype != torch.float32:
        logits = logits.float()
    if temperature != 1.0:  # x / 1.0 is x exactly: skipping it changes no draw
        logits = logits / temperature
    probs = torch.softmax(filter_logits(logits, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The repetition penalty of CTRL (Keskar et al. 2019) as Hugging Face's
    RepetitionPenaltyLogitsProcessor applies it: the logit of every token `seen` (batch, vocab;
    bool) is divided by `penalty` where positive, multiplied by it where negative, so a penalty
    above 1 makes those tokens less likely whatever the logit's sign."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


class LogitRules:
    """What the options do to each step's logits before the draw, in this order: the repetition
    penalty (over the prime's tokens and every token drawn), the tokens never drawn (the
    unknown token; in sentence mode SENTENCE_START), the sentence's shortest and longest length."""

    def __init__(
        self,
        options: SampleOptions,
        sentence_mode: bool,
        special: dict,
        prime: list[int],
        vocab: int,
        device: torch.device,
        never: Sequence[int] = (),
    ) -> None:  # fmt: skip  (never: the ids the stepper bans already, by a -inf decoder bias)
        banned = [special.get("unk")] + ([special.get("start")] if sentence_mode else [])
        banned_ids = [b for b in banned if b is not None and b not in never]
        self.ban = torch.tensor(banned_ids, device=device) if banned_ids else None
        self.sentence_mode, self.options = sentence_mode, options
        self.end_id = special.get("end") if sentence_mode else None
        self.penalty = options.repetition_penalty if options.repetition_penalty != 1.0 else None
        self.seen: torch.Tensor | None = None
        if self.penalty is not None:
            self.seen = torch.zeros(options.num_samples, vocab, dtype=torch.bool, device=device)
            if options.prime:
                self.seen[:, prime] = True
        self.active = self.seen is not None or self.ban is not None or self.end_id is not None

    def apply(self, logits: torch.Tensor, position: int) -> torch.Tensor:
        """The logits (batch, vocab) of step `position` as the draw sees them."""
        if self.seen is not None:
            logits = penalise(logits, self.seen, self.penalty)  # type: ignore[arg-type]
        if self.ban is not None:
            logits.index_fill_(1, self.ban, float("-inf"))
        end_id = self.end_id
        if end_id is not None and position < self.options.min_words:
            logits[:, end_id] = float("-inf")
        if end_id is not None and position == self.options.length:
            logits[:] = float("-inf")  # the longest sentence allowed: end it here
            logits[:, end_id] = 0.0
        return logits

    def drawn(self, current: torch.Tensor) -> None:
        """Note the tokens just drawn (batch,), which the penalty then covers."""
        if self.seen is not None:
            self.seen.scatter_(1, current.unsqueeze(1), True)


def start_ids(encoder: Encoder, level: str, special: dict[str, int | None]) -> list[int]:
    """Where generation starts without a prime: SENTENCE_START for a sentence (word) model,
    else the token of a line break."""
    if level == "word" and special.get("start") is not None:
        return [int(special["start"])]  # type: ignore[arg-type]
    ids = [int(i) for i in encoder.encode("\n")]
    return ids[-1:] if ids else [0]


class Sampler:
    """A loaded model ready to generate; `generate` calls `emit(sample_index, text)` as it goes.
    `quantize="int8"` steps it with int8 products (CPU only, model/quantize.py); `api` makes the
    refusals name the Python arguments rather than the flags."""

    def __init__(
        self,
        checkpoint: Path,
        device: str = "auto",
        which: str = "best",
        quantize: str | None = None,
        api: bool = False,
    ) -> None:
        check_quantize(quantize, api)  # before loading anything
        loaded, self.model = open_for_use(checkpoint, which, device)
        self.loaded = loaded
        self.config = loaded.config
        self.level: str = loaded.meta["level"]
        self.device = self.model.embedding.weight.device
        check_quantize_device(quantize, self.device, api)
        self.quantize = quantize
        self.tokenizer = Tokenizer.from_str(loaded.tokenizer_json)
        self.special = special_ids(self.tokenizer)
        self.encoder = Encoder(self.tokenizer, self.level)
        # Weights laid out once for one-token steps; the unknown token is never drawn.
        self.never = [self.special["unk"]] if self.special.get("unk") is not None else []
        self.step = LeanStepper(self.model, quantize, banned=self.never)
        self._scorer: RNNLanguageModel | SteppedModel | None = None

    @property
    def scorer(self) -> RNNLanguageModel | SteppedModel:
        """What scores a text: the model's fused kernels in fp32; with int8, the int8 steps
        (without the sampler's ban, which would make an unknown target infinitely unlikely)."""
        if self._scorer is None:
            self._scorer = self.model
            if self.quantize is not None:
                self._scorer = SteppedModel(self.model, LeanStepper(self.model, self.quantize))
        return self._scorer

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

    def _sentence_mode(self, options: SampleOptions) -> bool:
        sentence_mode = options.sentences
        if sentence_mode is None:
            sentence_mode = self.config.data.batching == "sentence"
        if sentence_mode and (self.level != "word" or self.special.get("end") is None):
            raise UsageError("sentence sampling needs a word-level model (data.level=word)")
        return sentence_mode

    def _read_prime(self, prime: list[int], n: int) -> tuple[torch.Tensor, list[State]]:
        """The last token of the prime (n,) and the per-layer states after the rest of it: the
        prefix goes through the fused kernel, in PRIME_CHUNK pieces so that a long prime takes
        bounded memory."""
        tokens = torch.tensor(prime, device=self.device).unsqueeze(1).expand(-1, n)  # (T, n)
        state: State = self.model.initial_state(n, self.device)
        for start in range(0, tokens.shape[0] - 1, PRIME_CHUNK):
            _, state = self.model(tokens[start : min(start + PRIME_CHUNK, len(prime) - 1)], state)
        return tokens[-1], self.step.layer_states(state)

    def pieces(self, options: SampleOptions) -> Iterator[tuple[int, str]]:
        """(sample index, text piece) as the samples are generated, the prime's pieces first.

        Tokens are made in blocks of up to BLOCK_TOKENS (or BLOCK_SECONDS) inside one
        inference-mode span, then their pieces are yielded: entering that mode at every token
        cost about a tenth of a small model's step. The text and the draws do not depend on it."""
        options.validate()
        self.check_memory(options)
        sentence_mode = self._sentence_mode(options)
        with torch.inference_mode():
            run = Generation(self, options, sentence_mode)
        yield from run.prime_pieces()
        while not run.done:
            with torch.inference_mode():
                block = run.block()
            yield from block


BLOCK_TOKENS = 64  # a generated block's most tokens: what a reader of the stream waits for
BLOCK_SECONDS = 0.02  # ... or its most time (a large model's block is then a token or two)


class Generation:
    """One call's samples as they are made: the state, the draws, the decoders, the stops."""

    def __init__(self, sampler: Sampler, options: SampleOptions, sentence_mode: bool) -> None:
        seed = options.seed if options.seed is not None else secrets.randbits(31)
        self.generator = torch.Generator(device=sampler.device).manual_seed(seed)
        self.options, self.n = options, options.num_samples
        self.prime = sampler._prime_ids(options.prime)
        self.decoders = [StreamDecoder(sampler.tokenizer, sampler.level) for _ in range(self.n)]
        self.sampler = sampler
        self.current: torch.Tensor | None = None  # and the states: once the prime's pieces
        self.states: list[State] | None = None  # are out, so a long prime prints at once
        vocab = sampler.tokenizer.get_vocab_size()
        special, device = sampler.special, sampler.device
        self.rules = LogitRules(
            options, sentence_mode, special, self.prime, vocab, device, sampler.never
        )
        stops = options.stops()
        self.stops = [StopMatcher(stops) for _ in range(self.n)] if stops else None
        self.end_id = special.get("end") if sentence_mode else None
        self.finished = [False] * self.n  # its sentence ended, or it reached a stop string
        self.advance = sampler.step.advance
        self.position, self.steps = 0, options.length + (1 if sentence_mode else 0)
        self.done = False

    def prime_pieces(self) -> list[tuple[int, str]]:
        """The prime's text, as each sample's decoder prints it (and so carries on from)."""
        if not self.options.prime:
            return []
        pieces = []
        for i, decoder in enumerate(self.decoders):
            pieces += [(i, piece) for token in self.prime if (piece := decoder.step(token))]
        return pieces

    def block(self) -> list[tuple[int, str]]:
        """The pieces of the next tokens: up to BLOCK_TOKENS, or BLOCK_SECONDS; at the end the
        decoders' tails. Runs inside inference mode (the caller's)."""
        pieces: list[tuple[int, str]] = []
        started, ending = time.perf_counter(), self.end_id is not None or self.stops is not None
        draw = (self.options.temperature, self.options.top_k, self.options.top_p)
        if self.states is None:
            self.current, self.states = self.sampler._read_prime(self.prime, self.n)
        for _ in range(BLOCK_TOKENS):
            if self.position == self.steps or (ending and all(self.finished)):
                self.done = True
                return pieces + self._tails()
            logits = self.advance(self.current, self.states)  # (n, vocab)
            if self.rules.active:
                logits = self.rules.apply(logits, self.position)
            self.current = choose(logits, *draw, self.generator)
            self.rules.drawn(self.current)
            self.position += 1
            self._decode(self.current.tolist(), pieces)
            if time.perf_counter() - started >= BLOCK_SECONDS:
                break
        return pieces

    def _decode(self, tokens: list[int], pieces: list[tuple[int, str]]) -> None:
        """Each unfinished sample's piece for its token, cut at a stop string."""
        finished, stops = self.finished, self.stops
        for i, token in enumerate(tokens):
            if finished[i]:
                continue
            piece = self.decoders[i].step(token)
            if stops is not None and piece:
                piece = stops[i].feed(piece)
                finished[i] = stops[i].stopped
            finished[i] = finished[i] or token == self.end_id
            if piece:
                pieces.append((i, piece))

    def _tails(self) -> list[tuple[int, str]]:
        """What the decoders still hold (bpe: the bytes of an unfinished character)."""
        pieces = []
        for i, decoder in enumerate(self.decoders):
            if self.stops is not None and self.stops[i].stopped:
                continue  # what the decoder still holds comes after the stop string
            tail = decoder.finish()
            if self.stops is not None and tail:
                tail = self.stops[i].feed(tail)
            if tail:
                pieces.append((i, tail))
        return pieces
