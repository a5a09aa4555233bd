"""Training-curve and gradient plots to PNG, and the diagnostics training writes for them."""

from __future__ import annotations

from pathlib import Path

import pytest

from charlm.diagnostics.curves import plot_runs
from charlm.diagnostics.figures import plot_gradient_profiles
from charlm.diagnostics.gradients import GradientProfile
from charlm.rundir.records import read_metrics
from tests.helpers import cli

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from charlm.training.run import train

    root = tmp_path_factory.mktemp("runs")
    text = root / "text.txt"
    text.write_text("the cat sat on the mat.\n" * 60, encoding="utf-8")
    runs = []
    for cell in ("gru", "rnn"):
        overrides = [f"model.cell={cell}", "model.layers=2", "model.hidden_size=8"]
        overrides += ["train.max_steps=6", "train.eval_every=3", "train.log_every=2"]
        overrides += ["train.batch_size=2", "train.seq_len=8", "optim.clip_norm=0.01"]
        train(root / cell, text=text, overrides=overrides, show_progress=False)
        runs.append(root / cell)
    return runs


def test_training_logs_per_layer_gradient_norms_and_clipping(two_runs: list[Path]):
    records = read_metrics(two_runs[0] / "metrics.jsonl")
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [3, 6]
    for r in val:
        assert len(r["grad_norm_layers"]) == 2 and all(n > 0 for n in r["grad_norm_layers"])
    train = [r for r in records if r["kind"] == "train"]
    # clip_norm=0.01 is far below any real gradient norm: every step is clipped.
    assert all(r["clipped_fraction"] == 1.0 and r["grad_norm"] > 0.01 for r in train)


def test_plot_runs_writes_a_png(two_runs: list[Path], tmp_path: Path):
    out = plot_runs(two_runs, tmp_path / "sub" / "curves.png")
    data = out.read_bytes()
    assert data.startswith(PNG) and 10_000 < len(data) < 200_000


def test_plot_command(two_runs: list[Path], tmp_path: Path):
    out = tmp_path / "c.png"
    result = cli(*["plot", *map(str, two_runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(PNG)


def test_plot_command_errors(two_runs: list[Path], tmp_path: Path):
    missing = cli(*["plot", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert missing.exit_code == 1 and "metrics.jsonl" in missing.output
    not_png = cli(*["plot", str(two_runs[0]), "--out", str(tmp_path / "x.pdf")])
    assert not_png.exit_code == 2 and ".png" in not_png.output


def test_gradient_profiles_plot(tmp_path: Path):
    profiles = [
        GradientProfile("a", "rnn", 1, 4, [1, 2, 3], [[1.0, 0.1, 0.01]], [[2.0, 0.2, 0.02]]),
        GradientProfile("b", "lstm", 2, 4, [1, 2, 3], [[1.0, 0.9, 0.8]] * 2, [[1.0, 1.0, 1.0]] * 2),
    ]
    out = plot_gradient_profiles(profiles, tmp_path / "g.png")
    assert out.read_bytes().startswith(PNG)
