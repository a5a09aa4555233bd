"""Sampling: seeded, filtered, streamed, and the tutorial's sentence mode."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import TINY, cli, write_corpus
from hypothesis import given, settings
from hypothesis import strategies as st

from charlm.data.tokenizer import SENTENCE_END, SENTENCE_START, UNKNOWN_TOKEN
from charlm.errors import UsageError
from charlm.inference.sample import SampleOptions, Sampler, filter_logits


@pytest.fixture(scope="module")
def char_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("char")
    result = cli(
        "train",
        write_corpus(folder),
        "--out",
        folder / "run",
        "-q",
        *TINY,
        "--set",
        "train.max_steps=60",
        "--set",
        "optim.lr=0.01",
    )
    assert result.exit_code == 0, result.stderr
    return folder / "run"


@pytest.fixture(scope="module")
def word_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_english

    folder = tmp_path_factory.mktemp("word")
    corpus = write_corpus(folder, make_english(400))
    result = cli(
        "train",
        corpus,
        "--out",
        folder / "run",
        "-q",
        *TINY,
        "--set",
        "data.level=word",
        "--set",
        "data.vocab_size=20",
        "--set",
        "data.batching=sentence",
        "--set",
        "train.max_steps=40",
    )
    assert result.exit_code == 0, result.stderr
    return folder / "run"


def test_same_seed_same_text(char_run: Path) -> None:
    a = cli("sample", char_run, "--seed", "3", "--length", "80")
    b = cli("sample", char_run, "--seed", "3", "--length", "80")
    c = cli("sample", char_run, "--seed", "4", "--length", "80")
    assert a.exit_code == 0 and a.stdout == b.stdout and a.stdout != c.stdout
    assert len(a.stdout.rstrip("\n")) >= 70


def test_greedy_is_deterministic_and_prime_is_kept(char_run: Path) -> None:
    sampler = Sampler(char_run)
    texts = [
        sampler.generate(
            SampleOptions(prime="abc ", length=30, temperature=0, seed=s), lambda i, p: None
        )[0]
        for s in (1, 2)
    ]
    assert texts[0] == texts[1] and texts[0].startswith("abc ")


def test_text_is_streamed_piece_by_piece(char_run: Path) -> None:
    pieces: list[str] = []
    text = Sampler(char_run).generate(
        SampleOptions(length=25, seed=1), lambda i, p: pieces.append(p)
    )[0]
    assert len(pieces) >= 20 and "".join(pieces) == text


def test_several_samples_are_independent(char_run: Path) -> None:
    texts = Sampler(char_run).generate(
        SampleOptions(length=40, seed=1, num_samples=3), lambda i, p: None
    )
    assert len(texts) == 3 and len(set(texts)) == 3


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--temperature", "-1", "--temperature"),
        ("--top-p", "0", "--top-p"),
        ("--top-p", "1.5", "--top-p"),
        ("--top-k", "-2", "--top-k"),
        ("--length", "0", "--length"),
        ("--num-samples", "0", "--num-samples"),
    ],
)
def test_out_of_range_options_are_usage_errors(
    char_run: Path, option: str, value: str, message: str
) -> None:
    result = cli("sample", char_run, option, value)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr


@settings(max_examples=50, deadline=None)
@given(
    logits=st.lists(st.floats(-20, 20), min_size=2, max_size=30),
    top_k=st.integers(0, 35),
    top_p=st.floats(0.01, 1.0),
)
def test_filters_never_keep_excluded_tokens(logits: list[float], top_k: int, top_p: float) -> None:
    x = torch.tensor([logits])
    kept = torch.isfinite(filter_logits(x, top_k, top_p))[0]
    assert kept.any()  # at least the most likely token stays
    order = torch.argsort(x[0], descending=True, stable=True)
    if top_k:
        kth = torch.sort(x[0], descending=True).values[min(top_k, len(logits)) - 1]
        assert not kept[x[0] < kth].any()
    if top_p < 1.0:
        probs = torch.softmax(x[0], dim=0)
        mass_before = torch.cumsum(probs[order], 0) - probs[order]
        excluded = order[mass_before >= top_p + 1e-6]
        assert not kept[excluded].any()


def test_sentence_mode_starts_stops_and_never_says_unknown(word_run: Path) -> None:
    sampler = Sampler(word_run)
    texts = sampler.generate(
        SampleOptions(num_samples=8, seed=1, min_words=3, length=30), lambda i, p: None
    )
    assert len(texts) == 8
    for text in texts:
        assert UNKNOWN_TOKEN not in text and SENTENCE_START not in text and SENTENCE_END not in text
        assert text.endswith("\n") or len(text.split()) >= 30
        # --min-words counts tokens, punctuation included ("on on!" is three)
        assert len(re.findall(r"\w+|[^\w\s]", text)) >= 3, text


def test_sentence_options_need_a_word_model(char_run: Path) -> None:
    with pytest.raises(UsageError, match="word-level model"):
        Sampler(char_run).generate(SampleOptions(sentences=True), lambda i, p: None)
