"""Turn text (file, folder, CSV or the built-in corpus) into DATA_DIR: ids, tokenizer and meta."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from charlm.config import DataConfig
from charlm.data.choices import ERRORS
from charlm.data.corpora import builtin_corpus_text
from charlm.data.reading import TextSource, find_split, split_chunks
from charlm.data.tokenizer import (
    HF_SPECIAL_TOKENS,
    HF_TOKENIZER_CONFIG,
    LEGACY_SENTENCE_SPLIT,
    SEGMENTS,
    SENTENCE_SPLITS,
    WORD_SPLITS,
    Encoder,
    build_tokenizer,
    check_level,
    load_tokenizer,
    save_tokenizer,
    special_ids,
    transformers_files,
)
from charlm.errors import DataError, UsageError
from charlm.system.console import print_line, progress_bar
from charlm.system.files import (
    fsync_file,
    refusing,
    remove_stale_temporaries,
    replace_durably,
    temporary_sibling,
)
from charlm.tasks.masks import mask_info, mask_path, read_mask

FORMAT_VERSION = 1
TRAIN_FILE, VAL_FILE = "train.bin", "val.bin"
META_FILE, TOKENIZER_FILE = "meta.json", "tokenizer.json"
TRAIN_MASK, VAL_MASK = "train.mask", "val.mask"  # char level, when the input has a mask file
# Beside tokenizer.json, for transformers' AutoTokenizer (data prepared before has none).
HF_FILES = (HF_TOKENIZER_CONFIG, HF_SPECIAL_TOKENS)
TRUTH_FILE = "truth.json"  # beside a synthetic task's text: names the mask's groups
CHUNK_CHARS = 4 << 20  # text is encoded and written in pieces of about this many characters


_DATA = DataConfig()  # the defaults of every data setting live in DataConfig only


@dataclass(frozen=True)
class PrepareSettings:
    """How `prepare` turns text into ids; every field takes part in the cache key.

    Built from a run's DataConfig (`from_config`), whose defaults these are."""

    level: str = _DATA.level  # char | word | bpe
    vocab_size: int = _DATA.vocab_size  # word/bpe; counts the special tokens; word: 0 keeps all
    val_fraction: float = _DATA.val_fraction  # the last fraction of the text is validation
    val_file: Path | None = None  # validation text from this file instead; val_fraction unused
    csv_column: str | None = _DATA.csv_column  # the text column of a .csv input (e.g. "body")
    errors: str = "strict"  # strict | replace: what to do with invalid UTF-8
    # Word level only. Defaults: the WildML tutorial; False/"lines"/"whitespace": pytorch/examples.
    lowercase: bool = _DATA.lowercase
    segments: str = _DATA.segments  # sentences: START ... END each | lines: every line + <eos>
    word_split: str = _DATA.word_split  # rules: words, punctuation, clitics | whitespace: split()
    # segments=sentences: pysbd | rules (meta.json files written before it existed: rules)
    sentence_split: str = _DATA.sentence_split

    @classmethod
    def from_config(
        cls, data: DataConfig, val_file: Path | None = None, errors: str = "strict"
    ) -> PrepareSettings:
        return cls(
            level=data.level,
            vocab_size=data.vocab_size,
            val_fraction=data.val_fraction,
            val_file=val_file,
            csv_column=data.csv_column,
            errors=errors,
            lowercase=data.lowercase,
            segments=data.segments,
            word_split=data.word_split,
            sentence_split=data.sentence_split,
        )

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
        if self.sentence_split not in SENTENCE_SPLITS:
            raise UsageError(
                f"sentence_split {self.sentence_split!r} must be one of: "
                + ", ".join(SENTENCE_SPLITS)
            )
        if self.level == "bpe" and self.vocab_size < 1:
            raise UsageError(f"vocab_size {self.vocab_size} must be positive")
        if self.val_file is None and not 0.0 < self.val_fraction < 1.0:
            raise UsageError(
                f"val_fraction {self.val_fraction} must be between 0 and 1 (e.g. 0.05), "
                "or pass --val-file"
            )
        if self.errors not in ERRORS:
            raise UsageError(f"errors {self.errors!r} must be one of: {', '.join(ERRORS)}")

    def as_dict(self) -> dict:
        """The settings as JSON-ready values (paths as str).

        meta.json files written before lowercase, segments and word_split existed lack them;
        they were made with the defaults. Those written before sentence_split lack it: they
        were made with "rules" (LEGACY_SENTENCE_SPLIT), as their tokenizer.json says.
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
    # charlm/tasks/masks.py's mask bytes, one per id (char level), when the input had a mask file
    train_mask: np.ndarray | None = None
    val_mask: np.ndarray | None = None


def choose_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits in it, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def read_text(path: Path, errors: str = "strict", csv_column: str | None = None) -> str:
    """The text of one .txt/.csv file (or a folder of .txt files), read as `prepare` reads it."""
    if errors not in ERRORS:
        raise UsageError(f"errors {errors!r} must be one of: {', '.join(ERRORS)}")
    return TextSource(Path(path), errors, csv_column).read()


def split_train_val(text: str, val_fraction: float) -> tuple[str, str]:
    """The text cut where `prepare` cuts it (`find_split`): (training, validation)."""
    cut = find_split([text], len(text), val_fraction)
    return text[:cut], text[cut:]


def _cache_key(
    input_sha256: str,
    val_sha256: str | None,
    settings: PrepareSettings,
    vocabulary_sha256: str | None = None,
    mask: str | None = None,
) -> str:
    payload: dict = {
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
    # The sentence splitter changes the ids only where sentences are split. It joins the key
    # unless it is the rule that data made before it existed used, so such data is never
    # reused for pysbd's split, and asking for the rule still finds it.
    if (
        settings.level != "word"
        or settings.segments != "sentences"
        or settings.sentence_split == LEGACY_SENTENCE_SPLIT
    ):
        del payload["settings"]["sentence_split"]
    if vocabulary_sha256 is not None:  # encoded with a given vocabulary (train --init-from)
        payload["vocabulary"] = vocabulary_sha256
    if mask is not None:  # only then: data without a mask keeps the key it always had
        payload["mask"] = mask
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _legacy_keys(input_sha256: str, val_sha256: str | None, settings: PrepareSettings) -> list[str]:
    """Keys that earlier versions gave the same data. `charlm train` used to prepare with
    csv_column "body" whatever the input; a folder it made from a non-CSV input (where the
    column changes nothing) stays valid, so runs trained on it still resume."""
    if settings.csv_column is not None:
        return []
    return [_cache_key(input_sha256, val_sha256, dataclasses.replace(settings, csv_column="body"))]


_WORD_ONLY = ("lowercase", "segments", "word_split")
_DEFAULTS = PrepareSettings().as_dict()


def _holds_only_our_files(data_dir: Path) -> bool:
    """Whether every entry is a file that prepare writes (an interrupted run leaves such a folder)."""
    ours = {TRAIN_FILE, VAL_FILE, META_FILE, TOKENIZER_FILE, TRAIN_MASK, VAL_MASK, *HF_FILES}
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
        if meta.get("task"):
            sizes.update({TRAIN_MASK: meta["train_tokens"], VAL_MASK: meta["val_tokens"]})
        return (data_dir / TOKENIZER_FILE).is_file() and all(
            (data_dir / name).stat().st_size == size for name, size in sizes.items()
        )
    except (KeyError, TypeError, OSError):
        return False


class _Reporter:
    """Prepare's messages and progress bars on stderr (`metrics.progress_bar`), or silence."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def line(self, message: str) -> None:
        if self.enabled:  # a terminal wraps it at a space, not inside a word
            print_line(message)

    def bar(
        self, description: str, total: int, unit: str = "characters"
    ) -> contextlib.AbstractContextManager[Callable[[int], None]]:
        return progress_bar(description, total, enabled=self.enabled, unit=unit)


