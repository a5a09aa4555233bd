"""The Python API: `charlm.load(RUN)` -> LanguageModel (generate, stream, score, encode, decode) and
`charlm.train(...)`; the CLI's sample, evaluate and train commands are built on it.

Errors are charlm's own (`charlm.errors.CharlmError` and its subclasses), with the one-line
messages the command line prints. The examples below run as tests (tests/test_api.py) with
`run` a trained run directory and `held_out` a text file:

>>> import charlm
>>> lm = charlm.load(run)
>>> text = lm.generate("abc ", length=20, temperature=0.8, seed=1)
>>> text.startswith("abc ") and len(text) == 24
True
>>> text == "".join(lm.stream("abc ", length=20, temperature=0.8, seed=1))
True
>>> scores = lm.score(open(held_out, encoding="utf-8").read())
>>> round(scores.bits_per_char, 6) == round(scores.loss / 0.6931471805599453, 6)
True
>>> lm.decode(lm.encode("abc xyz")) == "abc xyz"
True
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from tokenizers import Tokenizer

from charlm.config import RunConfig
from charlm.data.prepare import read_text
from charlm.data.tokenizer import decode
from charlm.errors import CharlmError, UsageError, environment_error
from charlm.inference.evaluate import EvalResult, score_text
from charlm.inference.sample import SampleOptions, Sampler
from charlm.model.cells import CELLS
from charlm.rundir.names import check_which
from charlm.system.device import cpu_threads
from charlm.system.threads import choose_threads, step_macs
from charlm.training.run import train as run_train
from charlm.training.trainer import TrainResult

__all__ = ["EvalResult", "LanguageModel", "TrainResult", "load", "train"]

F = TypeVar("F", bound=Any)


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

    def __repr__(self) -> str:
        return f"LanguageModel({str(self.path)!r}, level={self.level!r}, step={self.step})"

    def encode(self, text: str) -> list[int]:
        """Token ids as training prepared the text: word level splits sentences (each wrapped in
        SENTENCE_START ... SENTENCE_END, or lines followed by <eos>), lower-cases if the run
        did; what the vocabulary never saw becomes the unknown token."""
        return [int(i) for i in self._sampler.encoder.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Readable text for ids, as `charlm sample` prints them."""
        return decode(self.tokenizer, self.level, list(ids))

    def generate(self, *args: Any, **kwargs: Any) -> str:
        """Text that starts with `prime` and continues for `length` tokens: `stream`'s pieces
        joined, with its arguments (prime, length, temperature, top_k, top_p, seed, and
        sentences, min_words for word models). The same seed gives the text that
        `charlm sample --seed` prints."""
        return "".join(self.stream(*args, **kwargs))

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
    ) -> Iterator[str]:
        """The generated text in pieces, each yielded as soon as it is made; the options are
        `charlm sample`'s (temperature 0 is greedy; top_k 0 and top_p 1 keep every token;
        seed None draws one, so each call differs)."""
        options = SampleOptions(
            prime, length, temperature, top_k, top_p, seed, 1, sentences, min_words
        )
        options.validate()  # now, not at the first next()
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
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
        with self._threads(batch_size or self.config.train.batch_size):
            return self._score(text, batch_size, source, mask)

    def _score(
        self, text: str, batch_size: int | None, source: str, mask: Path | str | None
    ) -> EvalResult:
        sampler = self._sampler
        return score_text(
            sampler.model,
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
        """`score` of a .txt or .csv file (by default the column the run trained on)."""
        column = csv_column or self.config.data.csv_column
        raw = read_text(Path(path), errors=errors, csv_column=column)
        return self.score(raw, batch_size=batch_size, source=str(path), mask=mask)


# help(lm.generate) shows stream's arguments, which it takes.
LanguageModel.generate.__signature__ = inspect.signature(LanguageModel.stream).replace(  # type: ignore[attr-defined]
    return_annotation="str"
)


@_charlm_errors
def load(path: Path | str, *, device: str = "auto", which: str = "best") -> LanguageModel:
    """Open a run directory (its best checkpoint, or `which="latest"`) or a checkpoint folder.

    `device` "auto" is the run's own train.device (CUDA, then MPS, then the CPU).
    """
    return LanguageModel(Sampler(Path(path), device=device, which=check_which(which)))


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
    if text is not None and data is not None:
        raise UsageError("pass either TEXT or --data, not both")
    if init_keep and init_from is None:
        raise UsageError("--init-keep needs --init-from (the run whose state it keeps)")
    items = _override_items(overrides)
    shortcuts = [f"data.csv_column={csv_column}"] if csv_column is not None else []
    if val_fraction is not None:
        shortcuts.append(f"data.val_fraction={val_fraction}")
    return run_train(
        Path(out),
        text=_path(text),
        data_dir=_path(data),
        val_file=_path(val_file),
        config_file=_path(config),
        overrides=[*shortcuts, *items],
        resume=resume,
        force=force,
        show_progress=progress,
        errors=errors,
        init_from=_path(init_from),
        init_keep=tuple(init_keep),
    )


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
