"""charlm: train, sample and evaluate character- and word-level recurrent language models."""

# A library leaves the caller's process alone: importing charlm sets no environment variable
# and no module-wide setting. The command line chooses OpenMP's wait policy for its own process
# (charlm/cli/__init__.py); through the API libgomp's default holds, the same bound
# (charlm/system/threads.py, openmp_policy).
from charlm._version import __version__

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
