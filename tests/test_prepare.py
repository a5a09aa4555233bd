"""Tests for charlm.data.prepare: inputs, split, outputs, cache, atomic writes and error messages."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from charlm.data import prepare as prepare_module
from charlm.data.prepare import (
    PrepareSettings,
    choose_dtype,
    load_prepared,
    prepare,
    read_text,
    split_train_val,
)
from charlm.data.tokenizer import LINE_END, Encoder, decode
from charlm.errors import DataError, UsageError

META_KEYS = {
    "format",
    "level",
    "vocab_size",
    "dtype",
    "source",
    "sha256",
    "settings",
    "train_tokens",
    "val_tokens",
    "train_chars",
    "val_chars",
    "special_ids",
    "cache_key",
}


def run(source: Path | None, out: Path, **settings) -> dict:
    return prepare(source, out, PrepareSettings(**settings), show_progress=False)


def test_char_outputs_and_meta(corpus_file: Path, english_text: str, tmp_path: Path) -> None:
    out = tmp_path / "data"
    meta = run(corpus_file, out)
    assert {p.name for p in out.iterdir()} == {
        "train.bin",
        "val.bin",
        "meta.json",
        "tokenizer.json",
        "tokenizer_config.json",  # these two for transformers' AutoTokenizer
        "special_tokens_map.json",
    }
    assert META_KEYS <= set(meta)
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["format"] == 1 and meta["level"] == "char" and meta["dtype"] == "uint16"
    assert meta["source"] == str(corpus_file)
    assert meta["settings"]["val_file"] is None and meta["settings"]["level"] == "char"
    assert (out / "train.bin").stat().st_size == 2 * meta["train_tokens"]
    assert (out / "val.bin").stat().st_size == 2 * meta["val_tokens"]
    assert meta["train_chars"] + meta["val_chars"] == len(english_text)

    data = load_prepared(out)
    assert isinstance(data.train_ids, np.memmap) and not data.train_ids.flags.writeable
    assert data.train_ids.dtype == np.dtype("<u2")
    assert data.meta == meta
    assert data.tokenizer.get_vocab_size() == meta["vocab_size"]
    train = decode(data.tokenizer, "char", data.train_ids)
    val = decode(data.tokenizer, "char", data.val_ids)
    assert train + val == english_text
    # The validation part is the tail, cut at a line break, about val_fraction long.
    assert train.endswith("\n")
    assert abs(len(val) / len(english_text) - 0.05) < 0.02


def test_split_is_deterministic_and_at_a_line_break() -> None:
    text = "".join(f"line {i}\n" for i in range(1000))
    train, val = split_train_val(text, 0.1)
    assert (train, val) == split_train_val(text, 0.1)
    assert train + val == text and train.endswith("\n") and val.startswith("line ")
    # A text without line breaks is still split.
    train, val = split_train_val("x" * 100, 0.1)
    assert (len(train), len(val)) == (90, 10)


def test_same_input_twice_gives_identical_files(corpus_file: Path, tmp_path: Path) -> None:
    run(corpus_file, tmp_path / "a", level="word", vocab_size=20)
    run(corpus_file, tmp_path / "b", level="word", vocab_size=20)
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_cache_reuses_and_settings_change_rebuilds(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    first = run(corpus_file, out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert run(corpus_file, out) == first
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    # char level ignores vocab_size, so changing it reuses the data.
    assert run(corpus_file, out, vocab_size=123) == first
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    changed = run(corpus_file, out, val_fraction=0.2)
    assert changed["cache_key"] != first["cache_key"]
    assert load_prepared(out).meta == changed

    # A truncated file is noticed and the data rebuilt.
    with open(out / "train.bin", "r+b") as file:
        file.truncate(10)
    assert run(corpus_file, out, val_fraction=0.2) == changed
    assert (out / "train.bin").stat().st_size == 2 * changed["train_tokens"]


def test_cache_message_on_stderr(
    corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    settings = PrepareSettings()
    prepare(corpus_file, tmp_path / "data", settings, show_progress=True)
    prepare(corpus_file, tmp_path / "data", settings, show_progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "already prepared" in captured.err


def test_interrupted_prepare_keeps_the_previous_data(
    corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "data"
    before = run(corpus_file, out)
    calls = []
    real_encode = Encoder.encode

    def failing_encode(self: Encoder, text: str) -> np.ndarray:
        calls.append(text)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_encode(self, text)

    monkeypatch.setattr(Encoder, "encode", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        run(corpus_file, out, val_fraction=0.3)
    # The new files are renamed in only once all are written: the old data is still whole.
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert load_prepared(out).meta == before
    monkeypatch.setattr(Encoder, "encode", real_encode)
    meta = run(corpus_file, out, val_fraction=0.3)
    assert load_prepared(out).meta == meta


def test_refuses_a_foreign_non_empty_folder(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        run(corpus_file, out)
    assert (out / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    run(corpus_file, empty)
    assert (empty / "meta.json").exists()


def test_val_file(corpus_file: Path, tmp_path: Path) -> None:
    val = tmp_path / "val.txt"
    val.write_text("The cat sat.\nA zebra!\n")
    meta = run(corpus_file, tmp_path / "data", val_file=val)
    assert meta["val_chars"] == len("The cat sat.\nA zebra!\n")
    assert meta["train_chars"] == len(corpus_file.read_text())
    assert meta["settings"]["val_file"] == str(val)
    data = load_prepared(tmp_path / "data")
    # "z" never occurs in training: the tokenizer comes from the training text only.
    assert data.meta["special_ids"]["unk"] in data.val_ids.tolist()


def test_word_level_streams_hold_sentence_markers(corpus_file: Path, tmp_path: Path) -> None:
    meta = run(corpus_file, tmp_path / "data", level="word", vocab_size=15)
    data = load_prepared(tmp_path / "data")
    ids = data.train_ids.tolist()
    start, end = meta["special_ids"]["start"], meta["special_ids"]["end"]
    assert meta["vocab_size"] == 15
    assert ids[0] == start and ids[-1] == end
    assert ids.count(start) == ids.count(end) >= 150


def test_bpe_prepare_round_trips(tmp_path: Path) -> None:
    text = "Ünïcödé text with 日本語 and emoji 😀.\n" * 40 + "tail line here\n" * 10
    source = tmp_path / "u.txt"
    source.write_text(text, encoding="utf-8")
    meta = run(source, tmp_path / "data", level="bpe", vocab_size=300, val_fraction=0.1)
    data = load_prepared(tmp_path / "data")
    assert meta["vocab_size"] <= 300
    assert (
        decode(data.tokenizer, "bpe", data.train_ids) + decode(data.tokenizer, "bpe", data.val_ids)
        == text
    )


def test_choose_dtype() -> None:
    assert choose_dtype(66) == np.dtype("<u2")
    assert choose_dtype(65536) == np.dtype("<u2")  # ids 0..65535 fit
    assert choose_dtype(65537) == np.dtype("<u4")


def test_csv_input_with_quoted_newlines(tmp_path: Path) -> None:
    source = tmp_path / "comments.csv"
    source.write_text(
        'id,body\n1,"First comment, with a comma."\n2,"Second\nspans lines."\n3,""\n'
        + "".join(f'{i},"Comment number {i}."\n' for i in range(4, 60)),
        encoding="utf-8",
    )
    text = read_text(source, csv_column="body")
    assert text.startswith("First comment, with a comma.\nSecond\nspans lines.\nComment number 4.")
    assert "id" not in text.split("\n")[0]
    meta = run(source, tmp_path / "data", csv_column="body")
    assert meta["train_chars"] + meta["val_chars"] == len(text)


def test_csv_errors(tmp_path: Path) -> None:
    source = tmp_path / "comments.csv"
    source.write_text("id,body,score\n1,hello,3\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"no column 'text'; the columns are: id, body, score"):
        read_text(source, csv_column="text")
    with pytest.raises(UsageError, match="--csv-column"):
        run(source, tmp_path / "data")


def test_invalid_utf8_names_file_and_offset(tmp_path: Path) -> None:
    source = tmp_path / "bad.txt"
    source.write_bytes(b"good text\nmore good\n" + b"\xff\xfe broken" + b"\nend\n" * 50)
    with pytest.raises(DataError) as info:
        run(source, tmp_path / "data")
    message = str(info.value)
    assert str(source) in message and "byte offset 20" in message and "--errors replace" in message
    assert "\n" not in message

    meta = run(source, tmp_path / "data", errors="replace")
    assert meta["train_chars"] > 0
    assert "\ufffd" in read_text(source, errors="replace")


def test_text_reading_normalises_line_ends_and_bom(tmp_path: Path) -> None:
    source = tmp_path / "windows.txt"
    source.write_bytes(b"\xef\xbb\xbfone\r\ntwo\rthree\n")
    assert read_text(source) == "one\ntwo\nthree\n"


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"", "empty"),
        (b"  \n\n\t ", "empty"),
        (b"PK\x03\x04\x00\x00binary", "NUL byte at byte offset 4"),
    ],
)
def test_unusable_files(tmp_path: Path, content: bytes, pattern: str) -> None:
    source = tmp_path / "input.txt"
    source.write_bytes(content)
    with pytest.raises(DataError, match=pattern):
        run(source, tmp_path / "data")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        run(tmp_path / "nope.txt", tmp_path / "data")


def test_folder_input(tmp_path: Path) -> None:
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "b.txt").write_text("second book\n" * 30)
    (folder / "a.txt").write_text("first book\n" * 30)
    (folder / "notes.md").write_text("not part of it\n")
    assert read_text(folder) == "first book\n" * 30 + "\n" + "second book\n" * 30
    meta = run(folder, tmp_path / "data")
    assert meta["source"] == str(folder)
    # Renaming a file changes the hash even when the contents stay the same.
    (folder / "b.txt").rename(folder / "c.txt")
    assert run(folder, tmp_path / "data")["sha256"] != meta["sha256"]

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(DataError, match="no .txt files"):
        run(empty, tmp_path / "data2")


def test_validation_part_must_not_be_empty(tmp_path: Path) -> None:
    source = tmp_path / "short.txt"
    source.write_text("one short line\n\n")
    with pytest.raises(DataError, match="validation part is empty.*larger --val-fraction"):
        run(source, tmp_path / "data", val_fraction=0.01)


@pytest.mark.parametrize(
    "settings",
    [
        {"level": "syllable"},
        {"val_fraction": 0.0},
        {"val_fraction": 1.0},
        {"errors": "ignore"},
        {"level": "word", "vocab_size": 3},
        {"level": "word", "segments": "paragraphs"},
        {"level": "word", "word_split": "bpe"},
        {"level": "bpe", "vocab_size": 0},
    ],
)
def test_bad_settings_are_usage_errors(corpus_file: Path, tmp_path: Path, settings: dict) -> None:
    with pytest.raises(UsageError):
        run(corpus_file, tmp_path / "data", **settings)


def test_builtin_corpus_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = "Built-in text, line one.\n" * 100
    monkeypatch.setattr(prepare_module, "builtin_corpus_text", lambda: small)
    meta = run(None, tmp_path / "data")
    assert meta["source"] == "builtin"
    assert meta["train_chars"] + meta["val_chars"] == len(small)


def test_load_prepared_errors(tmp_path: Path, corpus_file: Path) -> None:
    with pytest.raises(DataError, match="no prepared data"):
        load_prepared(tmp_path / "nothing")
    out = tmp_path / "data"
    run(corpus_file, out)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(DataError, match="format 99"):
        load_prepared(out)
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "val.bin").write_bytes(b"\x00")
    with pytest.raises(DataError, match="wrong size"):
        load_prepared(out)


@pytest.mark.parametrize("level", ["char", "word"])
def test_small_chunks_give_the_same_ids(
    corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    run(corpus_file, tmp_path / "whole", level=level, vocab_size=30)
    monkeypatch.setattr(prepare_module, "CHUNK_CHARS", 50)
    run(corpus_file, tmp_path / "chunked", level=level, vocab_size=30)
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "whole" / name).read_bytes() == (
            tmp_path / "chunked" / name
        ).read_bytes()


# --- pytorch/examples' word level (WikiText-2): lowercase, segments and word_split ---

PYTORCH_WORDS = {"level": "word", "vocab_size": 0, "lowercase": False}
PYTORCH_WORDS |= {"segments": "lines", "word_split": "whitespace"}


def wiki_like(lines: int, seed: int) -> str:
    """Pre-tokenised text in WikiText's shape: headings, empty lines, "@-@", "<unk>"."""
    from conftest import make_english

    out = []
    for number, line in enumerate(make_english(lines, seed).splitlines()):
        words = line.replace(".", " .").replace(",", " ,").split()
        if number % 7 == 0:
            out += ["", f" = {words[0]} = ", ""]
        out.append(" " + " ".join(words + ["well", "@-@", "known", "<unk>"]) + " ")
    return "\n".join(out) + "\n"