def _write_ids(
    chunks: Iterable[tuple[int, str]],
    paths: list[Path],
    encoder: Encoder,
    dtype: np.dtype,
    advance: Callable[[int], None],
    unknown_id: int | None = None,
) -> list[tuple[int, int, int]]:
    """Encode (part, chunk) pairs into paths[part]; (tokens, largest id, unknown ids) for each."""
    counts = [[0, -1, 0] for _ in paths]
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(path, "wb")) for path in paths]
        for part, chunk in chunks:
            ids = encoder.encode(chunk)
            if ids.size:
                counts[part][1] = max(counts[part][1], int(ids.max()))
                # write, not tofile: a full disk is then an OSError with its errno
                files[part].write(ids.astype(dtype).tobytes())
                if unknown_id is not None:
                    counts[part][2] += int(np.count_nonzero(ids == unknown_id))
            counts[part][0] += int(ids.size)
            advance(len(chunk))
    return [(tokens, largest, unknown) for tokens, largest, unknown in counts]


@dataclass
class _Inputs:
    """The scanned input (and validation text): what preparing it needs to know up front."""

    corpus: TextSource
    val_corpus: TextSource | None
    source_name: str
    input_sha256: str
    val_sha256: str | None
    total_chars: int
    cut: int  # characters of the training part
    val_chars: int
    masks: _Masks | None = None  # the input's mask file(s), split as the text is


