"""What a run's tokenizer.json reproduces outside charlm (README, "Using tokenizer.json
elsewhere"): with `tokenizers` alone, and with transformers' PreTrainedTokenizerFast."""

from __future__ import annotations

import subprocess
import sys
from itertools import chain
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from charlm.data.tokenizer import (
    Encoder,
    build_tokenizer,
    save_tokenizer,
    special_ids,
    split_lines,
    split_sentences,
    transformers_tokens,
)
from tests.helpers import readme_blocks, train_tiny, write_corpus

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
