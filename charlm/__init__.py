"""charlm: train, sample and evaluate character- and word-level recurrent language models."""

import sys

from charlm import threads as _threads

# OpenMP reads its wait policy once, when torch loads it: choose before anything imports torch
# (a user's own OMP_* / GOMP_* setting wins). charlm/threads.py says why a bounded spin.
_threads.OPENMP_POLICY = _threads.set_openmp_defaults(torch_loaded="torch" in sys.modules)

__version__ = "0.1.0"

# The Python API (charlm/api.py), imported on first use so that `import charlm` stays cheap for
# the command line. `charlm.train` is the module charlm/train.py, made callable (it calls
# charlm.api.train), so that `charlm.train(...)` works whether or not that module was imported.
_API = ("load", "LanguageModel", "EvalResult", "TrainResult")


def __getattr__(name: str) -> object:
    import importlib

    if name in _API:
        return getattr(importlib.import_module("charlm.api"), name)
    if name == "train":
        return importlib.import_module("charlm.train")
    raise AttributeError(f"module 'charlm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, "train"])
