"""Turn text (file, folder, CSV or the built-in corpus) into DATA_DIR: ids, tokenizer and meta."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from charlm.corpora import builtin_corpus_text
from charlm.errors import DataError, UsageError
from charlm.textsource import Scan, TextSource, find_split, split_chunks
from charlm.tokenizer import (
    SEGMENTS,
    WORD_SPLITS,
    Encoder,
    build_tokenizer,
    check_level,
    load_tokenizer,
    save_tokenizer,
    special_ids,
)

FORMAT_VERSION = 1
TRAIN_FILE, VAL_FILE = "train.bin", "val.bin"
META_FILE, TOKENIZER_FILE = "meta.json", "tokenizer.json"
CHUNK_CHARS = 4 << 20  # text is encoded and written in pieces of about this many characters
ERROR_MODES = ("strict", "replace")


@dataclass(frozen=True)
class PrepareSettings:
    """How `prepare` turns text into ids; every field takes part in the cache key."""

    level: str = "char"  # char | word | bpe
    vocab_size: int = 8000  # word/bpe only; counts the special tokens; word: 0 keeps every word
    val_fraction: float = 0.05  # the last fraction of the text is validation
    val_file: Path | None = None  # validation text from this file instead; val_fraction unused
    csv_column: str | None = None  # the text column of a .csv input (e.g. "body" for Reddit)
    errors: str = "strict"  # strict | replace: what to do with invalid UTF-8
    # Word level only. Defaults: the WildML tutorial; False/"lines"/"whitespace": pytorch/examples.
    lowercase: bool = True
    segments: str = "sentences"  # sentences: START ... END each | lines: every line + <eos>
    word_split: str = "rules"  # rules: words, punctuation, clitics | whitespace: str.split()

    def validate(self) -> None:
        """Raise a UsageError for the first setting that cannot work."""
        check_level(self.level)
        if self.level == "word" and self.vocab_size != 0 and self.vocab_size < 4:
            raise UsageError(
                f"vocab_size {self.vocab_size} is too small for word level; it counts the "
                "special tokens, so use at least 4 (or 0: keep every word)"
            )
        if self.segments not in SEGMENTS:
            raise UsageError(f"segments {self.segments!r} must be one of: {', '.join(SEGMENTS)}")
        if self.word_split not in WORD_SPLITS:
            raise UsageError(
                f"word_split {self.word_split!r} must be one of: {', '.join(WORD_SPLITS)}"
            )
        if self.level == "bpe" and self.vocab_size < 1:
            raise UsageError(f"vocab_size {self.vocab_size} must be positive")
        if self.val_file is None and not 0.0 < self.val_fraction < 1.0:
            raise UsageError(
                f"val_fraction {self.val_fraction} must be between 0 and 1 (e.g. 0.05), "
                "or pass --val-file"
            )
        if self.errors not in ERROR_MODES:
            raise UsageError(f"errors {self.errors!r} must be one of: {', '.join(ERROR_MODES)}")

    def as_dict(self) -> dict:
        """The settings as JSON-ready values (paths as str).

        meta.json files written before lowercase, segments and word_split existed lack them;
        they were made with the defaults.
        """
        return {
            key: str(value) if isinstance(value, Path) else value
            for key, value in dataclasses.asdict(self).items()
        }


@dataclass
class PreparedData:
    """A prepared DATA_DIR opened for training: ids are read-only memory maps."""

    data_dir: Path
    meta: dict
    tokenizer: Tokenizer
    train_ids: np.ndarray  # np.memmap, read-only
    val_ids: np.ndarray  # np.memmap, read-only


def choose_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits in it, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def read_text(path: Path, errors: str = "strict", csv_column: str | None = None) -> str:
    """The text of one .txt/.csv file (or a folder of .txt files), read as `prepare` reads it."""
    if errors not in ERROR_MODES:
        raise UsageError(f"errors {errors!r} must be one of: {', '.join(ERROR_MODES)}")
    return TextSource(Path(path), errors, csv_column).read()


def split_train_val(text: str, val_fraction: float) -> tuple[str, str]:
    """The text cut where `prepare` cuts it (`find_split`): (training, validation)."""
    cut = find_split([text], len(text), val_fraction)
    return text[:cut], text[cut:]


def _cache_key(input_sha256: str, val_sha256: str | None, settings: PrepareSettings) -> str:
    payload = {
        "format": FORMAT_VERSION,
        "input": input_sha256,
        "val_input": val_sha256,
        "settings": {
            **settings.as_dict(),
            # Settings that cannot change the result stay out, so changing them costs nothing.
            "vocab_size": None if settings.level == "char" else settings.vocab_size,
            "val_fraction": None if settings.val_file is not None else settings.val_fraction,
            "val_file": None,  # its contents count (val_sha256), not where it lives
        },
    }
    # Word-only settings join the key only when they differ from the defaults, so data prepared
    # before they existed keeps its key (and runs trained on it still resume).
    for name in _WORD_ONLY:
        if settings.level != "word" or getattr(settings, name) == _DEFAULTS[name]:
            del payload["settings"][name]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


_WORD_ONLY = ("lowercase", "segments", "word_split")
_DEFAULTS = PrepareSettings().as_dict()


def _holds_only_our_files(data_dir: Path) -> bool:
    """Whether every entry is a file that prepare writes (an interrupted run leaves such a folder)."""
    ours = {TRAIN_FILE, VAL_FILE, META_FILE, TOKENIZER_FILE}
    return all(
        entry.name in ours or (entry.name.startswith(".") and entry.name.endswith(".tmp"))
        for entry in data_dir.iterdir()
    )


def _read_meta(data_dir: Path) -> dict | None:
    try:
        return json.loads((data_dir / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(data_dir: Path, meta: dict) -> bool:
    """Whether the files that meta.json describes are there with the sizes it implies."""
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        sizes = {
            TRAIN_FILE: meta["train_tokens"] * itemsize,
            VAL_FILE: meta["val_tokens"] * itemsize,
        }
        return (data_dir / TOKENIZER_FILE).is_file() and all(
            (data_dir / name).stat().st_size == size for name, size in sizes.items()
        )
    except (KeyError, TypeError, OSError):
        return False


class _Reporter:
    """Progress on stderr: a rich bar in a terminal, a plain line per step otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.is_tty = enabled and sys.stderr.isatty()
        self._progress = None

    def line(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def bar(self, description: str, total: int, unit: str = "characters") -> Iterator:
        if not self.is_tty:
            self.line(f"{description} ({total:,} {unit})")
            yield lambda advance: None
            return
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda advance: progress.advance(task, advance)


def _fsync_replace(temp: Path, final: Path) -> None:
    with open(temp, "rb+") as file:
        os.fsync(file.fileno())
    os.replace(temp, final)


def _write_ids(
    chunks: Iterable[tuple[int, str]],
    paths: list[Path],
    encoder: Encoder,
    dtype: np.dtype,
    advance: Callable[[int], None],
) -> list[tuple[int, int]]:
    """Encode (part, chunk) pairs into paths[part]; (tokens, largest id) for each path."""
    counts = [[0, -1] for _ in paths]
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(path, "wb")) for path in paths]
        for part, chunk in chunks:
            ids = encoder.encode(chunk)
            if ids.size:
                counts[part][1] = max(counts[part][1], int(ids.max()))
                ids.astype(dtype).tofile(files[part])
            counts[part][0] += int(ids.size)
            advance(len(chunk))
    return [(tokens, largest) for tokens, largest in counts]


