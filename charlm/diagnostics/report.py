"""The `charlm gradients` report: the subjects measured, the numbers printed, the figures drawn."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from charlm.data.prepare import read_text
from charlm.diagnostics import figures
from charlm.diagnostics.activations import activation_stats
from charlm.diagnostics.activations import singular_values as svs
from charlm.diagnostics.choices import MEASURES, NORMS, POSITIONS, PROBE
from charlm.diagnostics.figure_files import check_figure_path
from charlm.diagnostics.gradients import WINDOWS, GradientProfile, measure_model
from charlm.diagnostics.probe import PROBE_LINES, ProbeProfile, probe_model
from charlm.diagnostics.subjects import Subject, fresh_subjects, run_subjects, task_targets
from charlm.errors import UsageError
from charlm.rundir.names import check_which
from charlm.system.device import resolve_device

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    """The default `say`: one line on stderr, as the CLI writes its messages."""
    print(message, file=sys.stderr, flush=True)


def gradient_report(
    runs: Sequence[Path] | None,
    text: Path | None,
    *,
    config: Path | None = None,
    overrides: Sequence[str] | None = None,
    fresh: str | None = None,
    at: str = "random",
    measure: str = "loss",
    norm: str = "spectral",
    checkpoints: str | None = None,
    max_lag: int = 50,
    batch: int | None = None,
    seed: int = 0,
    json_out: bool = False,
    plot: Path | None = None,
    histograms: Path | None = None,
    singular_values: Path | None = None,
    device: str = "cpu",
    which: str = "best",
    say: Say = _stderr,
) -> list[GradientProfile]:
    """All of `charlm gradients`: check the options, measure each subject on windows of `text`,
    print the profiles on stdout (a table, or JSON lines), draw the figures asked for.

    `runs` are run directories; without them, `fresh` names fresh models (cells or presets,
    comma-separated) built from `config` and `overrides`. `measure` probe: the key-readout
    probe (diagnostics/probe.py) instead of a norm. `batch`: windows averaged over (default
    WINDOWS), for the probe the held-out lines (default PROBE_LINES; as many again fitted on).
    Messages for people go to `say`.
    """
    figures_out = [p for p in (plot, histograms, singular_values) if p is not None]
    check_gradient_options(runs, text, config, overrides, fresh, at, measure, norm, figures_out)
    assert text is not None
    raw = read_text(text, csv_column=None)
    subjects = gradient_subjects(runs, raw, config, overrides, fresh, checkpoints, which, device)
    targets = task_targets(text, raw, subjects) if at == "task" else None
    if measure == PROBE:
        batch = PROBE_LINES if batch is None else batch
        probes = probe_subjects(subjects, targets, max_lag, batch, seed)
        print_probes(probes, json_out, max_lag)
        if plot is not None:
            say(f"wrote {figures.plot_probe_profiles(probes, plot)}")
        profiles: Sequence[Any] = probes
    else:
        batch = WINDOWS if batch is None else batch
        options = {"max_lag": max_lag, "batch": batch, "seed": seed, "measure": measure}
        profiles = measure_subjects(subjects, targets, at == "task", options | {"norm": norm})
        print_profiles(profiles, json_out, max_lag)
        if plot is not None:
            say(f"wrote {figures.plot_gradient_profiles(profiles, plot)}")
    if histograms is not None or singular_values is not None:
        draw_insides(subjects, profiles, targets, histograms, singular_values, json_out, at, say)
    return profiles


def probe_subjects(
    subjects: Sequence[Subject], targets: Any, max_lag: int, batch: int, seed: int
) -> list[ProbeProfile]:
    """One ProbeProfile per subject, on the lines holding the task's scored positions."""
    return [
        _labelled(
            probe_model(
                s.model,
                s.ids,
                targets,
                s.line_break,
                max_lag=max_lag,
                batch=batch,
                seed=seed,
                source=s.source,
            ),
            s,
        )  # fmt: skip
        for s in subjects
        if s.line_break is not None
    ]


def _labelled(profile: Any, subject: Subject) -> Any:
    """`profile` named for the plot and the JSON as its subject is (label, step, model seed)."""
    return dataclasses.replace(
        profile, label=subject.label, step=subject.step, model_seed=subject.model_seed
    )


def print_probes(probes: Sequence[ProbeProfile], json_out: bool, max_lag: int) -> None:
    """The probes on stdout: JSON lines, or per model its own accuracy and the probe's
    held-out (fitted) accuracy at k = 0, 1, 2, 5, 10, ... up to `max_lag`."""
    if json_out:
        for probe in probes:
            print(json.dumps(probe.as_dict()))
        return
    for p in probes:
        wanted = {0, 1, 2, 5, 10, 20, 50, 100, 200, 500, max_lag - 1, max_lag}
        shown = [(i, k) for i, k in enumerate(p.lags) if k in wanted]
        print(
            f"{p.label} ({p.source}): {p.cell} {p.layers}x{p.hidden_size}; the model's own "
            f"accuracy {p.model_accuracy:.2f}; most frequent key {p.chance:.2f} of "
            f"{p.windows} held-out lines ({p.keys} keys)"
        )
        print("    k" + "".join(f"  layer {i + 1} held out (fitted)" for i in range(p.layers)))
        for index, k in shown:
            cells = "".join(
                f"  {p.accuracy[i][index]:17.2f} ({p.fit_accuracy[i][index]:.2f})"
                for i in range(p.layers)
            )
            print(f"  {k:3d}{cells}")