@dataclass
class _Masks:
    """The mask bytes of both parts (charlm/tasks/masks.py), their hash and meta.json's "task"."""

    train: np.ndarray
    val: np.ndarray
    sha256: str
    info: dict


@dataclass
class PreparePlan:
    """What `prepare` decided before writing anything: the input read and checked, the split,
    the cache key, and whether `out_dir` already holds exactly this (`reuse`)."""

    out_dir: Path
    settings: PrepareSettings
    inputs: _Inputs
    cache_key: str
    existing_meta: dict | None
    vocabulary: str | None = None  # a tokenizer.json to encode with instead of training one

    @property
    def reuse(self) -> bool:
        meta, inputs = self.existing_meta, self.inputs
        legacy = _legacy_keys(inputs.input_sha256, inputs.val_sha256, self.settings)
        keys = (self.cache_key, *(legacy if self.vocabulary is None else ()))
        return (
            meta is not None and meta.get("cache_key") in keys and _is_complete(self.out_dir, meta)
        )


def plan_prepare(
    source: Path | None,
    out_dir: Path,
    settings: PrepareSettings,
    show_progress: bool = True,
    vocabulary: str | None = None,
) -> PreparePlan:
    """Every check `prepare` makes, with nothing written: settings, the output folder, the input
    (read once: UTF-8, not binary, not empty, both parts non-empty) and its cache key.

    `vocabulary` (a tokenizer.json's text, of `settings.level`) encodes the input with that
    vocabulary instead of building one from it (train --init-from)."""
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
    inputs = _scan_inputs(source, settings, report)
    vocabulary_sha256 = _sha256(vocabulary) if vocabulary is not None else None
    mask_sha = inputs.masks.sha256 if inputs.masks else None
    cache_key = _cache_key(
        inputs.input_sha256, inputs.val_sha256, settings, vocabulary_sha256, mask_sha
    )
    return PreparePlan(out_dir, settings, inputs, cache_key, existing_meta, vocabulary)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    out_dir, settings, inputs = plan.out_dir, plan.settings, plan.inputs
    if plan.reuse:
        report.line(f"{out_dir}: already prepared from the same input and settings; reusing it")
        return plan.existing_meta  # type: ignore[return-value]
    if plan.vocabulary is not None:
        tokenizer = Tokenizer.from_str(plan.vocabulary)
    else:
        tokenizer = _train_tokenizer(inputs, settings, report)
    with refusing(out_dir, "choose another output folder"):
        meta = _write_folder(out_dir, inputs, tokenizer, plan, report)
    report.line(  # 80 columns hold it for runs/NAME/data (README, "Watching a run")
        f"wrote {out_dir}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens, "
        f"{settings.level} vocab {meta['vocab_size']:,}"
    )
    return meta


def _scan_inputs(source: Path | None, settings: PrepareSettings, report: _Reporter) -> _Inputs:
    """Scan the input (checks, hash, length) and find the split, or refuse an empty part.

    The input is read as a stream, several times over, never whole: this scan, a search for
    the split, the tokenizer's training, the encoding. Memory stays bounded by a few chunks
    whatever the corpus size."""
    if source is None:
        corpus = TextSource(text=builtin_corpus_text())
    else:
        corpus = TextSource(Path(source), settings.errors, settings.csv_column)
    with report.bar(f"reading {corpus.name}", corpus.raw_bytes, "bytes") as advance:
        scan = corpus.scan(advance)
    total_chars = scan.chars
    if settings.val_file is not None:
        val_corpus = TextSource(Path(settings.val_file), settings.errors, settings.csv_column)
        val_scan = val_corpus.scan()
        return _Inputs(
            corpus, val_corpus, corpus.name, scan.sha256, val_scan.sha256, total_chars,
            total_chars, val_scan.chars,
            _read_masks(source, settings, total_chars, total_chars, val_scan.chars),
        )  # fmt: skip
    cut = find_split(corpus.pieces(), total_chars, settings.val_fraction)
    for part, has_text, fix in (
        ("validation", scan.last_text >= cut, "larger"),
        ("training", 0 <= scan.first_text < cut, "smaller"),
    ):
        if not has_text:
            raise DataError(
                f"{corpus.name}: the {part} part is empty (val_fraction "
                f"{settings.val_fraction} of {total_chars:,} characters); pass a {fix} "
                "--val-fraction, a --val-file, or a bigger corpus"
            )
    masks = _read_masks(source, settings, total_chars, cut, total_chars - cut)
    return _Inputs(
        corpus, None, corpus.name, scan.sha256, None, total_chars, cut, total_chars - cut, masks
    )


