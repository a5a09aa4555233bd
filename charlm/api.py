"""The Python API: `charlm.load(RUN)` -> LanguageModel (generate, stream, score, encode, decode) and
`charlm.train(...)`; the CLI's sample, evaluate and train commands are built on it.

Errors are charlm's own (`charlm.errors.CharlmError` and its subclasses), with one-line
messages that name the file, the setting or the argument and the way out. An argument the API
cannot take is also a built-in error: a wrong value raises `charlm.errors.ArgumentError` (a
`ValueError`), a wrong type `charlm.errors.ArgumentTypeError` (a `TypeError`), each naming the
Python argument. The examples below run as tests (tests/test_api.py) with `run` a trained run
directory and `held_out` a text file:

>>> import charlm
>>> lm = charlm.load(run)
>>> text = lm.generate("abc ", length=20, temperature=0.8, seed=1)
>>> text.startswith("abc ") and len(text) == 24
True
>>> text == "".join(lm.stream("abc ", length=20, temperature=0.8, seed=1))
True
>>> stop = text[10:12]  # the text ends at the first stop string after the prime, included
>>> cut = lm.generate("abc ", length=20, temperature=0.8, seed=1, stop=stop)
>>> cut == text[: text.index(stop, 4) + 2]
True
>>> scores = lm.score(open(held_out, encoding="utf-8").read())
>>> round(scores.bits_per_char, 6) == round(scores.loss / 0.6931471805599453, 6)
True
>>> lm.decode(lm.encode("abc xyz")) == "abc xyz"
True
>>> try:
...     lm.generate(length=-3)
... except ValueError as error:
...     print(error)
length must be at least 1 (got -3)
"""

from __future__ import annotations

import functools
import inspect
import operator
import os
from collections.abc import Iterable, Iterator, Mapping
from numbers import Integral, Real
from pathlib import Path
from typing import Any, TypeVar

import torch
from tokenizers import Tokenizer

from charlm.config import RunConfig, setting_choices
from charlm.data.choices import ERRORS
from charlm.data.reading import TextSource, spooled
from charlm.data.tokenizer import decode
from charlm.errors import (
    ArgumentError,
    ArgumentTypeError,
    CharlmError,
    InputTooLarge,
    UsageError,
    check_type,
    environment_error,
    human_bytes,
)
from charlm.inference.evaluate import EvalResult, score_text
from charlm.inference.sample import SampleOptions, Sampler
from charlm.model.cells import CELLS
from charlm.model.quantize import QUANTIZE
from charlm.rundir.names import WHICH, check_which
from charlm.system.device import available_memory, cpu_threads
from charlm.system.threads import choose_threads, step_macs
from charlm.training.run import train as run_train
from charlm.training.trainer import TrainResult
from charlm.training.warmstart import KEEP_CHOICES

__all__ = ["EvalResult", "LanguageModel", "TrainResult", "load", "train"]

F = TypeVar("F", bound=Any)

DEVICES = setting_choices("train.device")
SCORE_MEMORY_PER_BYTE = 32  # score_file holds the text, its ids and their batches: about this
# many bytes of memory per byte of the file (char level measures 14; word and BPE take more)


def _charlm_errors(func: F) -> F:
    """What the machine caused (disk full, read-only, permissions) comes out as the CharlmError
    the command line prints for it, like every other error of the API."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CharlmError:
            raise
        except OSError as exc:
            found = environment_error(exc)
            if found is None:
                raise
            raise found from exc

    return wrapper  # type: ignore[return-value]


def _check_path(value: object, name: str, caller: str, optional: bool = False) -> None:
    kinds: tuple[type, ...] = (str, os.PathLike) + ((type(None),) if optional else ())
    what = "a path (str or pathlib.Path)" + (" or None" if optional else "")
    check_type(value, kinds, what, name, caller)


def _check_choice(value: object, choices: tuple[str, ...], name: str, caller: str) -> None:
    """`value` must be one of the strings `choices`."""
    listed = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
    check_type(value, str, f"a str ({listed})", name, caller)
    if value not in choices:
        raise ArgumentError(f"{name} must be {listed} (got {value!r})")


def _check_batch_size(value: object, caller: str) -> None:
    check_type(value, (Integral, type(None)), "an int or None", "batch_size", caller)
    if value is not None and value < 1:  # type: ignore[operator]
        raise ArgumentError(f"batch_size must be at least 1 (got {value})")


def _check_device(device: object) -> None:
    """load()'s device: one of DEVICES, and a named accelerator must be there."""
    _check_choice(device, DEVICES, "device", "load")
    mps = getattr(torch.backends, "mps", None)
    if device == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(
            "device='cuda' but this PyTorch sees no CUDA device; use device='cpu' (or 'auto')"
        )
    if device == "mps" and (mps is None or not mps.is_available()):
        raise ArgumentError("device='mps' but MPS is not available; use device='cpu' (or 'auto')")