@dataclass
class PreparePlan:
    """What `prepare` decided before writing anything: the input read and checked, the split,
    the cache key, and whether `out_dir` already holds exactly this (`reuse`)."""

    out_dir: Path
    settings: PrepareSettings
    corpus: TextSource
    scan: Scan
    val_corpus: TextSource | None
    val_scan: Scan | None
    cut: int
    cache_key: str
    existing_meta: dict | None

    @property
    def reuse(self) -> bool:
        meta = self.existing_meta
        return (
            meta is not None
            and meta.get("cache_key") == self.cache_key
            and _is_complete(self.out_dir, meta)
        )


def plan_prepare(
    source: Path | None, out_dir: Path, settings: PrepareSettings, show_progress: bool = True
) -> PreparePlan:
    """Every check `prepare` makes, with nothing written: settings, the output folder, the input
    (read once: UTF-8, not binary, not empty, both parts non-empty) and its cache key."""
    settings.validate()
    report = _Reporter(show_progress)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a folder; choose another output folder")
    existing_meta = _read_meta(out_dir) if out_dir.is_dir() else None
    if out_dir.is_dir() and existing_meta is None and not _holds_only_our_files(out_dir):
        raise UsageError(
            f"{out_dir}: folder is not empty and holds no prepared data (no {META_FILE}); "
            "choose an empty or new output folder"
        )

    # The input is read as a stream, several times over, never whole: a scan (checks, hash,
    # length), a search for the split, the tokenizer's training, the encoding. Memory stays
    # bounded by a few chunks whatever the corpus size.
    if source is None:
        corpus = TextSource(text=builtin_corpus_text())
    else:
        corpus = TextSource(Path(source), settings.errors, settings.csv_column)
    with report.bar(f"reading {corpus.name}", corpus.raw_bytes, "bytes") as advance:
        scan = corpus.scan(advance)
    val_corpus, val_scan, cut = None, None, scan.chars
    if settings.val_file is not None:
        val_corpus = TextSource(Path(settings.val_file), settings.errors, settings.csv_column)
        val_scan = val_corpus.scan()
    else:
        cut = find_split(corpus.pieces(), scan.chars, settings.val_fraction)
        for part, has_text, fix in (
            ("validation", scan.last_text >= cut, "larger"),
            ("training", 0 <= scan.first_text < cut, "smaller"),
        ):
            if not has_text:
                raise DataError(
                    f"{corpus.name}: the {part} part is empty (val_fraction "
                    f"{settings.val_fraction} of {scan.chars:,} characters); pass a {fix} "
                    "--val-fraction, a --val-file, or a bigger corpus"
                )
    cache_key = _cache_key(scan.sha256, val_scan and val_scan.sha256, settings)
    return PreparePlan(
        out_dir, settings, corpus, scan, val_corpus, val_scan, cut, cache_key, existing_meta
    )


