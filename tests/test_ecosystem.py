"""What the ecosystem does for charlm now (issue 26, items 5-7): the cache folder is the
platform's (platformdirs), word-level sentences are split by pysbd (recorded in the tokenizer, the
old rule kept for tokenizers that record none), and charlm as a library leaves the caller's
process alone (no environment variable at import, no process-wide CSV field limit)."""

from __future__ import annotations

import ast
import csv
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from helpers import TINY, cli, write_corpus
from tokenizers import Tokenizer

from charlm.config import DataConfig, build_config
from charlm.data import tokenizer
from charlm.data.corpora import cache_dir
from charlm.data.prepare import PrepareSettings, load_prepared, prepare
from charlm.data.tokenizer import (
    SENTENCE_START,
    Encoder,
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
    split_sentences,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# --- item 5: the cache folder -------------------------------------------------------------------


def test_cache_folder_is_the_platforms_and_charlm_cache_comes_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CHARLM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert cache_dir() == tmp_path / "xdg" / "charlm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    if sys.platform.startswith("linux"):
        assert cache_dir() == Path.home() / ".cache" / "charlm"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CHARLM_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


# --- item 6: sentences ----------------------------------------------------------------------------

ISSUE = "The U.S. Army arrived at 5 p.m. on Jan. 5. It was late."
# Titles, initials, times, decimals, abbreviations and quotes, split where a reader splits them.
READER = [
    "Mr. Smith met Dr. J. R. R. Tolkien at 3.30 p.m. in St. Louis.",
    "They talked for 2.5 hours.",
    'She said, "It costs $3.50."',
    "Then she left.",
    '"Is it raining?" he asked.',
    '"No," she said.',
    "I met John F. Kennedy Jr. once.",
    "Gen. Smith and Sen. Brown met in Washington, D.C. on Monday.",
    "Prof. Jones, Ph.D., arrived at 9 a.m.",
    "Everyone was there (approx. 40 people).",
    "What a day!",
]


def test_the_issues_example_is_two_sentences() -> None:
    assert split_sentences(ISSUE) == ["The U.S. Army arrived at 5 p.m. on Jan. 5.", "It was late."]


def test_ordinary_english_splits_where_a_reader_splits_it() -> None:
    assert split_sentences(" ".join(READER)) == READER
    # A line break always ends a sentence; a URL or a number is never cut (pysbd alone would
    # cut the URL after its "?").
    text = "See https://example.com/a?b=1 now. It works.\n3.14 stays whole"
    assert split_sentences(text) == [
        "See https://example.com/a?b=1 now.",
        "It works.",
        "3.14 stays whole",
    ]


def _old_split_sentences(text: str) -> list[str]:
    """charlm 0.1's split_sentences (commit 05457b6), verbatim but for its names."""
    import re

    abbreviations = frozenset(
        "mr. mrs. ms. dr. prof. st. vs. jr. sr. e.g. i.e. no. fig. approx. cf.".split()
    )
    sentence_break = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'”’)\]])\s+")
    sentences: list[str] = []
    for line in text.splitlines():
        pieces = sentence_break.split(line.strip())
        pending = ""
        for piece in pieces:
            pending = f"{pending} {piece}" if pending else piece
            last_word = pending.rsplit(None, 1)[-1].lower() if pending else ""
            if last_word not in abbreviations:
                if pending:
                    sentences.append(pending)
                pending = ""
        if pending:
            sentences.append(pending)
    return sentences


@pytest.mark.parametrize(
    "text",
    [
        ISSUE,
        " ".join(READER),
        'One. Two! "Three?" Four\n\nMr. Smith went.  3.5 stays.\nno end',
        "  lead and trail  \n\n\t. ! ?\n'quoted.' (bracketed.) [x!] done",
        "",
    ],
)
def test_the_rules_splitter_is_the_old_rule(text: str) -> None:
    assert split_sentences(text, "rules") == _old_split_sentences(text)


def test_a_long_line_is_split_as_a_whole_would_be(monkeypatch: pytest.MonkeyPatch) -> None:
    """pysbd gets a long line in windows (its time grows faster than the length): the
    sentences are those of the whole line, whatever the window."""
    line = " ".join(READER * 12)
    whole = split_sentences(line)
    assert whole == READER * 12
    monkeypatch.setattr(tokenizer, "PYSBD_WINDOW", 300)
    monkeypatch.setattr(tokenizer, "PYSBD_MARGIN", 80)
    assert split_sentences(line) == whole


def _sentences(words: Tokenizer, text: str) -> int:
    ids = Encoder(words, "word").encode(text).tolist()
    return ids.count(words.token_to_id(SENTENCE_START))


def test_a_new_word_tokenizer_records_its_splitter(tmp_path: Path) -> None:
    words = build_tokenizer("word", [ISSUE], 0)
    save_tokenizer(words, tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert tokenizer.sentence_splitter(loaded) == "pysbd" and _sentences(loaded, ISSUE) == 2
    # The vocabulary is the same whichever splitter: it counts words.
    rules = build_tokenizer("word", [ISSUE], 0, sentence_split="rules")
    assert rules.get_vocab() == words.get_vocab()
    assert tokenizer.sentence_splitter(rules) == "rules" and _sentences(rules, ISSUE) == 5
    assert (
        tokenizer.sentence_splitter(build_tokenizer("word", [ISSUE], 0, segments="lines")) is None
    )
    with pytest.raises(Exception, match="sentence_split"):
        build_tokenizer("word", [ISSUE], 0, sentence_split="nltk")


def test_a_tokenizer_from_before_the_setting_keeps_the_old_rule(tmp_path: Path) -> None:
    """tokenizer.json as charlm 0.1 wrote it (fixtures/old_word_tokenizer/make.py): sample and
    evaluate encode with it exactly as before, five 'sentences' for the issue's example."""
    old = load_tokenizer(FIXTURES / "old_word_tokenizer" / "tokenizer.json")
    assert tokenizer.sentence_splitter(old) == "rules" and _sentences(old, ISSUE) == 5
    # A tokenizer built with the rule today is the same file as then.
    source = (FIXTURES / "old_word_tokenizer" / "make.py").read_text(encoding="utf-8")
    text = next(
        ast.literal_eval(node.value)
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "TEXT"
    )
    rebuilt = build_tokenizer("word", [text], 0, sentence_split="rules")
    assert json.loads(rebuilt.to_str()) == json.loads(old.to_str())


def test_prepare_records_the_splitter_and_never_reuses_the_old_split(tmp_path: Path) -> None:
    import hashlib

    corpus = write_corpus(tmp_path, (ISSUE + "\n" + " ".join(READER) + "\n") * 40)
    out = tmp_path / "data"
    word = {"level": "word", "vocab_size": 0}
    old = prepare(corpus, out, PrepareSettings(**word, sentence_split="rules"), False)
    # With the rule the key is the one computed before the setting existed: data prepared then
    # is reused (and runs trained on it resume).
    legacy = {k: v for k, v in old["settings"].items() if k not in ("sentence_split",)}
    for key in ("lowercase", "segments", "word_split"):
        del legacy[key]
    payload = {"format": 1, "input": old["sha256"], "val_input": None, "settings": legacy}
    assert (
        old["cache_key"] == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    )
    new = prepare(corpus, out, PrepareSettings(**word), False)
    assert new["cache_key"] != old["cache_key"], "the old split was reused for pysbd"
    assert (
        new["settings"]["sentence_split"] == "pysbd" and new["train_tokens"] < old["train_tokens"]
    )
    assert tokenizer.sentence_splitter(load_prepared(out).tokenizer) == "pysbd"
    # segments=lines splits no sentences: the splitter changes nothing there, nor its key.
    lines = {**word, "segments": "lines"}
    a = prepare(corpus, tmp_path / "a", PrepareSettings(**lines), False)
    b = prepare(corpus, tmp_path / "b", PrepareSettings(**lines, sentence_split="rules"), False)
    assert a["cache_key"] == b["cache_key"]


def test_the_setting_is_wired_through_config_and_prepare(tmp_path: Path) -> None:
    hints = typing.get_type_hints(DataConfig)["sentence_split"]
    assert set(typing.get_args(hints)) == set(tokenizer.SENTENCE_SPLITS)
    assert DataConfig().sentence_split == "pysbd"
    # A run saved before the setting existed split with the rule, and resumes so.
    saved = {"data": {"level": "word"}, "model": {}, "train": {}, "optim": {}}
    assert build_config(base=saved).data.sentence_split == "rules"
    corpus = write_corpus(tmp_path, (ISSUE + "\n") * 60)
    for choice, sentences in (("rules", 5), ("pysbd", 2)):
        out = tmp_path / choice
        result = cli("prepare", corpus, "--level", "word", "--sentence-split", choice, "--out", out)
        assert result.exit_code == 0, result.output
        data = load_prepared(out)
        assert data.meta["settings"]["sentence_split"] == choice
        assert _sentences(data.tokenizer, ISSUE) == sentences
    refused = cli("prepare", corpus, "--level", "word", "--sentence-split", "x", "--out", out)
    assert refused.exit_code == 2 and "--sentence-split" in refused.stderr


# --- item 7: global state -------------------------------------------------------------------------

_CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_"))}


def _python(code: str, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True, text=True, env=_CLEAN_ENV, cwd=ROOT, timeout=timeout,
    )  # fmt: skip


_API_RUN = """
import csv, json, os, sys
environ, limit = dict(os.environ), csv.field_size_limit()
import charlm
imported = dict(os.environ) == environ
import torch  # what PyTorch itself sets: its first optimizer sets TORCHINDUCTOR_CACHE_DIR
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
environ = dict(os.environ)
tiny = dict(item.split("=", 1) for item in sys.argv[3:])
result = charlm.train(sys.argv[1], out=sys.argv[2], overrides=tiny, csv_column="body")
charlm.load(result.run_dir).score_file(sys.argv[1])
changed = sorted(k for k in {*environ, *os.environ} if environ.get(k) != os.environ.get(k))
print(json.dumps({"imported": imported, "changed": changed, "limit": [limit, csv.field_size_limit()]}))
"""


@pytest.mark.slow
def test_the_library_leaves_the_callers_process_alone(tmp_path: Path) -> None:
    """import charlm, train on a CSV and score it through the API: no environment variable
    set (GOMP_SPINCOUNT was), the csv module's field limit as it was (it was raised for good)."""
    table = tmp_path / "comments.csv"
    with open(table, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "body"])
        writer.writerows([i, f"abc abd xyz {i % 7}. " * 5] for i in range(300))
    tiny = [v for v in TINY if v != "--set"] + ["train.max_steps=3", "train.eval_every=3"]
    done = _python(_API_RUN, table, tmp_path / "run", *tiny)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"imported": True, "changed": [], "limit": [131072, 131072]}
    # The header says what holds: libgomp's own default, the command line's bound.
    header = next(x for x in done.stderr.splitlines() if x.startswith("cpu:"))
    assert "OpenMP threads spin 300,000 rounds (libgomp's default), then sleep" in header


