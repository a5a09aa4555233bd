"""Synthetic tasks: the truth values against hand-derived formulas, and like-for-like scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from charlm.data.batching import Cursor, StreamBatcher
from charlm.data.prepare import PrepareSettings, load_prepared, prepare
from charlm.tasks.synth import build_automaton, make_task, optimal_stream_loss, write_task
from tests.helpers import cli


@pytest.mark.parametrize(("lag", "keys", "alphabet"), [(1, 2, 3), (5, 8, 8), (30, 4, 2)])
def test_lag_truth_is_key_plus_noise_entropy_over_line_length(lag, keys, alphabet):
    _, valid, truth = make_task(
        "lag", lag=lag, keys=keys, alphabet=alphabet, length=100, valid_length=500
    )
    expected = (math.log(keys) + lag * math.log(alphabet)) / (lag + 4)
    assert truth["best_loss"] == pytest.approx(expected, rel=1e-9)
    assert truth["best_bits_per_char"] == pytest.approx(expected / math.log(2))
    assert truth["no_recall_excess"] == pytest.approx(math.log(keys) / (lag + 4))
    # Every full line is key, noise, cue, the same key.
    for line in valid.split("\n")[1:-1]:
        assert len(line) == lag + 3 and line[0] == line[-1] and line[-2] == "="
        assert line[0].isupper() and line[1:-2].islower()


@pytest.mark.parametrize(("depth", "types", "p"), [(1, 1, 0.5), (4, 2, 0.5), (3, 3, 0.3)])
def test_brackets_truth_matches_the_birth_death_chain(depth, types, p):
    # Depth is a birth-death chain: pi_(d+1) = pi_d * p/(1-p) below the top, pi_D = pi_(D-1) * p.
    # Every depth below D has entropy h(p) + p ln(types); at depth D the closer is certain.
    weights = [(p / (1 - p)) ** d for d in range(depth)]
    weights.append(weights[-1] * p)
    pi_top = weights[-1] / sum(weights)
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    expected = (1 - pi_top) * (h + p * math.log(types))
    _, valid, truth = make_task(
        "brackets", depth=depth, types=types, open_prob=p, length=100, valid_length=2000
    )
    assert truth["best_loss"] == pytest.approx(expected, rel=1e-9)
    for line in valid.split("\n")[1:-1]:  # complete lines are balanced and never too deep
        stack = []
        for ch in line:
            if ch in "([{<":
                stack.append(ch)
                assert len(stack) <= depth
            else:
                assert "([{<"[")]}>".index(ch)] == stack.pop()
        assert not stack


def test_markov_truth_matches_the_two_state_formula():
    _, _, truth = make_task("markov", order=1, alphabet=2, length=100, valid_length=100, seed=3)
    table = np.array(truth["settings"]["table"])
    a, b = table[0, 1], table[1, 0]  # P(a -> b), P(b -> a)
    pi = np.array([b, a]) / (a + b)
    rows = -(table * np.log(table)).sum(axis=1)
    assert truth["best_loss"] == pytest.approx(float(pi @ rows), rel=1e-9)


@pytest.mark.slow
def test_optimal_predictor_reaches_the_entropy_rate_on_a_long_sample():
    for task, options in [("lag", {"lag": 6}), ("brackets", {"depth": 4}), ("markov", {})]:
        _, valid, truth = make_task(task, length=10, valid_length=20_000, **options)
        automaton = build_automaton(task, truth["settings"])
        assert optimal_stream_loss(automaton, valid, 1) == pytest.approx(
            truth["best_loss"], abs=0.03
        )


def test_stream_scoring_cuts_the_text_exactly_as_charlm_evaluates():
    # An order-1 source is predicted optimally from one character of history, so the optimum
    # for any stream count is the mean -log P(target | input) over the very pairs charlm scores.
    _, valid, truth = make_task("markov", order=1, alphabet=3, length=10, valid_length=1001)
    automaton = build_automaton("markov", truth["settings"])
    table = np.array(truth["settings"]["table"])
    ids = np.array(["abc".index(c) for c in valid])
    for streams in (1, 7, 32):
        batcher = StreamBatcher(ids, streams, seq_len=len(ids))
        x, y, _ = batcher.batch(Cursor())
        expected = float(-np.log(table[x, y]).mean())
        got = optimal_stream_loss(automaton, valid, streams)
        assert got == pytest.approx(expected, rel=1e-9)
    assert truth["valid_optimal_loss"]["32"] == pytest.approx(
        optimal_stream_loss(automaton, valid, 32)
    )


def test_files_are_what_charlm_reads(tmp_path: Path):
    truth = write_task(tmp_path / "t", "lag", lag=3, length=3000, valid_length=800)
    valid = (tmp_path / "t" / "valid.txt").read_text(encoding="utf-8")
    assert len(valid) == truth["valid_chars"] == 800
    settings = PrepareSettings(level="char", val_file=tmp_path / "t" / "valid.txt")
    prepare(tmp_path / "t" / "train.txt", tmp_path / "data", settings, show_progress=False)
    data = load_prepared(tmp_path / "data")
    # One id per character, nothing added or dropped at the ends, no unknown characters.
    assert len(data.val_ids) == 800 and len(data.train_ids) == 3000
    vocab = data.tokenizer.get_vocab()
    assert set(truth["alphabet"]) <= set(vocab)
    assert 0 not in set(np.asarray(data.val_ids).tolist())  # id 0 is the unknown character


def test_same_seed_same_files_other_seed_other_files():
    a = make_task("brackets", length=500, valid_length=100, seed=4)
    b = make_task("brackets", length=500, valid_length=100, seed=4)
    c = make_task("brackets", length=500, valid_length=100, seed=5)
    assert a == b and a[0] != c[0]


def test_cli_writes_the_task(tmp_path: Path):
    out = tmp_path / "br"
    result = cli(
        *[
            "data",
            "synth",
            "brackets",
            "--out",
            str(out),
            "--length",
            "400",
            "--valid-length",
            "200",
        ],
    )
    assert result.exit_code == 0, result.output
    truth = json.loads((out / "truth.json").read_text())
    assert truth["task"] == "brackets" and truth["best_loss"] > 0
    assert len((out / "train.txt").read_text()) == 400


@pytest.mark.parametrize(
    "args",
    [
        ["lag", "--lag", "0"],
        ["lag", "--lag", "1000"],  # too many states for the exact solve
        ["markov", "--alphabet", "1"],
        ["parity"],
    ],
)
def test_cli_refuses_bad_settings_with_exit_2(tmp_path: Path, args):
    result = cli(*["data", "synth", *args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert not (tmp_path / "x" / "truth.json").exists()
