"""charlm: train, sample and evaluate character- and word-level recurrent language models."""

import os

# OpenMP threads that spin while waiting collapse when the cores are shared: on a busy 2-core
# machine a 2x32 GRU step ran 611 tokens/s with spinning threads against 27,924 with sleeping
# ones (2x256: 3,584 vs 4,579). Set before torch loads its OpenMP runtime; a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