def measure_subjects(
    subjects: Sequence[Subject], targets: Any, at_task: bool, options: dict[str, Any]
) -> list[GradientProfile]:
    """One GradientProfile per subject (fresh model, run or checkpoint), labelled for the plot."""
    return [
        _labelled(
            measure_model(
                s.model,
                s.ids,
                **options,
                targets=targets,
                line_break=s.line_break if at_task else None,
                source=s.source,
            ),
            s,
        )  # fmt: skip
        for s in subjects
    ]


def check_gradient_options(
    runs: Sequence[Path] | None,
    text: Path | None,
    config: Path | None,
    overrides: Sequence[str] | None,
    fresh: str | None,
    at: str,
    measure: str,
    norm: str,
    figures_out: Sequence[Path],
) -> None:
    """Every refusal of `charlm gradients` before anything is read or written."""
    for flag, value, choices in (
        ("--at", at, POSITIONS),
        ("--measure", measure, (*MEASURES, PROBE)),
        ("--norm", norm, NORMS),
    ):
        if value not in choices:
            raise UsageError(f"{flag} must be one of {', '.join(choices)} (got '{value}')")
    if measure == PROBE and at != "task":
        raise UsageError(
            "--measure probe decodes each line's key at the task's scored positions: add "
            "--at task (and a --text made by `charlm data synth`)"
        )
    if text is None:
        raise UsageError("--text FILE is required (the windows are drawn from it)")
    if runs and (config is not None or overrides or fresh):
        raise UsageError("give run directories or --fresh/--config/--set (fresh models), not both")
    for figure in figures_out:
        check_figure_path(figure)  # its format and folder, before measuring


def gradient_subjects(
    runs: Sequence[Path] | None,
    raw: str,
    config: Path | None,
    overrides: Sequence[str] | None,
    fresh: str | None,
    checkpoints: str | None,
    which: str,
    device: str,
) -> list[Subject]:
    """The models to measure: each run's checkpoint(s), or the fresh models `fresh` names (one
    fresh model as `config` and `overrides` make it, when `fresh` is None)."""
    if runs:
        return run_subjects(runs, raw, check_which(which), checkpoints, device)
    if checkpoints is not None:
        raise UsageError("--checkpoints needs run directories")
    # No --fresh: one fresh model as --config/--set make it ("").
    names = [n.strip() for n in fresh.split(",") if n.strip()] if fresh else [""]
    torch_device = str(resolve_device(device, flag="--device"))
    return fresh_subjects(names, config, overrides or [], raw, torch_device)


def print_profiles(profiles: Sequence[GradientProfile], json_out: bool, max_lag: int) -> None:
    """The profiles on stdout: one JSON object per line, or a table of the mean and largest norm
    per layer at lags 1, 2, 5, 10, ... up to `max_lag`."""
    if json_out:
        for profile in profiles:
            print(json.dumps(profile.as_dict()))
        return
    shown = [k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500) if k <= max_lag]
    for profile in profiles:
        print(
            f"{profile.label} ({profile.source}): {profile.cell} {profile.layers}x{profile.hidden_size}"
        )
        print("  lag " + "".join(f"  layer {i + 1} mean / max  " for i in range(profile.layers)))
        for k in shown:
            cells = "".join(
                f"  {profile.grad_norm[i][k - 1]:10.3e} / {profile.grad_norm_max[i][k - 1]:9.3e}"
                for i in range(profile.layers)
            )
            print(f"  {k:3d}{cells}")


def draw_insides(
    subjects: Sequence[Subject],
    profiles: Sequence[GradientProfile],
    targets: object,
    histograms: Path | None,
    singular_values: Path | None,
    json_out: bool,
    at: str,
    say: Say = _stderr,
) -> None:
    """--histograms and --singular-values: measured on the same windows as the profiles."""
    first = profiles[0]
    where = "the task's scored positions" if at == "task" else "random positions"
    if histograms is not None:
        stats = [
            activation_stats(
                s.model,
                s.ids,
                steps=first.lags[-1],
                batch=first.windows,
                seed=first.seed,
                targets=targets,
                line_break=s.line_break if at == "task" else None,
                label=s.label,
            )  # fmt: skip
            for s in subjects
        ]
        for st in stats:
            shares = ", ".join(f"{n} {100 * v:.0f}%" for n, v in st.saturation()[0].items())
            print(json.dumps(st.as_dict()) if json_out else f"{st.label}: saturated/off {shares}")
        caption = (
            f"layer 1's activations at every unit and step of {first.windows} windows of "
            f"{first.lags[-1] + 1} steps ending at {where} (seed {first.seed}); saturated: "
            "|tanh| > 0.99, sigmoid < 0.01 or > 0.99; relu off: exactly 0"
        )
        say(f"wrote {figures.plot_activations(stats, histograms, caption)}")
    if singular_values is not None:
        spectra = [(s.label, svs(s.model)) for s in subjects]
        for label, layers in spectra:
            if json_out:
                print(json.dumps({"label": label, "singular_values": layers}))
            else:
                tops = "; ".join(
                    ", ".join(f"{b} {v[0]:.2f}" for b, v in blocks.items()) for blocks in layers
                )
                print(f"{label}: largest singular value of W_hh per block: {tops}")
        caption = "singular values of each gate's block of W_hh (its rows for that gate), per layer; grey: 1"
        say(f"wrote {figures.plot_singular_values(spectra, singular_values, caption)}")