def _read_masks(
    source: Path | None, settings: PrepareSettings, chars: int, cut: int, val_chars: int
) -> _Masks | None:
    """The mask file beside the input (train.txt -> train.mask) and beside --val-file, checked
    and split like the text; None when the input has none (data prepared as it always was)."""
    texts = [p for p in (source, settings.val_file) if p is not None]
    paths = [mask_path(p) for p in texts if Path(p).is_file() and Path(p).suffix != ".csv"]
    present = [p for p in paths if p.is_file()]
    if not present:
        return None
    if settings.level != "char":
        raise UsageError(
            f"{present[0]}: a mask scores characters, so it needs data.level=char (got "
            f"{settings.level}); remove the mask file or prepare at char level"
        )
    if len(present) != len(paths):
        missing = next(p for p in paths if not p.is_file())
        raise DataError(
            f"{missing}: missing, but {present[0]} exists; the training text and --val-file "
            "need a mask each, or neither"
        )
    whole = read_mask(present[0], chars)
    if settings.val_file is None:
        train, val = whole[:cut], whole[cut:]
    else:
        train, val = whole, read_mask(present[1], val_chars)
    truth_file = Path(present[0]).parent / TRUTH_FILE
    truth = json.loads(truth_file.read_text(encoding="utf-8")) if truth_file.is_file() else None
    digest = hashlib.sha256(train.tobytes() + b"|" + val.tobytes()).hexdigest()
    info = mask_info(truth, np.concatenate([train, val]))
    return _Masks(train, val, digest, info)


def _train_tokenizer(inputs: _Inputs, settings: PrepareSettings, report: _Reporter) -> Tokenizer:
    with report.bar(f"building the {settings.level} tokenizer", inputs.cut) as advance:

        def train_chunks() -> Iterator[str]:
            for _, chunk in split_chunks(inputs.corpus.pieces(), [0, inputs.cut], CHUNK_CHARS):
                yield chunk
                advance(len(chunk))

        return build_tokenizer(
            settings.level,
            train_chunks(),
            settings.vocab_size,
            lowercase=settings.lowercase,
            segments=settings.segments,
            word_split=settings.word_split,
            sentence_split=settings.sentence_split,
        )


