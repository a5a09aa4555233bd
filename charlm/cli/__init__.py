"""The `charlm` command line: a Typer app, one module per command group."""

# isort: off
import sys

from charlm.system import threads as _threads

# OpenMP reads its wait policy once, when torch loads it: the command line chooses for its own
# process before any command module can import torch (a user's own OMP_* / GOMP_* setting
# wins). `import charlm` alone sets nothing (charlm/system/threads.py says why a bounded spin).
_threads.OPENMP_POLICY = _threads.set_openmp_defaults(torch_loaded="torch" in sys.modules)

from charlm.cli.app import app, main  # noqa: E402 (after the OpenMP choice)

# Each module registers its commands on `app` as it is imported, in this order: the order
# `charlm --help` lists them in.
from charlm.cli import train, use, diagnostics, checkpoints, data, config  # noqa: E402, F401

# isort: on

__all__ = ["app", "main"]
