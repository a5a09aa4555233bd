"""The version of charlm: its one source (pyproject.toml reads it; checkpoints record it)."""

__version__ = "0.1.0"