def prepare(
    source: Path | None,
    out_dir: Path,
    settings: PrepareSettings,
    show_progress: bool = True,
    plan: PreparePlan | None = None,
) -> dict:
    """Read, split, tokenize and write `out_dir`; returns its meta. `source` None = built-in.

    Reuses `out_dir` when its cache_key (input hash + settings + format) matches; replaces an
    older prepared dataset there, but refuses a non-empty folder without meta.json. Files are
    written under temporary names and renamed, meta.json last, so a half-written folder never
    looks complete. Messages and progress go to stderr when `show_progress`. `plan` (from
    `plan_prepare`, for the same arguments) saves reading the input again.
    """
    if plan is None:
        plan = plan_prepare(source, out_dir, settings, show_progress)
    report = _Reporter(show_progress)
    out_dir = plan.out_dir
    if plan.reuse:
        report.line(f"{out_dir}: already prepared from the same input and settings; reusing it")
        return plan.existing_meta  # type: ignore[return-value]
    settings, corpus, cut, total_chars = plan.settings, plan.corpus, plan.cut, plan.scan.chars
    val_corpus, val_scan, source_name = plan.val_corpus, plan.val_scan, corpus.name
    input_sha256, cache_key = plan.scan.sha256, plan.cache_key
    val_sha256 = val_scan.sha256 if val_scan is not None else None

    out_dir.mkdir(parents=True, exist_ok=True)
    # From here on the folder is being rewritten: without meta.json it never looks complete.
    (out_dir / META_FILE).unlink(missing_ok=True)

    with report.bar(f"building the {settings.level} tokenizer", cut) as advance:

        def train_chunks() -> Iterator[str]:
            for _, chunk in split_chunks(corpus.pieces(), [0, cut], CHUNK_CHARS):
                yield chunk
                advance(len(chunk))

        tokenizer = build_tokenizer(
            settings.level,
            train_chunks(),
            settings.vocab_size,
            lowercase=settings.lowercase,
            segments=settings.segments,
            word_split=settings.word_split,
        )
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = choose_dtype(vocab_size)
    encoder = Encoder(tokenizer, settings.level)

    temps = {name: out_dir / f".{name}.tmp" for name in (TRAIN_FILE, VAL_FILE, TOKENIZER_FILE)}
    temps[META_FILE] = out_dir / f".{META_FILE}.tmp"
    try:
        paths = [temps[TRAIN_FILE], temps[VAL_FILE]]
        if val_corpus is None:  # one pass over the corpus writes both parts
            jobs = [(corpus, [0, cut, total_chars], paths, total_chars)]
            val_chars = total_chars - cut
        else:
            val_chars = val_scan.chars
            jobs = [
                (corpus, [0, cut], paths[:1], cut),
                (val_corpus, [0, val_chars], paths[1:], val_chars),
            ]
        results = []
        for text_source, bounds, job_paths, chars in jobs:
            with report.bar("encoding", chars) as advance:
                chunks = split_chunks(text_source.pieces(), bounds, CHUNK_CHARS)
                results += _write_ids(chunks, job_paths, encoder, dtype, advance)
        counts = dict(zip((TRAIN_FILE, VAL_FILE), results, strict=True))
        if max(counts[TRAIN_FILE][1], counts[VAL_FILE][1]) >= vocab_size:
            raise DataError(f"{source_name}: the tokenizer produced an id outside its vocabulary")
        save_tokenizer(tokenizer, temps[TOKENIZER_FILE])
        meta = {
            "format": FORMAT_VERSION,
            "level": settings.level,
            "vocab_size": vocab_size,
            "dtype": dtype.name,
            "source": source_name,
            "sha256": input_sha256,
            "val_sha256": val_sha256,
            "settings": settings.as_dict(),
            "train_tokens": counts[TRAIN_FILE][0],
            "val_tokens": counts[VAL_FILE][0],
            "train_chars": cut,
            "val_chars": val_chars,
            "special_ids": special_ids(tokenizer),
            "cache_key": cache_key,
        }
        temps[META_FILE].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for name in (TRAIN_FILE, VAL_FILE, TOKENIZER_FILE, META_FILE):
            _fsync_replace(temps[name], out_dir / name)
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    report.line(
        f"wrote {out_dir}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, "
        f"vocabulary {vocab_size:,} ({settings.level})"
    )
    return meta