def pytorch_token_count(text: str) -> int:
    """pytorch/examples data.py: `len(line.split()) + 1` (the <eos>) for every line of the file."""
    return sum(len(line.split()) + 1 for line in text.splitlines(keepends=True))


def test_lines_mode_counts_match_pytorch_examples(tmp_path: Path) -> None:
    train, val = wiki_like(120, seed=1), wiki_like(30, seed=2)
    (tmp_path / "train.txt").write_text(train, encoding="utf-8")
    (tmp_path / "valid.txt").write_text(val, encoding="utf-8")
    meta = run(
        tmp_path / "train.txt", tmp_path / "data", val_file=tmp_path / "valid.txt", **PYTORCH_WORDS
    )
    assert "\n\n" in train and meta["train_tokens"] == pytorch_token_count(train)
    assert meta["val_tokens"] == pytorch_token_count(val)
    assert meta["settings"]["segments"] == "lines" and meta["settings"]["lowercase"] is False
    data = load_prepared(tmp_path / "data")
    vocab = data.tokenizer.get_vocab()
    assert meta["special_ids"]["start"] is None
    assert meta["special_ids"]["end"] == vocab[LINE_END]
    # Every training word is kept (vocab_size 0), case and "@-@" as written, plus 2 specials.
    assert meta["vocab_size"] == len(set(train.split())) + 2
    assert {"@-@", "<unk>", "The", "the"} <= set(vocab)
    tokens = [data.tokenizer.id_to_token(int(i)) for i in data.train_ids]
    assert tokens == [w for line in train.splitlines() for w in line.split() + [LINE_END]]


