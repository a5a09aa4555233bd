"""Gradient-vs-lag measurement: hand-computed cases, the real model's unrolled step, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from charlm.diagnostics.gradients import (
    BURN_IN,
    gradient_norms_by_lag,
    measure_model,
    model_step,
)
from charlm.errors import DataError
from charlm.model.network import RNNLanguageModel
from charlm.training.step import layer_grad_norms
from tests.helpers import cli, seeded_model


@pytest.mark.parametrize("w", [0.5, 1.0, 1.3, -0.8])
def test_one_unit_linear_rnn_gradient_at_lag_k_is_w_to_the_k(w):
    # h_t = w h_(t-1) + x_t and loss = h_T, so d loss / d h_(T-k) = w^k for every window.
    weight = torch.tensor(w)

    def step(x, h):
        h = weight * h + x
        return h, [h]

    inputs = [torch.randn(4, 1) for _ in range(12)]
    norms = gradient_norms_by_lag(step, torch.zeros(4, 1), inputs, lambda hs: hs[0].sum(), 10)
    expected = torch.tensor([abs(w) ** k for k in range(1, 11)])
    assert norms.shape == (1, 10, 4)
    for window in range(4):
        torch.testing.assert_close(norms[0, :, window], expected)


def test_too_short_a_window_is_refused():
    with pytest.raises(Exception, match="needs at least 6 steps"):
        gradient_norms_by_lag(
            lambda x, h: (h + x, [h + x]), torch.zeros(1, 1), [torch.zeros(1, 1)] * 5, sum, 5
        )


def _model(cell: str, **kwargs) -> RNNLanguageModel:
    return seeded_model(6, cell=cell, hidden_size=8, embedding_dim=4, **{"layers": 1, **kwargs})


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_unrolled_step_is_the_fused_forward(cell):
    model = _model(cell, layers=2)
    tokens = torch.randint(0, 6, (7, 3))
    _, fused = model(tokens, model.initial_state(3))
    step = model_step(model)
    init = model.initial_state(3)
    if cell == "lstm":
        state = [(init[0][k], init[1][k]) for k in range(2)]
    else:
        state = [init[k] for k in range(2)]
    for x in tokens:
        state, hiddens = step(x, state)
    final_h = fused[0] if cell == "lstm" else fused
    for layer in range(2):
        torch.testing.assert_close(hiddens[layer], final_h[layer], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("a", "leak"), [(0.7, 0.0), (0.0, 0.6), (1.0, 0.0)])
def test_model_profile_decays_by_the_hand_computed_factor(a, leak):
    # Zero input weights and biases keep h at 0, where tanh' = 1: each step back multiplies the
    # gradient by the recurrent Jacobian a*I (plain RNN) or leak*I (leaky units, W_hh = 0).
    model = _model("rnn", leak=leak)
    with torch.no_grad():
        w = model.layer_weights(0)
        for t in (w.w_ih, w.b_ih, w.b_hh):
            t.zero_()
        w.w_hh.copy_(a * torch.eye(8))
    ids = np.random.default_rng(0).integers(0, 6, size=200)
    profile = measure_model(model, ids, max_lag=6, batch=5)
    norms = np.array(profile.grad_norm[0])
    factor = a if leak == 0 else leak
    np.testing.assert_allclose(norms[1:] / norms[:-1], factor, rtol=1e-4)
    assert profile.lags == [1, 2, 3, 4, 5, 6] and profile.cell == "rnn"


def test_profile_has_one_row_per_layer_and_max_bounds_mean():
    model = _model("lstm", layers=2)
    ids = np.random.default_rng(1).integers(0, 6, size=300)
    profile = measure_model(model, ids, max_lag=8, batch=6)
    assert len(profile.grad_norm) == 2 and all(len(row) == 8 for row in profile.grad_norm)
    for mean_row, max_row in zip(profile.grad_norm, profile.grad_norm_max, strict=True):
        assert all(m <= x + 1e-12 for m, x in zip(mean_row, max_row, strict=True))
        assert all(m > 0 for m in mean_row)


def test_layer_grad_norms_are_the_norms_of_each_layers_parameters():
    model = _model("gru", layers=2)
    logits, _ = model(torch.randint(0, 6, (5, 2)), model.initial_state(2))
    logits.sum().backward()
    expected = [
        torch.sqrt(
            sum(p.grad.pow(2).sum() for n, p in model.rnn.named_parameters() if n.endswith(f"l{k}"))
        ).item()
        for k in range(2)
    ]
    assert layer_grad_norms(model) == pytest.approx(expected, rel=1e-6)


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("abcab cabbac\n" * 40, encoding="utf-8")
    return path


@pytest.mark.slow
def test_cli_fresh_model_json_and_plot(text_file: Path, tmp_path: Path):
    png = tmp_path / "g.png"
    args = ["gradients", "--text", str(text_file), "--max-lag", "5", "--batch", "4", "--json"]
    args += ["--set", "model.cell=gru", "--set", "model.hidden_size=8", "--plot", str(png)]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[0])
    assert record["cell"] == "gru" and record["layers"] == 2 and record["lags"] == [1, 2, 3, 4, 5]
    assert len(record["grad_norm"]) == 2 and len(record["grad_norm_max"][1]) == 5
    assert png.read_bytes().startswith(b"\x89PNG")


def test_cli_trained_runs_are_overlaid(text_file: Path, tmp_path: Path):
    from charlm.training.run import train

    runs = []
    for cell in ("rnn", "lstm"):
        run = tmp_path / cell
        overrides = [f"model.cell={cell}", "model.layers=1", "model.hidden_size=8"]
        overrides += ["train.max_steps=2", "train.batch_size=2", "train.seq_len=8"]
        train(run, text=text_file, overrides=overrides, show_progress=False)
        runs.append(str(run))
    result = cli(*["gradients", *runs, "--text", str(text_file), "--max-lag", "4"])
    assert result.exit_code == 0, result.output
    assert "rnn 1x8" in result.stdout and "lstm 1x8" in result.stdout


@pytest.mark.parametrize(
    ("extra", "code"),
    [([], 2), (["--max-lag", "0"], 2), (["--max-lag", "100000"], 1)],
)
def test_cli_errors(text_file: Path, extra, code):
    args = ["gradients", "--set", "model.hidden_size=4"]
    if extra:
        args += ["--text", str(text_file), *extra]
    result = cli(*args)
    assert result.exit_code == code, result.output


def test_targets_place_the_windows_at_chosen_positions():
    model = _model("gru")
    ids = np.random.default_rng(2).integers(0, 6, size=400)
    first = BURN_IN + 4 + 1  # the earliest token a window of max_lag 4 can end on
    one = measure_model(model, ids, max_lag=4, batch=3, targets=np.array([3, first]))
    # Three copies of the single usable window: the mean is the largest.
    assert one.grad_norm[0] == pytest.approx(one.grad_norm_max[0], rel=1e-6)
    other = measure_model(model, ids, max_lag=4, batch=3, targets=np.array([first + 7]))
    assert other.grad_norm[0] != pytest.approx(one.grad_norm[0], rel=1e-3)
    with pytest.raises(DataError, match="no target position"):
        measure_model(model, ids, max_lag=4, batch=3, targets=np.array([first - 1]))