def _open_ids(path: Path, dtype: np.dtype, tokens: int) -> np.ndarray:
    if not path.is_file() or path.stat().st_size != tokens * dtype.itemsize:
        raise DataError(
            f"{path}: missing or of the wrong size for {tokens:,} {dtype.name} ids; "
            "run `charlm prepare` again"
        )
    if tokens == 0:  # np.memmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(tokens,))


def load_prepared(data_dir: Path) -> PreparedData:
    """Open a prepared DATA_DIR; a DataError says how to fix a missing or damaged one."""
    data_dir = Path(data_dir)
    meta = _read_meta(data_dir)
    if meta is None:
        raise DataError(
            f"{data_dir}: no prepared data ({META_FILE} missing or unreadable); "
            f"run `charlm prepare --out {data_dir}` first"
        )
    if meta.get("format") != FORMAT_VERSION:
        raise DataError(
            f"{data_dir}: prepared data format {meta.get('format')!r}, this charlm reads "
            f"{FORMAT_VERSION}; run `charlm prepare` again"
        )
    try:
        dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        train_ids = _open_ids(data_dir / TRAIN_FILE, dtype, int(meta["train_tokens"]))
        val_ids = _open_ids(data_dir / VAL_FILE, dtype, int(meta["val_tokens"]))
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"{data_dir / META_FILE}: damaged ({error}); run `charlm prepare` again"
        ) from None
    tokenizer = load_tokenizer(data_dir / TOKENIZER_FILE)
    return PreparedData(data_dir, meta, tokenizer, train_ids, val_ids)
