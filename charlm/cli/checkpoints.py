"""The commands that write a new file from a run's checkpoints: `charlm average`, `charlm export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charlm.cli.app import app, handle_errors, say
from charlm.cli.options import RunArg, WhichOpt, choices
from charlm.inference.choices import FORMATS
from charlm.rundir.names import check_which

Format = choices("Format", FORMATS)


@app.command()
@handle_errors
def average(
    run: Annotated[Path, typer.Argument(help="A run directory (train --out).")],
    last: Annotated[int, typer.Option("--last", help="Average the N newest checkpoints.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write (new).")],
) -> None:
    """Average the weights of a run's last N kept checkpoints into one checkpoint.

    The result samples, evaluates and describes like a run (it has no optimizer state, so it
    does not resume). Example:
      charlm average runs/mine --last 3 --out runs/mine-avg3
      charlm evaluate runs/mine-avg3 --text held_out.txt
    """
    from charlm.rundir.average import average_checkpoints

    result = average_checkpoints(run, last, out)
    steps = ", ".join(f"{s:,}" for s in result.steps)
    say(f"wrote {result.path}: the mean of {len(result.sources)} checkpoints (steps {steps})")


@app.command()
@handle_errors
def export(
    run: RunArg,
    fmt: Annotated[
        Format,  # type: ignore[valid-type]
        typer.Option("--format", "-f", help="onnx needs the onnx extra (README: Exporting)."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
    which: WhichOpt = "best",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
) -> None:
    """Export the model's one-token step (token + state -> logits + state) to run without charlm.

    The file carries the tokenizer and a description of the state; it is checked against
    charlm's own step before it is written (README: "Exporting").

    Examples:
      charlm export runs/mine --format torchscript --out mine.pt
      charlm export runs/mine --format onnx --out mine.onnx
    """
    from charlm.inference.export import export_checkpoint

    result = export_checkpoint(run, fmt, out, which=check_which(which), force=force)
    say(
        f"wrote {result.path}: {fmt}, matches charlm's step to {result.max_difference:.1e} "
        f"over {result.steps_checked} steps"
    )
