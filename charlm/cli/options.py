"""Options shared by several commands, declared once so their help reads the same everywhere."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from charlm.config import setting_choices
from charlm.data.choices import ERRORS
from charlm.rundir.names import WHICH


class Choice(str, enum.Enum):
    """The value of a fixed-choice option. typer reads an Enum as a choice: `--help` shows the
    values, shell completion offers them, and another value is refused naming the flag (exit
    code 2). Each member is also the plain string it names (== "cpu", formats as cpu), so the
    command passes it on as the str the library takes."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)


def choices(name: str, values: Iterable[str]) -> type[Choice]:
    """A Choice of `values`, in their order: the setting's Literal or the registry that owns
    them, never a list written again here."""
    return Choice(name, [(value, value) for value in values])  # type: ignore[return-value]


Device = choices("Device", setting_choices("train.device"))
Which = choices("Which", WHICH)
Errors = choices("Errors", ERRORS)


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
DeviceOpt = Annotated[
    Device, typer.Option("--device", help="auto: CUDA if there is one, else MPS, else the CPU.")
]
# fp32 and model/quantize.py's QUANTIZE (that module needs torch, which the command line loads
# only once a command runs; tests/test_choices.py checks the two agree).
Quantize = choices("Quantize", ("fp32", "int8"))
QuantizeOpt = Annotated[
    Quantize,
    typer.Option(
        "--quantize",
        help="fp32, or int8: int8 weights for every matrix product (CPU only; faster on CPUs "
        "with int8 instructions, slightly higher loss).",
    ),
]
WhichOpt = Annotated[
    Which,
    typer.Option(
        "--checkpoint", help="For a run directory: 'best' (by validation loss) or 'latest'."
    ),
]
RunArg = Annotated[
    Path, typer.Argument(help="A run directory (train --out) or a checkpoint folder.")
]