def test_a_long_csv_field_reads_and_the_limit_comes_back(tmp_path: Path) -> None:
    from charlm.data.reading import TextSource

    table = tmp_path / "long.csv"
    long_body = "word " * 60_000  # 300,000 characters: past the csv module's 131,072
    table.write_text(f'id,body\n1,"{long_body}"\n2,short\n', encoding="utf-8")
    before = csv.field_size_limit()
    source = TextSource(table, "strict", "body")
    pieces = source.pieces()
    first = next(pieces)  # the reading is not done: still no other reader sees a raised limit
    assert csv.field_size_limit() == before
    assert (first + "".join(pieces)) == long_body + "\nshort"
    assert csv.field_size_limit() == before


def test_the_command_line_sets_its_own_spin_count(tmp_path: Path) -> None:
    chosen = _python(
        "import os, sys, charlm.cli; print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"
    )
    assert chosen.stdout.split() == ["300000", "False"], chosen.stderr
    corpus = write_corpus(tmp_path)
    steps = ["--set", "train.max_steps=2"]
    done = subprocess.run(
        [sys.executable, "-m", "charlm", "train", corpus, "--out", tmp_path / "run", *TINY, *steps],
        capture_output=True, text=True, env=_CLEAN_ENV, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    header = next(x for x in done.stderr.splitlines() if x.startswith("cpu:"))
    assert header.endswith("; OpenMP threads spin 300,000 rounds, then sleep"), header
