"""The formats `charlm export` writes, by name: torch-free, so the command line offers them."""

from __future__ import annotations

FORMATS = ("torchscript", "onnx")
