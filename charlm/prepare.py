"""Turn text (file, folder, CSV or the built-in corpus) into DATA_DIR: ids, tokenizer and meta."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from charlm.corpora import builtin_corpus_text
from charlm.errors import DataError, UsageError
from charlm.tokenizer import (
    SEGMENTS,
    WORD_SPLITS,
    Encoder,
    build_tokenizer,
    check_level,
    iter_chunks,
    load_tokenizer,
    save_tokenizer,
    special_ids,
)

FORMAT_VERSION = 1
TRAIN_FILE, VAL_FILE = "train.bin", "val.bin"
META_FILE, TOKENIZER_FILE = "meta.json", "tokenizer.json"
CHUNK_CHARS = 4 << 20  # text is encoded and written in pieces of about this many characters
ERROR_MODES = ("strict", "replace")
_UTF8_BOM = b"\xef\xbb\xbf"


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


def _decode_utf8(raw: bytes, name: str, errors: str) -> str:
    """Bytes to text; names the file and byte offset of the first invalid UTF-8 or NUL byte."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(
            f"{name}: looks binary (NUL byte at byte offset {nul}); give a UTF-8 text file "
            "(UTF-16 files must be converted to UTF-8 first)"
        )
    skip = len(_UTF8_BOM) if raw.startswith(_UTF8_BOM) else 0
    try:
        text = str(memoryview(raw)[skip:], "utf-8", errors)  # a view: no copy of a large file
    except UnicodeDecodeError as error:
        raise DataError(
            f"{name}: invalid UTF-8 at byte offset {error.start + skip}; "
            "fix the file or pass --errors replace"
        ) from None
    # Read as Python's text mode would: Windows and old Mac line ends become "\n".
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _csv_documents(text: str, name: str, column: str | None) -> str:
    """Join the `column` field of every row, one document per row, with newlines."""
    if column is None:
        raise UsageError(f"{name}: a CSV input needs --csv-column NAME (the column with the text)")
    # Comments can be far longer than the csv module's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{name}: the CSV file has no header row; add one naming the columns")
        if column not in header:
            raise UsageError(
                f"{name}: no column {column!r}; the columns are: {', '.join(header)}; "
                "pass one of them as --csv-column"
            )
        index = header.index(column)
        documents = [row[index] for row in reader if len(row) > index and row[index].strip()]
    except csv.Error as error:
        raise DataError(f"{name}: unreadable CSV at line {reader.line_num} ({error})") from None
    return "\n".join(documents)


def _check_not_empty(text: str, name: str) -> None:
    if not text.strip():
        raise DataError(f"{name}: empty (no text, or only whitespace); give a corpus with text")


def _read_file(
    path: Path, errors: str, csv_column: str | None, hash_raw: Callable[[bytes], None]
) -> str:
    """Text of one .txt (any extension) or .csv file; its raw bytes go to `hash_raw` and are
    dropped before the text is returned, so a large file is not held twice."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror}); check the path") from None
    hash_raw(raw)
    text = _decode_utf8(raw, str(path), errors)
    del raw
    if path.suffix.lower() == ".csv":
        text = _csv_documents(text, str(path), csv_column)
    _check_not_empty(text, str(path))
    return text


def _read_source(path: Path, errors: str, csv_column: str | None) -> tuple[str, str]:
    """Text and sha256 of a file, or of a folder's .txt files (sorted by name, joined by "\\n")."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; check the path")
    digest = hashlib.sha256()
    if not path.is_dir():
        return _read_file(path, errors, csv_column, digest.update), digest.hexdigest()
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".txt")
    if not files:
        raise DataError(f"{path}: the folder has no .txt files; put the corpus in *.txt files")
    texts = []
    for file in files:

        def hash_named(raw: bytes, name: str = file.name) -> None:
            # Name and length first so that moving text between files changes the hash.
            digest.update(f"{name}\0{len(raw)}\0".encode())
            digest.update(raw)

        texts.append(_read_file(file, errors, None, hash_named))
    return "\n".join(texts), digest.hexdigest()


def read_text(path: Path, errors: str = "strict", csv_column: str | None = None) -> str:
    """The text of one .txt/.csv file (or a folder of .txt files), read as `prepare` reads it."""
    if errors not in ERROR_MODES:
        raise UsageError(f"errors {errors!r} must be one of: {', '.join(ERROR_MODES)}")
    return _read_source(Path(path), errors, csv_column)[0]


