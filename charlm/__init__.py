"""charlm: train, sample and evaluate character- and word-level recurrent language models."""

import sys

from charlm._version import __version__
from charlm.system import threads as _threads

# OpenMP reads its wait policy once, when torch loads it: choose before anything imports torch
# (a user's own OMP_* / GOMP_* setting wins). charlm/system/threads.py says why a bounded spin.
_threads.OPENMP_POLICY = _threads.set_openmp_defaults(torch_loaded="torch" in sys.modules)

__all__ = ["EvalResult", "LanguageModel", "TrainResult", "__version__", "load", "train"]

# The Python API (charlm/api.py), imported on first use so that `import charlm` stays cheap for
# the command line: `charlm.load`, `charlm.train` (the function charlm.api.train), ...
_API = ("load", "train", "LanguageModel", "EvalResult", "TrainResult")


def __getattr__(name: str) -> object:
    if name in _API:
        from charlm import api

        return getattr(api, name)
    raise AttributeError(f"module 'charlm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
