"""PNG figures: training curves from runs' metrics.jsonl (the cells' insides: cellplots.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from charlm.errors import DataError, UsageError
from charlm.metrics import read_metrics


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"{out}: the figure is written as PNG; give a name ending in .png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    _pyplot().close(fig)
    return out


def _series(records: list[dict[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    pairs = [
        (r["step"], r[key]) for r in records if r.get("kind") == kind and r.get(key) is not None
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_runs(run_dirs: Sequence[Path], out: Path, labels: Sequence[str] | None = None) -> Path:
    """Loss, bits per character and gradient norm against step, one colour per run."""
    if not run_dirs:
        raise UsageError("give at least one run directory")
    runs = []
    for run in run_dirs:
        path = Path(run) / "metrics.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: not found; is {run} a run directory (charlm train --out)?")
        runs.append(read_metrics(path))
    labels = list(labels) if labels else [Path(r).name or str(r) for r in run_dirs]
    plt = _pyplot()
    fig, (ax_loss, ax_bpc, ax_grad) = plt.subplots(1, 3, figsize=(13, 3.8))
    for i, (records, label) in enumerate(zip(runs, labels, strict=True)):
        colour = f"C{i % 10}"
        ax_loss.plot(*_series(records, "train", "loss"), color=colour, alpha=0.5, lw=1)
        ax_loss.plot(
            *_series(records, "val", "val_loss"), color=colour, marker="o", ms=3, label=label
        )
        ax_bpc.plot(*_series(records, "val", "val_bits_per_char"), color=colour, marker="o", ms=3)
        ax_grad.plot(*_series(records, "train", "grad_norm"), color=colour, lw=1)
    ax_loss.set(title="loss (faint: train, dots: validation)", xlabel="step", ylabel="nats/token")
    ax_bpc.set(title="validation bits per character", xlabel="step", ylabel="bits/char")
    ax_grad.set(title="gradient norm before clipping", xlabel="step", ylabel="|g|", yscale="log")
    ax_loss.legend(fontsize=8)
    for ax in (ax_loss, ax_bpc, ax_grad):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)
