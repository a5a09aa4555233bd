"""The `charlm` command line: a Typer app, one module per command group."""

# isort: off
from charlm.cli.app import app, main

# Each module registers its commands on `app` as it is imported, in this order: the order
# `charlm --help` lists them in.
from charlm.cli import train, use, diagnostics, checkpoints, data, config  # noqa: F401

# isort: on

__all__ = ["app", "main"]
