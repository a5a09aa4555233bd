"""A read-only summary of a run or checkpoint, for `charlm info`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from charlm.checkpoint import load_checkpoint
from charlm.config import config_to_dict


def describe(path: Path, which: str = "best") -> dict[str, Any]:
    """Settings, vocabulary, size, step and scores; reads files and never writes."""
    loaded = load_checkpoint(path, which)
    info, meta = loaded.info, loaded.meta
    return {
        "checkpoint": str(loaded.path),
        "format": info.get("format"),
        "format_version": info.get("version"),
        "charlm_version": info.get("charlm_version"),
        "saved_at": info.get("saved_at"),
        "step": loaded.step,
        "epoch": info.get("cursor", {}).get("epoch"),
        "parameters": info.get("parameters"),
        "level": meta.get("level"),
        "vocab_size": meta.get("vocab_size"),
        "train_tokens": meta.get("train_tokens"),
        "val_tokens": meta.get("val_tokens"),
        "data_sha256": meta.get("sha256"),
        "best_val_loss": info.get("best_val_loss"),
        "last_val_loss": info.get("last_val_loss"),
        "counters": info.get("counters", {}),
        "world_size": info.get("world_size"),
        "config": config_to_dict(loaded.config),
    }
