"""What a run's tokenizer.json reproduces outside charlm (README, "Using tokenizer.json
elsewhere"): with `tokenizers` alone, and with transformers' PreTrainedTokenizerFast."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import chain
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from charlm.data.prepare import PrepareSettings, load_prepared, prepare
from charlm.data.tokenizer import (
    HF_SPECIAL_TOKENS,
    HF_TOKENIZER_CONFIG,
    Encoder,
    build_tokenizer,
    save_tokenizer,
    special_ids,
    split_lines,
    split_sentences,
    transformers_tokens,
)
from charlm.rundir.names import TOKENIZER_EXTRAS
from tests.helpers import cli, readme_blocks, train_tiny, write_corpus

TRAIN = (
    "The cat sat. The dog ran!\nMr. Smith said: hello world.\n"
    "code:\n    def f(x):\n        return x\n\n\nnaïve café, 日本\n"
) * 4
# Unseen characters and words, indented lines, blank lines, a line without its break.
TEXTS = [
    "The cat ran. Zebras sat!\n",
    "    indented\n  twice\n\n\ttab ZQ\n",
    "Mr. Smith said: hello world. The end",
]
SETTINGS = [("char", {}), ("bpe", {}), ("word", {}), ("word", {"segments": "lines"})]


def saved(tmp_path: Path, level: str, settings: dict) -> tuple[Tokenizer, Path]:
    tokenizer = build_tokenizer(level, [TRAIN], 300, **settings)
    path = tmp_path / f"{level}-{len(settings)}.json"
    save_tokenizer(tokenizer, path)
    return tokenizer, path


def pieces(level: str, settings: dict, text: str) -> list[str]:
    """The text as the README says to cut it before encoding: not at all (char), at line
    breaks (bpe), into sentences or lines (word)."""
    if level == "char":
        return [text]
    if level == "bpe":
        return text.splitlines(keepends=True)
    return split_lines(text) if settings.get("segments") == "lines" else split_sentences(text)


@pytest.mark.parametrize(("level", "settings"), SETTINGS)
def test_tokenizer_json_alone_gives_charlms_ids(tmp_path: Path, level: str, settings: dict):
    tokenizer, path = saved(tmp_path, level, settings)
    plain, encoder = Tokenizer.from_file(str(path)), Encoder(tokenizer, level)
    for text in TEXTS:
        ids = [e.ids for e in plain.encode_batch(pieces(level, settings, text))]
        assert list(chain.from_iterable(ids)) == encoder.encode(text).tolist(), text


def test_bpe_on_a_whole_text_differs_where_whitespace_runs_over_a_line_break(tmp_path: Path):
    tokenizer, path = saved(tmp_path, "bpe", {})
    plain, encoder = Tokenizer.from_file(str(path)), Encoder(tokenizer, "bpe")
    assert plain.encode("one\ntwo\n").ids == encoder.encode("one\ntwo\n").tolist()
    indented = "one\n    two\n"  # the whole text pre-tokenises "\n   " together
    assert plain.encode(indented).ids != encoder.encode(indented).tolist()


@pytest.mark.parametrize(("level", "settings"), SETTINGS)
def test_transformers_gets_the_special_tokens_and_the_same_ids(
    tmp_path: Path, level: str, settings: dict
):
    transformers = pytest.importorskip("transformers")
    tokenizer, path = saved(tmp_path, level, settings)
    bare = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert bare.unk_token is None and bare.eos_token is None  # nothing read from the file
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(path), **transformers_tokens(tokenizer)
    )
    special = special_ids(tokenizer)
    assert hf.unk_token_id == special["unk"]
    assert hf.eos_token_id == special["end"]
    assert hf.bos_token_id == special["start"]
    assert hf.pad_token_id is not None
    encoder = Encoder(tokenizer, level)
    for text in TEXTS:
        ids = hf(pieces(level, settings, text))["input_ids"]
        assert list(chain.from_iterable(ids)) == encoder.encode(text).tolist(), text
    batch = hf(["The cat", "The cat sat on"], padding=True)
    assert batch["attention_mask"][0][-1] == 0  # padded, and masked


def test_the_readme_example_runs_as_written(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    (program,) = readme_blocks("### Using tokenizer.json elsewhere")
    corpus = write_corpus(tmp_path)
    assert train_tiny(corpus, "--out", tmp_path / "runs" / "mine", steps=2).exit_code == 0
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    tokenizer = Tokenizer.from_file(str(tmp_path / "runs" / "mine" / "data" / "tokenizer.json"))
    ids = Encoder(tokenizer, "char").encode("The cat").tolist()
    assert done.stdout.strip() == f"<unk> {ids}"


# -- tokenizer_config.json and special_tokens_map.json: AutoTokenizer.from_pretrained(folder) --


def auto_tokenizer(folder: Path) -> object:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(folder))  # a local folder: no network


@pytest.mark.parametrize(("level", "settings"), SETTINGS)
def test_prepared_data_loads_in_auto_tokenizer_with_its_special_tokens(
    tmp_path: Path, level: str, settings: dict
) -> None:
    corpus = write_corpus(tmp_path, TRAIN)
    out = tmp_path / "data"
    prepare(corpus, out, PrepareSettings(level=level, vocab_size=300, **settings), False)
    hf = auto_tokenizer(out)
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    special, tokens = special_ids(tokenizer), transformers_tokens(tokenizer)
    assert type(hf).__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend")
    assert (hf.unk_token_id, hf.bos_token_id, hf.eos_token_id) == (
        special["unk"], special["start"], special["end"],
    )  # fmt: skip
    assert hf.pad_token == tokens["pad_token"] and hf.pad_token_id is not None
    if level == "word":  # the tokens the level really has, by name
        assert hf.unk_token == "UNKNOWN_TOKEN"
        assert hf.eos_token == ("<eos>" if settings else "SENTENCE_END")
        assert hf.bos_token == (None if settings else "SENTENCE_START")
    if level == "char":
        assert (hf.unk_token, hf.bos_token, hf.eos_token) == ("<unk>", None, None)
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert {"unk_token", "pad_token", "bos_token", "eos_token"} <= set(config)  # null: none
    encoder = Encoder(tokenizer, level)
    for text in TEXTS:
        ids = hf(pieces(level, settings, text))["input_ids"]
        assert list(chain.from_iterable(ids)) == encoder.encode(text).tolist(), text


def test_a_runs_data_and_checkpoints_load_in_auto_tokenizer(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    assert train_tiny(corpus, "--out", tmp_path / "run", steps=2).exit_code == 0
    (checkpoint,) = (tmp_path / "run" / "checkpoints").glob("step-*")
    for folder in (tmp_path / "run" / "data", checkpoint):
        hf = auto_tokenizer(folder)
        assert (hf.unk_token, hf.pad_token, hf.unk_token_id) == ("<unk>", "<unk>", 0), folder
    averaged = tmp_path / "avg"
    assert cli("average", tmp_path / "run", "--last", "1", "--out", averaged).exit_code == 0
    assert auto_tokenizer(averaged).unk_token == "<unk>"


def test_the_two_wings_name_the_same_files() -> None:
    assert (HF_TOKENIZER_CONFIG, HF_SPECIAL_TOKENS) == TOKENIZER_EXTRAS


def test_data_prepared_before_these_files_keeps_loading_and_is_reused_as_it_is(
    tmp_path: Path,
) -> None:
    corpus = write_corpus(tmp_path)
    out = tmp_path / "data"
    settings = PrepareSettings()
    prepare(corpus, out, settings, False)
    for name in TOKENIZER_EXTRAS:  # as charlm wrote prepared data before
        (out / name).unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    prepare(corpus, out, settings, False)  # reused: nothing written
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_prepared(out).meta["level"] == "char"
    assert train_tiny("--data", out, "--out", tmp_path / "run", steps=2).exit_code == 0
