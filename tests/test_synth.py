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


@pytest.mark.parametrize(
    ("lag", "keys", "alphabet", "length"), [(1, 2, 3, 1), (4, 3, 2, 3), (9, 8, 8, 5)]
)
def test_copy_truth_is_string_plus_noise_entropy_over_line_length(lag, keys, alphabet, length):
    _, valid, truth = make_task(
        "copy", lag=lag, keys=keys, alphabet=alphabet, copy_length=length, length=100,
        valid_length=600,
    )  # fmt: skip
    width = 2 * length + lag + 2
    expected = (length * math.log(keys) + lag * math.log(alphabet)) / width
    assert truth["best_loss"] == pytest.approx(expected, rel=1e-12)
    assert truth["recall_chance_loss"] == pytest.approx(math.log(keys))  # memoryless baseline
    assert truth["no_recall_excess"] == pytest.approx(length * math.log(keys) / width)
    lines = valid.split("\n")
    assert valid.endswith("\n") and lines[-1] == "" and len(valid) == truth["valid_chars"]
    for line in lines[:-1]:  # whole lines from the first character on
        string, rest = line[:length], line[length:]
        assert len(line) == width - 1 and rest == rest[:lag] + "=" + string
        assert string.isupper() and rest[:lag].islower()
        assert set(string) <= set("ABCDEFGH"[:keys])


def test_copy_is_scored_at_the_copied_string_and_stages_like_the_lag_task(tmp_path):
    single = write_task(
        tmp_path / "one", "copy", lag=3, copy_length=4, length=300, valid_length=200
    )
    text = (tmp_path / "one" / "train.txt").read_text()
    mask = np.fromfile(tmp_path / "one" / "train.mask", dtype=np.uint8)
    scored = [i for i, b in enumerate(mask) if b & 1]
    cues = [i for i, c in enumerate(text) if c == "="]
    assert scored == [c + j for c in cues for j in range(1, 5)]
    assert single["score"]["groups"] == {"1": "copy3"} and set(mask[scored] >> 1) == {1}
    staged = write_task(tmp_path / "st", "copy", lags=[2, 5], heldout_lags=[8], copy_length=2,
                        length=200, valid_length=150)  # fmt: skip
    assert staged["score"]["curriculum"] == ["lag2", "lag5"] and staged["score"]["heldout"] == [
        "lag8"
    ]
    valid = (tmp_path / "st" / "valid.txt").read_text()
    assert {len(line) - 2 * 2 - 1 for line in valid.split("\n")[:-1]} == {2, 5, 8}
    assert [s["lag"] for s in staged["stages"]] == [2, 5, 8]
    assert staged["settings"]["copy_length"] == 2 and staged["recall_chance_loss"] == math.log(8)


def test_a_bad_copy_length_is_refused_before_writing(tmp_path):
    result = cli("data", "synth", "copy", "--copy-length", "0", "--out", tmp_path / "c")
    assert result.exit_code == 2 and "--copy-length must be in [1, 100]" in result.stderr
    assert not (tmp_path / "c").exists()


def test_a_staged_copy_task_trains_with_its_curriculum_and_groups(tmp_path):
    from tests.helpers import train_tiny

    write_task(tmp_path / "c", "copy", lags=[2, 4], heldout_lags=[6], copy_length=2, keys=3,
               length=2000, valid_length=300)  # fmt: skip
    run = tmp_path / "run"
    result = train_tiny(tmp_path / "c" / "train.txt", "--val-file", tmp_path / "c" / "valid.txt",
                        "--config", "lag-curriculum", "--out", run, steps=20)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    vals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [v for v in vals if v["kind"] == "val"]
    assert set(vals[-1]["groups"]) == {"lag2", "lag4", "lag6"} and vals[-1]["stage"] == "lag2"
    assert vals[-1]["groups"]["lag6"]["positions"] == 2 * (300 // (2 * 2 + 6 + 2))
