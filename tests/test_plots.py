"""Training-curve and gradient plots (PNG, SVG, PDF, ...), and the diagnostics training writes
for them."""

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
    not_png = cli(*["plot", str(two_runs[0]), "--out", str(tmp_path / "x.docx")])
    assert not_png.exit_code == 2 and ".png" in not_png.output


def test_gradient_profiles_plot(tmp_path: Path):
    profiles = [
        GradientProfile("a", "rnn", 1, 4, [1, 2, 3], [[1.0, 0.1, 0.01]], [[2.0, 0.2, 0.02]]),
        GradientProfile("b", "lstm", 2, 4, [1, 2, 3], [[1.0, 0.9, 0.8]] * 2, [[1.0, 1.0, 1.0]] * 2),
    ]
    out = plot_gradient_profiles(profiles, tmp_path / "g.png")
    assert out.read_bytes().startswith(PNG)


# -- the figure's format is its suffix: any that matplotlib writes, the others refused ---------

MAGIC = {".png": PNG, ".svg": b"<?xml", ".pdf": b"%PDF", ".eps": b"%!PS", ".jpg": b"\xff\xd8"}


@pytest.mark.parametrize("suffix", [".svg", ".pdf", ".eps", ".jpg", ".PNG"])
def test_plot_writes_the_format_its_suffix_names(
    two_runs: list[Path], tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"curves{suffix}"
    result = cli("plot", *two_runs, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == f"wrote {out}"
    assert out.read_bytes().startswith(MAGIC[suffix.lower()])
    if suffix == ".svg":
        assert b"<svg" in out.read_bytes()[:1000]


def refusal(path: Path) -> str:
    from charlm.diagnostics.figure_files import figure_formats

    formats = figure_formats()
    assert formats[:3] == ("png", "svg", "pdf") and "eps" in formats
    given = f"'{path.suffix.lower()}'" if path.suffix else "no suffix"
    return (
        f"charlm: error: {path}: {given} is not a figure format matplotlib writes; give a name "
        "ending in " + ", ".join(f".{f}" for f in formats)
    )


@pytest.mark.parametrize("name", ["curves.docx", "curves", "curves.png.txt"])
def test_plot_refuses_a_suffix_matplotlib_does_not_write_in_one_line(
    two_runs: list[Path], tmp_path: Path, name: str
) -> None:
    out = tmp_path / name
    result = cli("plot", *two_runs, "--out", out)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [refusal(out)]
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary


def test_gradients_figures_take_the_same_formats(tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("abcab cabbac\n" * 40, encoding="utf-8")
    tiny = ["--set", "model.layers=1", "--set", "model.hidden_size=8", "--max-lag", "3"]
    args = ["gradients", "--text", text, *tiny, "--batch", "2", "--fresh", "gru"]
    svg, pdf, bad = tmp_path / "g.svg", tmp_path / "h.pdf", tmp_path / "s.docx"
    refused = cli(*args, "--plot", svg, "--histograms", pdf, "--singular-values", bad)
    assert refused.exit_code == 2
    assert refused.stderr.strip().splitlines() == [refusal(bad)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.txt"]  # refused before drawing
    result = cli(*args, "--plot", svg, "--histograms", pdf)
    assert result.exit_code == 0, result.stderr
    assert svg.read_bytes().startswith(b"<?xml") and pdf.read_bytes().startswith(b"%PDF")
