"""The key-readout probe (`charlm gradients --measure probe`) against known answers, and the
legends of overlaid runs (each run named by its folder, shared folder names told apart)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from charlm.diagnostics.probe import probe_lines, probe_model
from charlm.diagnostics.subjects import run_names
from charlm.tasks.synth import write_task
from tests.helpers import cli, seeded_model, train_tiny, write_corpus

LAG = 6


def _lag_text(folder: Path, keys: int = 4) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """A lag-6 task's valid.txt as ids (vocabulary: its sorted characters), its recalls."""
    write_task(folder, "lag", lag=LAG, keys=keys, alphabet=3, length=500, valid_length=8000)
    text = (folder / "valid.txt").read_text()
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = np.array([vocab[c] for c in text], dtype=np.int64)
    targets = np.flatnonzero(np.r_[False, ids[:-1] == vocab["="]])
    return ids, targets, vocab


def _memoryless_rnn(vocab: int):
    """A tanh RNN with W_hh = 0: its state after a character is a function of that character
    alone, so it holds the key only right after reading it."""
    model = seeded_model(vocab, cell="rnn", layers=1, hidden_size=8, embedding_dim=6)
    with torch.no_grad():
        model.layer_weights(0).w_hh.zero_()
    return model


def test_the_probe_finds_the_key_only_where_the_state_holds_it(tmp_path: Path) -> None:
    ids, targets, vocab = _lag_text(tmp_path)
    model = _memoryless_rnn(len(vocab))
    probe = probe_model(model, ids, targets, vocab["\n"], max_lag=LAG + 1, batch=100)
    accuracy = dict(zip(probe.lags, probe.accuracy[0], strict=True))
    assert probe.lags[0] == 0 and probe.lags[-1] == LAG + 1
    assert accuracy[LAG + 1] == 1.0  # the state right after the key: four distinct points
    # Every later state depends on the last character only (noise or the cue): no key in it.
    assert all(accuracy[k] < 0.5 for k in range(LAG + 1)), accuracy
    assert probe.keys == 4 and probe.windows == 100 and 0.2 < probe.chance < 0.5


def test_a_key_held_but_not_read_out_shows_as_probe_high_and_own_accuracy_low(tmp_path) -> None:
    # W_hh = I with zero input and recurrent weights for every character but the keys: the state
    # keeps what the key wrote through the noise and the cue (tanh(h) != h, but each key's state
    # is still its own point), while the decoder knows nothing (zero weights, so its first
    # choice is a fixed character: its accuracy is that key's share at most).
    ids, targets, vocab = _lag_text(tmp_path)
    model = seeded_model(len(vocab), cell="rnn", layers=1, hidden_size=8, embedding_dim=6)
    keys = [i for c, i in vocab.items() if c.isupper()]
    with torch.no_grad():
        w = model.layer_weights(0)
        w.w_hh.copy_(torch.eye(8))
        w.b_ih.zero_()
        w.b_hh.zero_()
        others = [i for i in range(len(vocab)) if i not in keys]
        model.embedding.weight[others] = 0.0
        model.decoder.weight.zero_()
        model.decoder.bias.zero_()
    probe = probe_model(model, ids, targets, vocab["\n"], max_lag=0, batch=100)
    assert probe.accuracy[0][0] == 1.0
    assert probe.model_accuracy <= probe.chance + 1e-9


def test_fitted_and_held_out_lines_are_disjoint_whole_lines(tmp_path: Path) -> None:
    ids, targets, vocab = _lag_text(tmp_path)
    fit_end, fit_start, held_end, held_start = probe_lines(ids, targets, vocab["\n"], 3, 50, 0)
    assert len(fit_end) == len(held_end) == 50
    assert not set(fit_start) & set(held_start)
    for end, start in zip([*fit_end, *held_end], [*fit_start, *held_start], strict=True):
        assert ids[start - 1] == vocab["\n"] and ids[end - 1] == vocab["="]
        assert end - start == LAG + 2  # from the key to the recall
    too_far = pytest.raises(Exception, match="lines reach 8 steps.*smaller --max-lag")
    with too_far:
        probe_lines(ids, targets, vocab["\n"], LAG + 2, 50, 0)


