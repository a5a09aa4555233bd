"""charlm: train, sample and evaluate character- and word-level recurrent language models."""

import sys

from charlm import threads as _threads

# OpenMP reads its wait policy once, when torch loads it: choose before anything imports torch
# (a user's own OMP_* / GOMP_* setting wins). charlm/threads.py says why a bounded spin.
_threads.OPENMP_POLICY = _threads.set_openmp_defaults(torch_loaded="torch" in sys.modules)

__version__ = "0.1.0"
