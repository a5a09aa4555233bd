"""Training curves from runs' metrics.jsonl, as a figure (the cells' insides: figures.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from charlm.diagnostics.choices import X_AXES
from charlm.diagnostics.figure_files import check_figure_path, pyplot, save_figure
from charlm.errors import DataError, UsageError
from charlm.rundir.records import read_metrics

_X_KEYS = {"step": "step", "tokens": "tokens", "time": "elapsed_s"}


def _series(
    records: list[dict[str, Any]], kind: str, key: str, x: str = "step"
) -> tuple[list[float], list[float]]:
    x_key = _X_KEYS[x]
    pairs = [
        (r[x_key], r[key])
        for r in records
        if r.get("kind") == kind and r.get(key) is not None and r.get(x_key) is not None
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _read_runs(run_dirs: Sequence[Path], x: str) -> list[list[dict[str, Any]]]:
    if x not in X_AXES:
        raise UsageError(f"--x must be one of {', '.join(X_AXES)} (got '{x}')")
    runs = []
    for run in run_dirs:
        path = Path(run) / "metrics.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: not found; is {run} a run directory (charlm train --out)?")
        records = read_metrics(path)
        scored = [r for r in records if r.get("kind") in ("train", "val")]
        if x != "step" and scored and all(r.get(_X_KEYS[x]) is None for r in scored):
            raise DataError(
                f"{path}: its records have no {_X_KEYS[x]} (a run trained by an "
                "earlier charlm, or resumed from one); plot it with --x step"
            )
        runs.append(records)
    return runs


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's folder name, or its whole path where two runs share a name."""
    names = [Path(r).resolve().name or str(r) for r in run_dirs]
    return [str(r) if names.count(n) > 1 else n for r, n in zip(run_dirs, names, strict=True)]


def _caption(runs: list[list[dict[str, Any]]], labels: list[str], x: str) -> str:
    best = []
    for records, label in zip(runs, labels, strict=True):
        val = [r for r in records if r.get("kind") == "val" and r.get("val_loss") is not None]
        if val:
            top = min(val, key=lambda r: r["val_loss"])
            best.append(f"{label} {top['val_loss']:.4f} (step {top['step']:,})")
    summary = "; best validation loss: " + ", ".join(best) if best else ""
    return f"{len(runs)} run(s) against {X_AXES[x]}{summary}"


def plot_runs(
    run_dirs: Sequence[Path],
    out: Path,
    labels: Sequence[str] | None = None,
    x: str = "step",
) -> Path:
    """Loss, bits per character and gradient norm of runs overlaid, one colour per run (the
    legend names them), against `x`: "step", "tokens" (training tokens) or "time" (seconds of
    training, over resumes); the three panels share that axis, and a caption line says the
    runs' best validation losses."""
    if not run_dirs:
        raise UsageError("give at least one run directory")
    check_figure_path(out)  # before reading anything
    runs = _read_runs(run_dirs, x)
    labels = list(labels) if labels else run_labels(run_dirs)
    plt = pyplot()
    fig, (ax_loss, ax_bpc, ax_grad) = plt.subplots(1, 3, figsize=(13, 4.1), sharex=True)
    for i, (records, label) in enumerate(zip(runs, labels, strict=True)):
        colour = f"C{i % 10}"
        ax_loss.plot(*_series(records, "train", "loss", x), color=colour, alpha=0.5, lw=1)
        ax_loss.plot(
            *_series(records, "val", "val_loss", x), color=colour, marker="o", ms=3, label=label
        )
        bpc = _series(records, "val", "val_bits_per_char", x)
        ax_bpc.plot(*bpc, color=colour, marker="o", ms=3, label=label)
        ax_grad.plot(*_series(records, "train", "grad_norm", x), color=colour, lw=1, label=label)
    xlabel = X_AXES[x]
    ax_loss.set(title="loss (faint: train, dots: validation)", xlabel=xlabel, ylabel="nats/token")
    ax_bpc.set(title="validation bits per character", xlabel=xlabel, ylabel="bits/char")
    ax_grad.set(title="gradient norm before clipping", xlabel=xlabel, ylabel="|g|", yscale="log")
    ax_loss.legend(fontsize=8)
    for ax in (ax_loss, ax_bpc, ax_grad):
        ax.grid(alpha=0.3)
    fig.text(0.5, 0.01, _caption(runs, labels, x), ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return save_figure(fig, out)
