"""The commands that look inside models: `charlm gradients` (the report) and `charlm plot`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charlm.cli.app import app, handle_errors, say
from charlm.cli.options import ConfigOpt, DeviceOpt, JsonOpt, SetOpt, WhichOpt, choices
from charlm.diagnostics.choices import MEASURES, NORMS, POSITIONS, PROBE, X_AXES

At = choices("At", POSITIONS)
Measure = choices("Measure", (*MEASURES, PROBE))
Norm = choices("Norm", NORMS)
X = choices("X", X_AXES)

# The gradients options whose help takes several lines, declared here to keep the command short.
FreshOpt = Annotated[
    str | None,
    typer.Option(
        "--fresh",
        help="Fresh models to overlay, comma-separated: cells (rnn,gru,lstm,...) or presets "
        "(irnn, leaky-rnn); --config/--set apply to each.",
    ),
]
AtOpt = Annotated[
    At,  # type: ignore[valid-type]
    typer.Option(
        "--at",
        help="random: random positions; task: the task's scored positions (lag: the key "
        "after the cue), each window run from its line's start.",
    ),
]
MeasureOpt = Annotated[
    Measure,  # type: ignore[valid-type]
    typer.Option(
        "--measure",
        help="loss: |d loss_T / d h_(T-k)|; jacobian: the norm of the state Jacobian "
        "d s_T / d s_(T-k), independent of the loss; probe (with --at task): how well a "
        "linear readout of s_(T-k) decodes the line's key, on held-out lines.",
    ),
]
NormOpt = Annotated[
    Norm,  # type: ignore[valid-type]
    typer.Option("--norm", help="--measure jacobian: the matrix norm."),
]
XOpt = Annotated[
    X,  # type: ignore[valid-type]
    typer.Option("--x", help="Against step, tokens (trained on) or time (seconds)."),
]
CheckpointsOpt = Annotated[
    str | None,
    typer.Option(
        "--checkpoints", help="all, or steps like 100,500: one curve per kept checkpoint."
    ),
]

BatchOpt = Annotated[
    int | None,
    typer.Option(
        help="Windows averaged over (32 unless given); --measure probe: held-out lines (256 "
        "unless given), as many again fitted on."
    ),
]


@app.command()
@handle_errors
def gradients(
    runs: Annotated[
        list[Path] | None, typer.Argument(help="Run directories (or use --fresh / --config).")
    ] = None,
    text: Annotated[Path | None, typer.Option("--text", help="Text to draw windows from.")] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    fresh: FreshOpt = None,
    at: AtOpt = "random",
    measure: MeasureOpt = "loss",
    norm: NormOpt = "spectral",
    checkpoints: CheckpointsOpt = None,
    max_lag: Annotated[int, typer.Option(help="Measure lags 1..K (the probe: 0..K).")] = 50,
    batch: BatchOpt = None,
    seed: Annotated[int, typer.Option(help="Seed for the window positions.")] = 0,
    json_out: JsonOpt = False,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Also draw the figure here (.png, .svg, .pdf, ...)."),
    ] = None,
    histograms: Annotated[
        Path | None,
        typer.Option(
            "--histograms", help="Also draw gate-activation histograms (.png, .svg, ...)."
        ),
    ] = None,
    singular_values: Annotated[
        Path | None,
        typer.Option(
            "--singular-values", help="Also draw W_hh's singular values (.png, .svg, ...)."
        ),
    ] = None,
    device: DeviceOpt = "cpu",
    which: WhichOpt = "best",
) -> None:
    """Gradient of the last step's loss (or the state Jacobian) k steps back, per layer.

    Vanishing gradients show as a norm falling fast with k; exploding ones as a large maximum.

    Examples:
      charlm gradients --fresh rnn,gru,lstm,irnn --text valid.txt --plot fresh.png
      charlm gradients runs/rnn runs/lstm --text data/lag20/valid.txt --at task --plot grads.png
      charlm gradients runs/gru --checkpoints all --measure jacobian --text valid.txt --plot p.png
      charlm gradients runs/rnn runs/gru --text data/lag100/valid.txt --at task --measure probe
    """
    from charlm.diagnostics.report import gradient_report

    gradient_report(
        runs,
        text,
        config=config,
        overrides=overrides,
        fresh=fresh,
        at=at,
        measure=measure,
        norm=norm,
        checkpoints=checkpoints,
        max_lag=max_lag,
        batch=batch,
        seed=seed,
        json_out=json_out,
        plot=plot,
        histograms=histograms,
        singular_values=singular_values,
        device=device,
        which=which,
        say=say,
    )


@app.command()
@handle_errors
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to overlay.")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Figure to write: .png, .svg, .pdf, ... by its suffix."),
    ],
    x: XOpt = "step",
) -> None:
    """Training and validation curves (loss, bits per char, gradient norm) of runs overlaid, in
    one figure (.png, .svg, .pdf, ...: any format matplotlib writes): one colour per run.

    Examples:
      charlm plot runs/rnn runs/gru runs/lstm --out curves.png
      charlm plot runs/small runs/big --x time --out by-time.png
    """
    from charlm.diagnostics.curves import plot_runs

    say(f"wrote {plot_runs(runs, out, x=x)}")
