"""Options shared by several commands, declared once so their help reads the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def complete_config(incomplete: str) -> list[str]:
    """Shell completion for --config: the shipped configs' names (files complete as usual)."""
    from charlm.config import shipped_configs

    return [name for name in shipped_configs() if name.startswith(incomplete)]


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML settings file, or a shipped config's name (charlm config list).",
        autocompletion=complete_config,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override a setting: --set model.hidden_size=256 (repeatable)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
QuantizeOpt = Annotated[
    str,
    typer.Option(
        "--quantize",
        help="fp32, or int8: int8 weights for every matrix product (CPU only; faster on CPUs "
        "with int8 instructions, slightly higher loss).",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")]
WhichOpt = Annotated[
    str,
    typer.Option(
        "--checkpoint", help="For a run directory: 'best' (by validation loss) or 'latest'."
    ),
]
RunArg = Annotated[
    Path, typer.Argument(help="A run directory (train --out) or a checkpoint folder.")
]