class LanguageModel:
    """A trained model opened for use: generation, scoring and its tokenizer.

    Made by `charlm.load`. `module` is the plain `torch.nn.Module` (in eval mode), `config` the
    run's settings (`charlm.config.RunConfig`), `tokenizer` its `tokenizers.Tokenizer`.

    >>> lm = charlm.load(run, device="cpu")
    >>> lm.level, lm.vocab_size == lm.module.decoder.out_features, lm.device.type
    ('char', True, 'cpu')
    >>> lm.config.model.hidden_size
    16
    """

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler
        self.path: Path = sampler.loaded.path  # the checkpoint folder
        self.step: int = sampler.loaded.step

    @property
    def module(self) -> torch.nn.Module:
        return self._sampler.model

    @property
    def config(self) -> RunConfig:
        return self._sampler.config

    @property
    def level(self) -> str:
        return self._sampler.level

    @property
    def tokenizer(self) -> Tokenizer:
        return self._sampler.tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def device(self) -> torch.device:
        return self._sampler.device

    @property
    def quantize(self) -> str | None:
        """None (fp32), or "int8" when loaded with `quantize="int8"`."""
        return self._sampler.quantize

    def __repr__(self) -> str:
        quantized = f", quantize={self.quantize!r}" if self.quantize else ""
        return (
            f"LanguageModel({str(self.path)!r}, level={self.level!r}, step={self.step}{quantized})"
        )

    def encode(self, text: str) -> list[int]:
        """Token ids as training prepared the text: word level splits sentences (each wrapped in
        SENTENCE_START ... SENTENCE_END, or lines followed by <eos>), lower-cases if the run
        did; what the vocabulary never saw becomes the unknown token."""
        check_type(text, str, "a str", "text", "encode")
        return [int(i) for i in self._sampler.encoder.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Readable text for ids, as `charlm sample` prints them."""
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise ArgumentTypeError(
                f"decode() takes ids as an iterable of ints, got {type(ids).__name__}"
            )
        values = []  # numpy and torch integers too (anything with __index__), never bools
        for index, token in enumerate(ids.tolist() if hasattr(ids, "tolist") else ids):
            try:
                value = operator.index(token) if not isinstance(token, bool) else None
            except TypeError:
                value = None
            if value is None:
                raise ArgumentTypeError(
                    f"decode() takes ids as ints, got {type(token).__name__} at index {index}"
                )
            if not 0 <= value < self.vocab_size:
                raise ArgumentError(
                    f"ids[{index}] is {value}, outside the vocabulary (0..{self.vocab_size - 1})"
                )
            values.append(value)
        return decode(self.tokenizer, self.level, values)

    def generate(self, *args: Any, **kwargs: Any) -> str:
        """Text that starts with `prime` and continues for `length` tokens: `stream`'s pieces
        joined, with its arguments (prime, length, temperature, top_k, top_p, seed, and
        sentences, min_words for word models). The same seed gives the text that
        `charlm sample --seed` prints."""
        return "".join(self._stream("generate", *args, **kwargs))

    def stream(
        self,
        prime: str = "",
        length: int = 500,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        *,
        sentences: bool | None = None,
        min_words: int = 0,
        stop: str | list[str] | None = None,
        repetition_penalty: float = 1.0,
    ) -> Iterator[str]:
        """The generated text in pieces, yielded as they are made (the tokens of at most 20 ms,
        or 64 tokens, at a time); the options are
        `charlm sample`'s (temperature 0 is greedy; top_k 0 and top_p 1 keep every token;
        seed None draws one, so each call differs). A prime is a prompt: at most 1,000,000
        characters (charlm.inference.sample.PRIME_MAX).

        `stop` (a str or a list of them, taken as written: no escapes) ends the text where the
        generated part first contains one, the stop string included and nothing after it,
        also when it spans several tokens; the prime is not searched. `repetition_penalty`
        (CTRL's, as Hugging Face applies it; 1 = off) divides the positive logits and
        multiplies the negative ones of every token already in the prime or generated."""
        return self._stream(
            "stream", prime, length, temperature, top_k, top_p, seed,
            sentences=sentences, min_words=min_words, stop=stop,
            repetition_penalty=repetition_penalty,
        )  # fmt: skip

    def _stream(self, caller: str, *args: Any, **kwargs: Any) -> Iterator[str]:
        bound = inspect.signature(LanguageModel.stream).bind(self, *args, **kwargs)
        bound.apply_defaults()
        given = dict(bound.arguments)
        given.pop("self")
        options = SampleOptions(**given)
        options.validate(caller)  # now, not at the first next()
        self._sampler.check_memory(options, caller)
        return (piece for _, piece in self.pieces(options))

    def pieces(self, options: SampleOptions) -> Iterator[tuple[int, str]]:
        """(sample index, piece) for every sample of `options` (several at once: num_samples)."""
        with self._threads(options.num_samples):
            yield from self._sampler.pieces(options)

    def _threads(self, batch: int) -> Any:
        """Training's thread rule (charlm/system/threads.py) for `batch` streams of this model: fixed by
        its size and the cores, never by the load, so a seeded sample or a score is the same
        on a busy machine; the run's own train.threads, if it set one, wins."""
        m = self.config.model
        macs = step_macs(
            CELLS[m.cell].gates, m.layers, m.hidden_size, m.embedding_dim, self.vocab_size, batch
        )
        count = choose_threads(self.config.train.threads, macs, torch.get_num_threads())
        return cpu_threads(self.device, count)

    def check_memory(self, options: SampleOptions) -> None:
        """Refuse `options` whose samples cannot fit in the device's free memory."""
        self._sampler.check_memory(options)

    def score(
        self,
        text: str,
        *,
        batch_size: int | None = None,
        source: str = "the text",
        mask: Path | str | None = None,
    ) -> EvalResult:
        """loss (nats/token), perplexity and bits_per_char of `text` (also tokens, chars):
        the numbers `charlm evaluate` gives for a file holding it. A `mask` file (a synthetic
        task's NAME.mask) scores only the targets it marks and adds the task metrics."""
        check_type(text, str, "a str", "text", "score")
        _check_batch_size(batch_size, "score")
        check_type(source, str, "a str", "source", "score")
        _check_path(mask, "mask", "score", optional=True)
        with self._threads(batch_size or self.config.train.batch_size):
            return self._score(text, batch_size, source, mask)

    def _score(
        self, text: str, batch_size: int | None, source: str, mask: Path | str | None
    ) -> EvalResult:
        sampler = self._sampler
        return score_text(
            sampler.scorer,  # the model, or with int8 its int8 steps
            sampler.tokenizer,
            sampler.config,
            text,
            level=sampler.level,
            batch_size=batch_size,
            source=source,
            mask=Path(mask) if mask is not None else None,
            meta=sampler.loaded.meta,
        )

    @_charlm_errors
    def score_file(
        self,
        path: Path | str,
        *,
        batch_size: int | None = None,
        errors: str = "strict",
        csv_column: str | None = None,
        mask: Path | str | None = None,
    ) -> EvalResult:
        """`score` of a .txt or .csv file (by default the column the run trained on), a pipe
        or "-" (standard input, copied to a temporary file once). The text is scored in memory:
        a file that would need more than the memory available is refused."""
        _check_path(path, "path", "score_file")
        _check_batch_size(batch_size, "score_file")
        _check_choice(errors, ERRORS, "errors", "score_file")
        check_type(csv_column, (str, type(None)), "a str or None", "csv_column", "score_file")
        _check_path(mask, "mask", "score_file", optional=True)
        column = csv_column or self.config.data.csv_column
        with spooled(Path(path)) as copy:
            source = TextSource(copy, errors, column)  # type: ignore[arg-type]
            _check_fits_in_memory(path, source.raw_bytes)
            raw = source.read()
        return self.score(raw, batch_size=batch_size, source=str(path), mask=mask)


def _check_fits_in_memory(path: Path | str, size: int) -> None:
    """Refuse a text to score whose size suggests more memory than is available."""
    needed = size * SCORE_MEMORY_PER_BYTE
    free = available_memory(torch.device("cpu"))
    if free is not None and needed > free:
        raise InputTooLarge(
            f"{path}: {human_bytes(size)} of text needs about {human_bytes(needed)} of memory "
            f"to score, but {human_bytes(free)} is available; score a part of it "
            "(split -l) or on a machine with more memory"
        )


# help(lm.generate) shows stream's arguments, which it takes.
LanguageModel.generate.__signature__ = inspect.signature(LanguageModel.stream).replace(  # type: ignore[attr-defined]
    return_annotation="str"
)


@_charlm_errors
def load(
    path: Path | str, *, device: str = "auto", which: str = "best", quantize: str | None = None
) -> LanguageModel:
    """Open a run directory (its best checkpoint, or `which="latest"`) or a checkpoint folder.

    `device` "auto" is the run's own train.device (CUDA, then MPS, then the CPU).
    `quantize="int8"` generates and scores with int8 weights (PyTorch's dynamic quantization
    of every matrix product, the recurrent layers' and the decoder's): CPU only, faster where
    the CPU has int8 instructions, a little worse in loss (docs/benchmarks.md); None is fp32.
    """
    _check_path(path, "path", "load")
    _check_device(device)
    _check_choice(which, WHICH, "which", "load")
    choices = " or ".join(repr(choice) for choice in (None, *QUANTIZE))
    check_type(quantize, (str, type(None)), choices, "quantize", "load")
    return LanguageModel(Sampler(Path(path), device, check_which(which), quantize, api=True))


@_charlm_errors
def open_model(
    path: Path | str, *, device: str = "auto", which: str = "best", quantize: str | None = None
) -> LanguageModel:
    """`load` for the command line: its messages name the flags (`--device`, `--checkpoint`,
    `--quantize`)."""
    return LanguageModel(Sampler(Path(path), device, check_which(which), quantize))


@_charlm_errors
def train(
    text: Path | str | None = None,
    *,
    out: Path | str = "runs/default",
    config: Path | str | None = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
    data: Path | str | None = None,
    val_file: Path | str | None = None,
    resume: bool = False,
    force: bool = False,
    init_from: Path | str | None = None,
    init_keep: Iterable[str] = (),
    csv_column: str | None = None,
    val_fraction: float | None = None,
    errors: str = "strict",
    progress: bool = True,
) -> TrainResult:
    """`charlm train` from Python, with the same settings; returns the TrainResult
    (run_dir, steps, best_val_loss, final) once the run ends. `config` is a YAML file or a
    shipped config's name; `overrides` are `--set` items ("train.max_steps=200") or a
    mapping ({"train.max_steps": 200}); `init_from` warm-starts (README, "Fine-tuning").

    >>> result = charlm.train(corpus, out=tmp / "api-run", config="quickstart",
    ...                       overrides={**tiny, "train.max_steps": 10}, progress=False)
    >>> result.steps, charlm.load(result.run_dir).step
    (10, 10)
    """
    for name, value in (("text", text), ("config", config), ("data", data),
                        ("val_file", val_file), ("init_from", init_from)):  # fmt: skip
        _check_path(value, name, "train", optional=True)
    _check_path(out, "out", "train")
    for name, flag in (("resume", resume), ("force", force), ("progress", progress)):
        check_type(flag, bool, "True or False", name, "train")
    overrides = _check_items(overrides, "overrides", "a mapping or an iterable of str")
    init_keep = _check_items(init_keep, "init_keep", "an iterable of str")
    unknown = [item for item in _items(init_keep) if item not in KEEP_CHOICES]
    if unknown:
        raise ArgumentError(
            f"init_keep items must be {' or '.join(map(repr, KEEP_CHOICES))} (got {unknown[0]!r})"
        )
    check_type(csv_column, (str, type(None)), "a str or None", "csv_column", "train")
    check_type(val_fraction, (Real, type(None)), "a number or None", "val_fraction", "train")
    _check_choice(errors, ERRORS, "errors", "train")
    if text is not None and data is not None:
        raise ArgumentError("pass either text or data, not both")
    if _items(init_keep) and init_from is None:
        raise ArgumentError("init_keep needs init_from (the run whose state it keeps)")
    return train_command(
        text, out=out, config=config, overrides=overrides, data=data, val_file=val_file,
        resume=resume, force=force, init_from=init_from, init_keep=_items(init_keep),
        csv_column=csv_column, val_fraction=val_fraction, errors=errors, progress=progress,
    )  # fmt: skip


@_charlm_errors
def train_command(
    text: Path | str | None = None,
    *,
    out: Path | str = "runs/default",
    config: Path | str | None = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
    data: Path | str | None = None,
    val_file: Path | str | None = None,
    resume: bool = False,
    force: bool = False,
    init_from: Path | str | None = None,
    init_keep: Iterable[str] = (),
    csv_column: str | None = None,
    val_fraction: float | None = None,
    errors: str = "strict",
    progress: bool = True,
) -> TrainResult:
    """`train` for the command line: its messages name the flags (TEXT, --data, --init-keep)."""
    if text is not None and data is not None:
        raise UsageError("pass either TEXT or --data, not both")
    if init_keep and init_from is None:
        raise UsageError("--init-keep needs --init-from (the run whose state it keeps)")
    items = _override_items(overrides)
    shortcuts = [f"data.csv_column={csv_column}"] if csv_column is not None else []
    if val_fraction is not None:
        shortcuts.append(f"data.val_fraction={val_fraction}")
    with spooled(_path(text)) as source, spooled(_path(val_file)) as val_source:
        return run_train(
            Path(out),
            text=source,
            data_dir=_path(data),
            val_file=val_source,
            config_file=_path(config),
            overrides=[*shortcuts, *items],
            resume=resume,
            force=force,
            show_progress=progress,
            errors=errors,
            init_from=_path(init_from),
            init_keep=tuple(init_keep),
        )


def _items(values: Iterable[str]) -> tuple[str, ...]:
    """A str as one item, else the iterable's items."""
    return (values,) if isinstance(values, str) else tuple(values)


def _check_items(values: Any, name: str, what: str) -> Any:
    """`overrides` / `init_keep` as given if a str or (overrides) a mapping, else its items as
    a list (read once, so an iterator is not used up), each checked to be a str."""
    if isinstance(values, str) or (name == "overrides" and isinstance(values, Mapping)):
        return values
    check_type(values, Iterable, what, name, "train")
    items = list(values)
    for item in items:
        if not isinstance(item, str):
            raise ArgumentTypeError(
                f"train() takes {name} as {what}, got {type(item).__name__} among its items"
            )
    return items


def _path(value: Path | str | None) -> Path | None:
    return None if value is None else Path(value)


def _override_items(overrides: Mapping[str, Any] | Iterable[str]) -> list[str]:
    """`--set` items from a list of "key=value" strings or a {key: value} mapping."""
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        return [f"{key}={_yaml_value(value)}" for key, value in overrides.items()]
    return list(overrides)


def _yaml_value(value: Any) -> str:
    """A Python value as `--set` reads it (YAML): True -> true, None -> null."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)
