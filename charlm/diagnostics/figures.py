"""Figures of the inside of the cells: norm against lag, activation histograms, W_hh spectra."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from charlm.diagnostics.figure_files import pyplot, save_figure
from charlm.diagnostics.gradients import BURN_IN
from charlm.errors import UsageError

if TYPE_CHECKING:
    from charlm.diagnostics.activations import ActivationStats
    from charlm.diagnostics.gradients import GradientProfile

STYLES = ["-", "--", "-.", ":"]


def gradient_caption(profiles: Sequence[GradientProfile]) -> str:
    """One line: what was measured, at which lags and positions, with which seeds."""
    p = profiles[0]
    if p.measure == "jacobian":
        what = f"{p.norm} norm of the state Jacobian d s_T / d s_(T-k) (LSTMs: s = (h, c))"
    else:
        what = "norm of the loss gradient d loss_T / d h_(T-k) (cross-entropy of the last step)"
    where = (
        "windows ending at the task's scored position, each run from its line's start"
        if p.at == "task"
        else f"windows at random positions after a {BURN_IN}-step burn-in"
    )
    seeds = sorted({q.model_seed for q in profiles if q.model_seed is not None})
    weights = f"; fresh weights seed {', '.join(map(str, seeds))}" if seeds else ""
    return (
        f"{what}; lags 1..{p.lags[-1]}; mean over {p.windows} {where} (seed {p.seed}){weights}; "
        f"dotted: the largest window"
    )


def plot_gradient_profiles(
    profiles: Sequence[GradientProfile],
    out: Path,
    labels: Sequence[str] | None = None,
    caption: str | None = None,
) -> Path:
    """The norm against lag on a log scale, one panel per layer (shared axes), one colour per
    model (dotted: the largest window), a caption line under the figure."""
    if not profiles:
        raise UsageError("no gradient profiles to plot")
    labels = list(labels) if labels else [p.label or p.cell or p.source for p in profiles]
    layers = max(p.layers for p in profiles)
    plt = pyplot()
    fig, axes = plt.subplots(
        1, layers, figsize=(6.5 + 4 * (layers - 1), 4.6), sharex=True, sharey=True, squeeze=False
    )
    for i, (profile, label) in enumerate(zip(profiles, labels, strict=True)):
        colour = f"C{i % 10}"
        for layer in range(profile.layers):
            ax = axes[0][layer]
            ax.plot(profile.lags, profile.grad_norm[layer], color=colour, label=label)
            ax.plot(profile.lags, profile.grad_norm_max[layer], color=colour, ls=":", lw=0.8)
    measure = profiles[0].measure
    ylabel = "|d s_T / d s_(T-k)|" if measure == "jacobian" else "|d loss_T / d h_(T-k)|"
    for layer, ax in enumerate(axes[0]):
        title = "Jacobian through k steps" if measure == "jacobian" else "gradient k steps back"
        ax.set(yscale="log", xlabel="lag k (steps back from the last step)", title=title)
        if layers > 1:
            ax.set_title(f"{title}, layer {layer + 1}")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=9)
    return _captioned(fig, caption or gradient_caption(profiles), out)


def _captioned(fig: Any, caption: str, out: Path) -> Path:
    import textwrap

    lines = textwrap.wrap(caption, width=int(fig.get_figwidth() * 15))
    fig.tight_layout(rect=(0, 0.035 * len(lines) + 0.02, 1, 1))
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=8, va="bottom", ha="left", color="0.25")
    return save_figure(fig, out)


_RANGES = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0), "relu": (0.0, None)}


def plot_activations(stats: Sequence[ActivationStats], out: Path, caption: str) -> Path:
    """Histograms of each model's squashed values (first layer), one row per model, one column
    per gate; each title gives the share saturated (|tanh| > 0.99, sigmoid < 0.01 or > 0.99)
    or off (relu at 0). Columns of the same kind share the x axis range."""
    if not stats:
        raise UsageError("no activations to plot")
    cols = max(len(s.kinds) for s in stats)
    plt = pyplot()
    fig, axes = plt.subplots(
        len(stats), cols, figsize=(2.6 * cols + 0.6, 1.9 * len(stats) + 0.9), squeeze=False
    )
    for row, s in enumerate(stats):
        shares = s.saturation()[0]
        for col, (name, kind) in enumerate(s.kinds.items()):
            ax, values = axes[row][col], s.values[0][name]
            low, high = _RANGES[kind]
            high = high if high is not None else max(float(values.max()), 1e-6)
            ax.hist(values, bins=40, range=(low, high), color=f"C{row % 10}")
            word = "off" if kind == "relu" else "saturated"
            ax.set_title(f"{s.label}: {name} ({kind}) {100 * shares[name]:.0f}% {word}", fontsize=8)
            ax.set_yticks([])
        for col in range(len(s.kinds), cols):
            axes[row][col].remove()
    return _captioned(fig, caption, out)


def plot_singular_values(
    spectra: Sequence[tuple[str, list[dict[str, list[float]]]]], out: Path, caption: str
) -> Path:
    """The singular values of each block of W_hh, largest first, one panel per layer (shared
    axes), one colour per model and one line style per block."""
    if not spectra:
        raise UsageError("no models to plot")
    layers = max(len(layers) for _, layers in spectra)
    plt = pyplot()
    fig, axes = plt.subplots(
        1, layers, figsize=(6.5 + 4 * (layers - 1), 4.4), sharex=True, sharey=True, squeeze=False
    )
    for i, (label, per_layer) in enumerate(spectra):
        for layer, blocks in enumerate(per_layer):
            for j, (block, values) in enumerate(blocks.items()):
                name = label if len(blocks) == 1 else f"{label} {block}"
                index = np.arange(1, len(values) + 1)
                axes[0][layer].plot(index, values, color=f"C{i % 10}", ls=STYLES[j % 4], label=name)
    for layer, ax in enumerate(axes[0]):
        ax.set(
            yscale="log",
            xlabel="index (largest first)",
            title=f"W_hh singular values, layer {layer + 1}",
        )
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("singular value")
    axes[0][0].legend(fontsize=8, ncol=2)
    return _captioned(fig, caption, out)


def probe_caption(probes: Sequence[Any]) -> str:
    """One line: what the key-readout probe measured, on how many lines, with which seed."""
    p = probes[0]
    return (
        "held-out accuracy of a linear readout (multinomial logistic regression) of the layer's "
        "state k steps before the task's scored position, fitted to each line's key (its first "
        f"character) on {p.windows} lines and scored on {p.windows} others (split seed {p.seed}), "
        "each line run from its start; star at k = 0: the model's own accuracy there; grey: "
        "1 / keys"
    )


def plot_probe_profiles(probes: Sequence[Any], out: Path, caption: str | None = None) -> Path:
    """The probe's held-out accuracy against k, one panel per layer (shared axes), one colour
    per model, the model's own accuracy as a star at k = 0."""
    if not probes:
        raise UsageError("no probes to plot")
    layers = max(p.layers for p in probes)
    plt = pyplot()
    fig, axes = plt.subplots(
        1, layers, figsize=(6.5 + 4 * (layers - 1), 4.6), sharex=True, sharey=True, squeeze=False
    )
    for i, probe in enumerate(probes):
        colour = f"C{i % 10}"
        for layer in range(probe.layers):
            ax = axes[0][layer]
            ax.plot(probe.lags, probe.accuracy[layer], color=colour, label=probe.label)
            ax.plot([0], [probe.model_accuracy], "*", color=colour, ms=11, mec="k", mew=0.5)
    for layer, ax in enumerate(axes[0]):
        ax.axhline(1 / max(p.keys for p in probes), color="grey", ls="--", lw=1)
        title = "key decoded from the state k steps before the recall"
        ax.set(xlabel="k (steps before the scored position)", ylim=(0, 1.03), title=title)
        if layers > 1:
            ax.set_title(f"{title}, layer {layer + 1}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out accuracy")
    axes[0][0].legend(fontsize=9)
    return _captioned(fig, caption or probe_caption(probes), out)