def test_probe_from_the_cli_writes_its_numbers_and_figure(tmp_path: Path) -> None:
    write_task(tmp_path / "lag", "lag", lag=LAG, keys=4, length=500, valid_length=6000)
    valid, png = tmp_path / "lag" / "valid.txt", tmp_path / "probe.png"
    tiny = ["--set", "model.layers=1", "--set", "model.hidden_size=8"]
    args = ["--fresh", "gru,rnn", *tiny, "--text", valid, "--at", "task", "--measure", "probe"]
    result = cli("gradients", *args, "--max-lag", str(LAG + 1), "--batch", "40", "--json",
                 "--plot", png)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["label"] for r in records] == ["gru", "rnn"]
    assert all(r["measure"] == "probe" and r["windows"] == 40 for r in records)
    assert all(len(r["accuracy"][0]) == len(r["lags"]) == LAG + 2 for r in records)
    assert png.read_bytes().startswith(b"\x89PNG")
    table = cli("gradients", *args, "--max-lag", "2", "--batch", "40")
    assert table.exit_code == 0 and "own accuracy" in table.stdout and "held out" in table.stdout


def test_probe_without_the_task_positions_is_refused_before_writing(tmp_path: Path) -> None:
    text = write_corpus(tmp_path)
    result = cli("gradients", "--fresh", "gru", "--text", text, "--measure", "probe",
                 "--plot", tmp_path / "p.png")  # fmt: skip
    assert result.exit_code == 2 and "--at task" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


def test_run_names_tell_apart_folders_that_share_a_name(tmp_path: Path) -> None:
    runs = [tmp_path / "a" / "gru", tmp_path / "b" / "gru", tmp_path / "c"]
    assert run_names(runs) == ["a/gru", "b/gru", "c"]
    assert run_names([tmp_path / "x", tmp_path / "x"]) == ["x", "x"]  # one run, one name


def test_every_run_in_an_overlay_is_named_by_its_folder(tmp_path: Path) -> None:
    text = write_corpus(tmp_path)
    for name in ("r1", "r2"):
        assert train_tiny(text, "--out", tmp_path / name, steps=10).exit_code == 0
    both = cli("gradients", tmp_path / "r1", tmp_path / "r2", "--text", text, "--max-lag", "3",
               "--batch", "2", "--json")  # fmt: skip
    assert both.exit_code == 0, both.stderr
    # Two runs of one cell: each named the same way (it was "gru (r1)" and a bare "gru").
    assert [json.loads(line)["label"] for line in both.stdout.splitlines()] == [
        "gru (r1)",
        "gru (r2)",
    ]


def test_the_probe_starts_from_the_model_s_own_readout_and_never_fits_worse(monkeypatch) -> None:
    from charlm.diagnostics import probe
    from charlm.diagnostics.probe import fit_readout, own_readout, readout_accuracy

    model = seeded_model(9, cell="lstm", layers=1, hidden_size=5, embedding_dim=3)
    keys = np.array([2, 4, 7])
    weights, bias = own_readout(model, keys, 10)  # an LSTM's state: h (5) then c (5)
    state = torch.randn(6, 10, dtype=torch.float64)
    with torch.no_grad():
        expected = model.output(state[:, :5].float()).double()[:, keys]
    torch.testing.assert_close(state @ weights + bias, expected, rtol=1e-5, atol=1e-5)
    assert not weights[5:].any()  # c: the model's readout does not read it
    # States of wildly different sizes (a relu network's), keyed by which unit is on, and an
    # optimiser cut to one step: from zero it is far off; a start that reads them exactly is
    # kept (or bettered), whatever LBFGS makes of the scaled problem.
    monkeypatch.setattr(probe, "FIT_STEPS", 1)
    rng = np.random.default_rng(0)
    y = torch.as_tensor(rng.integers(0, 3, size=60))
    x = torch.zeros(60, 3, dtype=torch.float64)
    x[torch.arange(60), y] = torch.as_tensor(10.0 ** rng.uniform(0, 15, size=60))
    start = (torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert readout_accuracy(x, y, (*start, torch.tensor(1.0))) == 1.0
    assert readout_accuracy(x, y, fit_readout(x, y, 3)) < 0.9
    assert readout_accuracy(x, y, fit_readout(x, y, 3, start)) == 1.0