def split_point(text: str, val_fraction: float) -> int:
    """Where the last `val_fraction` of the text begins, moved to the nearest line break.

    Deterministic; a line is never split unless the text has no line break at all.
    """
    target = int(len(text) * (1.0 - val_fraction))
    after = text.find("\n", target)
    before = text.rfind("\n", 0, target)
    candidates = [i + 1 for i in (after, before) if 0 <= i < len(text) - 1]
    return min(candidates, key=lambda i: abs(i - target)) if candidates else target


def split_train_val(text: str, val_fraction: float) -> tuple[str, str]:
    """The text cut at `split_point`: (training, validation)."""
    cut = split_point(text, val_fraction)
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
    def bar(self, description: str, total: int) -> Iterator:
        if not self.is_tty:
            self.line(f"{description} ({total:,} characters)")
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


_NON_SPACE = re.compile(r"\S")


@dataclass(frozen=True)
class _Part:
    """text[start:end] without the copy: the training or validation part of a corpus."""

    text: str
    start: int
    end: int

    @property
    def chars(self) -> int:
        return self.end - self.start  # what count_chars counts: code points

    def chunks(self) -> Iterator[str]:
        return iter_chunks(self.text, CHUNK_CHARS, self.start, self.end)

    def has_text(self) -> bool:
        return _NON_SPACE.search(self.text, self.start, self.end) is not None


def _write_ids(
    path: Path, part: _Part, encoder: Encoder, dtype: np.dtype, advance: Callable[[int], None]
) -> tuple[int, int]:
    """Encode `part` chunk by chunk and append to `path`; returns (tokens, largest id)."""
    tokens, largest = 0, -1
    with open(path, "wb") as file:
        for chunk in part.chunks():
            ids = encoder.encode(chunk)
            if ids.size:
                largest = max(largest, int(ids.max()))
                ids.astype(dtype).tofile(file)
            tokens += int(ids.size)
            advance(len(chunk))
    return tokens, largest


def prepare(
    source: Path | None, out_dir: Path, settings: PrepareSettings, show_progress: bool = True
) -> dict:
    """Read, split, tokenize and write `out_dir`; returns its meta. `source` None = built-in.

    Reuses `out_dir` when its cache_key (input hash + settings + format) matches; replaces an
    older prepared dataset there, but refuses a non-empty folder without meta.json. Files are
    written under temporary names and renamed, meta.json last, so a half-written folder never
    looks complete. Messages and progress go to stderr when `show_progress`.
    """
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

    if source is None:
        text = builtin_corpus_text()
        input_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        source_name = "builtin"
    else:
        source = Path(source)
        report.line(f"reading {source}")
        text, input_sha256 = _read_source(source, settings.errors, settings.csv_column)
        source_name = str(source)
    val_sha256 = None
    if settings.val_file is not None:
        val_text, val_sha256 = _read_source(
            Path(settings.val_file), settings.errors, settings.csv_column
        )
        train, val = _Part(text, 0, len(text)), _Part(val_text, 0, len(val_text))
    else:  # two ranges of one string: a large corpus is not copied into its parts
        cut = split_point(text, settings.val_fraction)
        train, val = _Part(text, 0, cut), _Part(text, cut, len(text))
    total_chars = len(text)
    for part, piece, fix in (("validation", val, "larger"), ("training", train, "smaller")):
        if not piece.has_text():
            raise DataError(
                f"{source_name}: the {part} part is empty (val_fraction {settings.val_fraction} "
                f"of {total_chars:,} characters); pass a {fix} --val-fraction, a --val-file, "
                "or a bigger corpus"
            )

    cache_key = _cache_key(input_sha256, val_sha256, settings)
    if existing_meta is not None and existing_meta.get("cache_key") == cache_key:
        if _is_complete(out_dir, existing_meta):
            report.line(f"{out_dir}: already prepared from the same input and settings; reusing it")
            return existing_meta

    out_dir.mkdir(parents=True, exist_ok=True)
    # From here on the folder is being rewritten: without meta.json it never looks complete.
    (out_dir / META_FILE).unlink(missing_ok=True)

    report.line(f"building the {settings.level} tokenizer from {train.chars:,} characters")
    tokenizer = build_tokenizer(
        settings.level,
        train.chunks(),
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
        counts = {}
        for name, part in ((TRAIN_FILE, train), (VAL_FILE, val)):
            with report.bar(f"encoding {name[:-4]}", part.chars) as advance:
                counts[name] = _write_ids(temps[name], part, encoder, dtype, advance)
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
            "train_chars": train.chars,
            "val_chars": val.chars,
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