def _write_folder(
    out_dir: Path, inputs: _Inputs, tokenizer: Tokenizer, plan: PreparePlan, report: _Reporter
) -> dict:
    """A new `out_dir` is written as a temporary sibling folder and renamed into place: a
    killed prepare leaves no `out_dir` (the next one removes the temporary). An existing one
    keeps its complete files until the new ones are all written (`_write_prepared`)."""
    if out_dir.exists():
        return _write_prepared(out_dir, inputs, tokenizer, plan, report)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    building = temporary_sibling(out_dir)
    shutil.rmtree(building, ignore_errors=True)
    try:
        building.mkdir()
        meta = _write_prepared(building, inputs, tokenizer, plan, report)
        replace_durably(building, out_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return meta


def _write_prepared(
    out_dir: Path,
    inputs: _Inputs,
    tokenizer: Tokenizer,
    plan: PreparePlan,
    report: _Reporter,
) -> dict:
    """Encode both parts, write ids, tokenizer and meta under temporary names, then rename."""
    settings = plan.settings
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = choose_dtype(vocab_size)
    encoder = Encoder(tokenizer, settings.level)
    names = (TRAIN_FILE, VAL_FILE, TOKENIZER_FILE, *HF_FILES, TRAIN_MASK, VAL_MASK, META_FILE)
    temps = {name: out_dir / f".{name}.tmp" for name in names}
    cut, total_chars = inputs.cut, inputs.total_chars
    try:
        paths = [temps[TRAIN_FILE], temps[VAL_FILE]]
        if inputs.val_corpus is None:  # one pass over the corpus writes both parts
            jobs = [(inputs.corpus, [0, cut, total_chars], paths, total_chars)]
        else:
            jobs = [
                (inputs.corpus, [0, cut], paths[:1], cut),
                (inputs.val_corpus, [0, inputs.val_chars], paths[1:], inputs.val_chars),
            ]
        results = []
        for text_source, bounds, job_paths, chars in jobs:
            with report.bar("encoding", chars) as advance:
                chunks = split_chunks(text_source.pieces(), bounds, CHUNK_CHARS)
                unknown = special_ids(tokenizer)["unk"]
                results += _write_ids(chunks, job_paths, encoder, dtype, advance, unknown)
        counts = dict(zip((TRAIN_FILE, VAL_FILE), results, strict=True))
        if max(counts[TRAIN_FILE][1], counts[VAL_FILE][1]) >= vocab_size:
            raise DataError(
                f"{inputs.source_name}: the tokenizer produced an id outside its vocabulary"
            )
        if plan.vocabulary is not None:  # verbatim: the run's tokenizer hash stays the source's
            temps[TOKENIZER_FILE].write_text(plan.vocabulary, encoding="utf-8")
        else:
            save_tokenizer(tokenizer, temps[TOKENIZER_FILE])
        for name, text in transformers_files(tokenizer).items():
            temps[name].write_text(text, encoding="utf-8")
        meta = {
            "format": FORMAT_VERSION,
            "level": settings.level,
            "vocab_size": vocab_size,
            "dtype": dtype.name,
            "source": inputs.source_name,
            "sha256": inputs.input_sha256,
            "val_sha256": inputs.val_sha256,
            "settings": settings.as_dict(),
            "train_tokens": counts[TRAIN_FILE][0],
            "val_tokens": counts[VAL_FILE][0],
            "train_chars": cut,
            "val_chars": inputs.val_chars,
            "special_ids": special_ids(tokenizer),
            # Tokens that are the unknown token (unseen characters, words outside the vocabulary).
            "train_unknown": counts[TRAIN_FILE][2],
            "val_unknown": counts[VAL_FILE][2],
            "cache_key": plan.cache_key,
        }
        if plan.vocabulary is not None:
            meta["vocabulary_sha256"] = _sha256(plan.vocabulary)
        if inputs.masks is not None:
            meta["task"] = inputs.masks.info
            _write_masks(temps, inputs.masks, counts[TRAIN_FILE][0], counts[VAL_FILE][0])
        temps[META_FILE].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _put_in_place(out_dir, temps)
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    return meta


def _write_masks(temps: dict[str, Path], masks: _Masks, train_tokens: int, val_tokens: int) -> None:
    if (len(masks.train), len(masks.val)) != (train_tokens, val_tokens):
        raise DataError("the mask does not line up with the ids (one byte per character)")
    for name, mask in ((TRAIN_MASK, masks.train), (VAL_MASK, masks.val)):
        temps[name].write_bytes(mask.astype(np.uint8).tobytes())


def _put_in_place(out_dir: Path, temps: dict[str, Path]) -> None:
    """Rename the written temporaries over the old files, meta.json last. Until here an older
    prepared dataset in `out_dir` stayed complete (a kill while encoding leaves it usable);
    from its meta.json's removal on, the folder never looks complete until the new one lands."""
    written = [name for name, temp in temps.items() if temp.exists()]
    for name in written:
        fsync_file(temps[name])
    (out_dir / META_FILE).unlink(missing_ok=True)
    for name in written:
        replace_durably(temps[name], out_dir / name)


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
        masks = [None, None]
        if meta.get("task"):
            masks = [
                _open_ids(data_dir / name, np.dtype(np.uint8), int(meta[count]))
                for name, count in ((TRAIN_MASK, "train_tokens"), (VAL_MASK, "val_tokens"))
            ]
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"{data_dir / META_FILE}: damaged ({error}); run `charlm prepare` again"
        ) from None
    tokenizer = load_tokenizer(data_dir / TOKENIZER_FILE)
    return PreparedData(data_dir, meta, tokenizer, train_ids, val_ids, *masks)