def test_word_defaults_are_unchanged(corpus_file: Path, tmp_path: Path) -> None:
    implicit = run(corpus_file, tmp_path / "implicit", level="word", vocab_size=30)
    explicit = run(
        corpus_file,
        tmp_path / "explicit",
        level="word",
        vocab_size=30,
        lowercase=True,
        segments="sentences",
        word_split="rules",
    )
    assert explicit["cache_key"] == implicit["cache_key"]
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "implicit" / name).read_bytes() == (
            tmp_path / "explicit" / name
        ).read_bytes()
    # The cache key is the one computed before these settings existed, so data prepared then is
    # reused (and runs trained on it resume).
    old_settings = {
        key: value
        for key, value in implicit["settings"].items()
        if key not in ("lowercase", "segments", "word_split")
    }
    old_payload = {
        "format": implicit["format"],
        "input": implicit["sha256"],
        "val_input": None,
        "settings": {**old_settings, "val_fraction": 0.05},
    }
    old_key = hashlib.sha256(json.dumps(old_payload, sort_keys=True).encode()).hexdigest()
    assert implicit["cache_key"] == old_key
    start, end = implicit["special_ids"]["start"], implicit["special_ids"]["end"]
    assert start is not None and end is not None and start != end


def test_meta_without_the_word_settings_loads_as_defaults(
    corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "data"
    meta = run(corpus_file, out, level="word", vocab_size=30)
    for key in ("lowercase", "segments", "word_split"):
        del meta["settings"][key]
    (out / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    data = load_prepared(out)
    assert data.meta == meta and len(data.train_ids) == meta["train_tokens"]
    # Preparing again with the defaults finds it up to date; any other value rebuilds it.
    assert run(corpus_file, out, level="word", vocab_size=30) == meta
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    rebuilt = run(corpus_file, out, level="word", vocab_size=30, lowercase=False)
    assert rebuilt["cache_key"] != meta["cache_key"]
    assert rebuilt["settings"]["lowercase"] is False


def test_word_settings_do_not_change_other_levels(corpus_file: Path, tmp_path: Path) -> None:
    first = run(corpus_file, tmp_path / "data")
    assert run(corpus_file, tmp_path / "data", segments="lines", lowercase=False) == first


def test_sentence_batching_with_lines_is_a_config_error() -> None:
    from charlm.config import build_config
    from charlm.errors import ConfigError

    word = ["data.level=word", "data.batching=sentence"]
    build_config(overrides=word)
    with pytest.raises(ConfigError, match="data.segments=sentences"):
        build_config(overrides=[*word, "data.segments=lines"])
    build_config(overrides=["data.level=word", "data.vocab_size=0"])
    with pytest.raises(ConfigError, match="data.vocab_size"):
        build_config(overrides=["data.level=bpe", "data.vocab_size=0"])


def test_prepare_and_train_in_lines_mode_through_the_cli(tmp_path: Path) -> None:
    from helpers import TINY, cli

    corpus = tmp_path / "train.txt"
    corpus.write_text(wiki_like(150, seed=3), encoding="utf-8")
    options = ["--level", "word", "--vocab-size", "0", "--keep-case"]
    options += ["--segments", "lines", "--word-split", "whitespace"]
    result = cli("prepare", corpus, *options, "--out", tmp_path / "data")
    assert result.exit_code == 0, result.stderr
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["train_tokens"] + meta["val_tokens"] == pytorch_token_count(corpus.read_text())
    result = cli(
        "prepare", corpus, "--level", "word", "--segments", "paragraphs", "--out", tmp_path / "x"
    )
    assert result.exit_code == 2 and "segments" in result.stderr
    # train TEXT prepares with the data.* settings of the run.
    settings = [f"data.{key}={value}" for key, value in PYTORCH_WORDS.items()]
    sets = [item for setting in settings for item in ("--set", setting)]
    result = cli(
        "train", corpus, "--out", tmp_path / "run", "-q", *TINY, *sets, "--set", "train.max_steps=3"
    )
    assert result.exit_code == 0, result.stderr
    run_meta = json.loads((tmp_path / "run" / "data" / "meta.json").read_text())
    assert run_meta["settings"] | {"csv_column": None} == meta["settings"]
    assert run_meta["train_tokens"] == meta["train_tokens"]


def test_wikitext_config_asks_for_pytorch_examples_tokens() -> None:
    from charlm.config import build_config

    config = build_config(config_file=Path(__file__).parents[1] / "configs/wikitext2-word.yaml")
    assert {key: getattr(config.data, key) for key in PYTORCH_WORDS} == PYTORCH_WORDS
