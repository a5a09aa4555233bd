"""charlm gradients for a teacher: the Jacobian mode, fresh overlays, --at task, --checkpoints,
activation histograms and saturation, W_hh singular values (each against a known answer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from charlm.diagnostics.activations import activation_stats, saturated, singular_values
from charlm.diagnostics.gradients import draw_windows, jacobian_norms_by_lag, measure_model
from charlm.tasks.synth import write_task
from tests.helpers import cli, seeded_model, train_tiny, write_corpus

W = torch.tensor([[0.9, 0.5, 0.0], [0.0, 0.8, 0.3], [0.2, 0.0, 1.1]])  # not normal: |W^k| != |W|^k


@pytest.mark.parametrize("norm", ["spectral", "frobenius"])
def test_jacobian_of_a_linear_rnn_is_the_matrix_power(norm: str) -> None:
    inputs = [torch.randn(2, 3) for _ in range(9)]
    norms = jacobian_norms_by_lag(lambda x, h: h @ W.T + x, torch.zeros(2, 3), inputs, 8, norm)
    order = 2 if norm == "spectral" else "fro"
    expected = [np.linalg.norm(np.linalg.matrix_power(W.numpy(), k), order) for k in range(1, 9)]
    assert norms.shape == (8, 2)
    for window in range(2):
        np.testing.assert_allclose(norms[:, window].numpy(), expected, rtol=1e-5)


def test_a_paired_state_counts_both_parts() -> None:
    # (h, c) -> (0.5 h, 0.9 c): the state Jacobian is diag(0.5, .., 0.9, ..), spectral 0.9^k;
    # a Jacobian of h alone would show 0.5^k.
    def step(x, state):
        h, c = state
        return 0.5 * h + x, 0.9 * c

    state = (torch.zeros(3, 4), torch.zeros(3, 4))
    norms = jacobian_norms_by_lag(step, state, [torch.randn(3, 4)] * 7, 6)
    np.testing.assert_allclose(norms[:, 0].numpy(), [0.9**k for k in range(1, 7)], rtol=1e-5)


@pytest.mark.parametrize("a", [0.8, 1.2])
def test_model_jacobian_of_a_linear_rnn_with_w_hh_a_times_i_is_a_to_the_k(a: float) -> None:
    # Zero input weights and biases keep h at 0, where tanh' = 1: J_k = (a I)^k.
    model = seeded_model(6, cell="rnn", layers=2, hidden_size=5, embedding_dim=4)
    with torch.no_grad():
        for layer in range(2):
            w = model.layer_weights(layer)
            for t in (w.w_ih, w.b_ih, w.b_hh):
                t.zero_()
            w.w_hh.copy_(a * torch.eye(5))
    ids = np.random.default_rng(0).integers(0, 6, size=300)
    spectral = measure_model(model, ids, max_lag=10, batch=3, measure="jacobian")
    frob = measure_model(model, ids, max_lag=10, batch=3, measure="jacobian", norm="frobenius")
    powers = np.array([a**k for k in range(1, 11)])
    for layer in range(2):
        np.testing.assert_allclose(spectral.grad_norm[layer], powers, rtol=1e-4)
        np.testing.assert_allclose(frob.grad_norm[layer], np.sqrt(5) * powers, rtol=1e-4)
    assert spectral.measure == "jacobian" and spectral.norm == "spectral"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_model_jacobian_equals_autograd_through_the_unrolled_steps(cell: str) -> None:
    model = seeded_model(6, cell=cell, layers=1, hidden_size=4, embedding_dim=3)
    tokens = torch.randint(0, 6, (6,))
    w, step = model.layer_weights(0), model.cell.step
    xs = model.embedding(tokens[:, None]).detach()  # (6, 1, 3)
    paired = cell == "lstm"
    start = torch.randn(8 if paired else 4) * 0.5

    def through(k: int):
        def f(s):  # the state at T-k -> the state at T, over the last k inputs
            state = (s[None, :4], s[None, 4:]) if paired else s[None]
            for x in xs[len(xs) - k :]:
                state = step(w, x, state)
            return torch.cat(state, dim=1)[0] if paired else state[0]

        return f

    norms = jacobian_norms_by_lag(
        lambda x, s: step(w, x, s),
        (start[None, :4], start[None, 4:]) if paired else start[None],
        list(xs),
        5,
    )
    # s_(T-k) for the check: run the first len - k inputs from the start state.
    for k in range(1, 6):
        state = (start[None, :4], start[None, 4:]) if paired else start[None]
        for x in xs[: len(xs) - k]:
            state = step(w, x, state)
        s = torch.cat(state, dim=1)[0] if paired else state[0]
        jac = torch.autograd.functional.jacobian(through(k), s.detach())
        assert norms[k - 1, 0].item() == pytest.approx(
            torch.linalg.matrix_norm(jac, 2).item(), rel=1e-4
        )


def test_windows_at_the_task_start_at_the_line_and_end_at_the_recall(tmp_path: Path) -> None:
    write_task(tmp_path, "lag", lag=8, keys=4, length=500, valid_length=2000, seed=3)
    text = (tmp_path / "valid.txt").read_text()
    ids = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
    targets = np.flatnonzero(np.r_[False, ids[:-1] == ord("=")])
    ends, starts = draw_windows(ids, 9, 20, 0, targets, ord("\n"))
    for end, start in zip(ends, starts, strict=True):
        assert text[end - 1] == "=" and text[start - 1] == "\n" and text[start].isupper()
        assert end - start == 8 + 2  # key, 8 noise letters, cue: the key is 9 steps back
    with pytest.raises(Exception, match="at most 9 steps.*--max-lag 9 or less"):
        draw_windows(ids, 10, 20, 0, targets, ord("\n"))


def _fresh(*args: str | Path):
    tiny = [
        "--set",
        "model.layers=1",
        "--set",
        "model.hidden_size=8",
        "--set",
        "model.embedding_dim=4",
    ]
    return cli("gradients", *args, *tiny, "--batch", "4", "--json")


def test_fresh_cells_are_overlaid_with_their_names(tmp_path: Path) -> None:
    text = write_corpus(tmp_path)
    png = tmp_path / "g.png"
    result = _fresh("--fresh", "rnn,gru,lstm,irnn", "--text", text, "--max-lag", "5", "--plot", png)
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["label"] for r in records] == ["rnn", "gru", "lstm", "irnn"]
    assert [r["cell"] for r in records] == ["rnn", "gru", "lstm", "rnn"]
    assert all(r["model_seed"] == 1 and r["windows"] == 4 for r in records)
    assert records[0]["grad_norm"] != records[1]["grad_norm"]
    assert png.read_bytes().startswith(b"\x89PNG")


def test_a_bad_fresh_name_or_figure_name_is_refused_before_writing(tmp_path: Path) -> None:
    text = write_corpus(tmp_path)
    bad = _fresh("--fresh", "rnn,grux", "--text", text, "--plot", tmp_path / "g.png")
    assert bad.exit_code == 2 and "'grux' is not a cell or preset" in bad.stderr
    docx = _fresh("--fresh", "rnn", "--text", text, "--histograms", tmp_path / "h.docx")
    assert docx.exit_code == 2 and "h.docx" in docx.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


def test_at_task_measures_at_the_recall_and_refuses_a_text_without_a_task(tmp_path: Path) -> None:
    write_task(tmp_path / "lag", "lag", lag=6, keys=4, length=500, valid_length=3000)
    valid = tmp_path / "lag" / "valid.txt"
    at_task = _fresh("--fresh", "gru", "--text", valid, "--max-lag", "7", "--at", "task")
    at_random = _fresh("--fresh", "gru", "--text", valid, "--max-lag", "7")
    assert at_task.exit_code == at_random.exit_code == 0, at_task.stderr
    task, rand = json.loads(at_task.stdout), json.loads(at_random.stdout)
    assert task["at"] == "task" and rand["at"] == "random"
    assert task["grad_norm"] != rand["grad_norm"]
    too_far = _fresh("--fresh", "gru", "--text", valid, "--max-lag", "8", "--at", "task")
    assert too_far.exit_code == 1 and "--max-lag 7 or less" in too_far.stderr
    plain = _fresh("--fresh", "gru", "--text", write_corpus(tmp_path), "--at", "task")
    assert plain.exit_code == 1 and "truth.json" in plain.stderr


def test_checkpoints_give_one_curve_per_kept_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    keep = ("--set", "train.keep_checkpoints=10")  # TINY saves every 10 steps
    assert train_tiny(write_corpus(tmp_path), "--out", run, *keep, steps=30).exit_code == 0
    text = write_corpus(tmp_path, name="t.txt")
    every = cli("gradients", run, "--text", text, "--max-lag", "4", "--batch", "3", "--json",
                "--checkpoints", "all", "--measure", "jacobian")  # fmt: skip
    assert every.exit_code == 0, every.stderr
    records = [json.loads(line) for line in every.stdout.splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30]
    assert [r["label"] for r in records] == [f"gru (run) step {k}" for k in (10, 20, 30)]
    assert records[0]["grad_norm"] != records[2]["grad_norm"]  # training moved the weights
    two = cli(
        "gradients", run, "--text", text, "--max-lag", "4", "--json", "--checkpoints", "10,30"
    )
    assert [json.loads(line)["step"] for line in two.stdout.splitlines()] == [10, 30]
    missing = cli("gradients", run, "--text", text, "--checkpoints", "7")
    assert missing.exit_code == 1 and "kept: 10, 20, 30" in missing.stderr


def test_saturation_counts_the_flat_regions() -> None:
    assert saturated(np.array([-0.995, -0.5, 0.0, 0.98, 0.999]), "tanh") == pytest.approx(0.4)
    assert saturated(np.array([0.001, 0.5, 0.995, 0.02]), "sigmoid") == pytest.approx(0.5)
    assert saturated(np.array([0.0, 0.0, 3.0, 0.1]), "relu") == pytest.approx(0.5)


def test_activation_stats_see_saturated_and_open_gates() -> None:
    # A GRU whose update-gate bias is +20 (z = 1: it copies its state) and reset-gate bias
    # 0 with zero weights (r = 0.5 exactly): z is all saturated, r none.
    model = seeded_model(6, cell="gru", layers=1, hidden_size=4, embedding_dim=3)
    with torch.no_grad():
        w = model.layer_weights(0)
        w.w_ih[:8].zero_()
        w.w_hh[:8].zero_()
        w.b_ih[:8] = 0.0
        w.b_hh[:4], w.b_hh[4:8] = 0.0, 20.0
    ids = np.random.default_rng(0).integers(0, 6, size=300)
    stats = activation_stats(model, ids, steps=5, batch=3)
    shares = stats.saturation()[0]
    assert shares["z"] == 1.0 and shares["r"] == 0.0
    assert set(stats.values[0]) == {"r", "z", "n"} and stats.values[0]["r"].size == 3 * 6 * 4


def test_singular_values_of_a_known_w_hh() -> None:
    model = seeded_model(6, cell="lstm", layers=1, hidden_size=3, embedding_dim=3)
    q, _ = torch.linalg.qr(torch.randn(3, 3))
    known = {"i": [3.0, 2.0, 1.0], "f": [1.0, 1.0, 1.0], "g": [5.0, 0.5, 0.1], "o": [2.0, 2.0, 0.0]}
    with torch.no_grad():
        w_hh = model.layer_weights(0).w_hh
        for block, values in enumerate(known.values()):
            w_hh[3 * block : 3 * block + 3] = (
                q @ torch.diag(torch.tensor(values, dtype=torch.float)) @ q.T
            )
    spectra = singular_values(model)
    assert list(spectra[0]) == ["i", "f", "g", "o"]
    # The block is a float32 product and its singular values are float32: each comes out off
    # by a few roundings of the block's largest value (Weyl: |d sigma| <= |dW|_2), on any CPU,
    # and the matmul and SVD kernels (so which roundings) differ between CPU families. So the
    # tolerance scales with the largest value: 1e-5 of it is ~10x that bound. A relative 1e-5
    # on the 0.1 beside a 5 was 2 float32 steps of 5, and this machine already used a fifth of
    # it. Any real error (a wrong block, a wrong spectrum) is off by far more.
    for name, values in known.items():
        np.testing.assert_allclose(spectra[0][name], values, rtol=0, atol=1e-5 * max(values))


def test_histograms_and_singular_values_from_the_cli(tmp_path: Path) -> None:
    text = write_corpus(tmp_path)
    h, s = tmp_path / "h.png", tmp_path / "s.png"
    result = _fresh("--fresh", "gru,irnn", "--text", text, "--max-lag", "5", "--histograms", h,
                    "--singular-values", s)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    saturation = [r for r in lines if "saturation" in r]
    assert [r["label"] for r in saturation] == ["gru", "irnn"]
    assert set(saturation[0]["saturation"][0]) == {"r", "z", "n"}
    spectra = {r["label"]: r["singular_values"] for r in lines if "singular_values" in r}
    np.testing.assert_allclose(spectra["irnn"][0]["W_hh"], [1.0] * 8, rtol=1e-6)  # identity
    assert h.read_bytes().startswith(b"\x89PNG") and s.read_bytes().startswith(b"\x89PNG")
