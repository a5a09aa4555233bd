"""charlm: train, sample and evaluate character- and word-level recurrent language models."""

__version__ = "0.1.0"
