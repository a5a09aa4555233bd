"""A read-only summary of a run or checkpoint, for `charlm info`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from charlm.config import config_to_dict
from charlm.rundir.checkpoint import FORMAT_NAME, load_checkpoint


def describe(path: Path, which: str = "best") -> dict[str, Any]:
    """Settings, vocabulary, size, step and scores; reads files and never writes."""
    loaded = load_checkpoint(path, which)
    state, meta = loaded.state, loaded.meta
    return {
        "checkpoint": str(loaded.path),
        "format": FORMAT_NAME,
        "format_version": state.version,
        "charlm_version": state.charlm_version,
        "saved_at": state.saved_at,
        "step": state.step,
        "epoch": state.epoch,
        "parameters": state.parameters,
        "level": meta.get("level"),
        "vocab_size": meta.get("vocab_size"),
        "train_tokens": meta.get("train_tokens"),
        "val_tokens": meta.get("val_tokens"),
        "data_sha256": meta.get("sha256"),
        "best_val_loss": state.best_val_loss,
        "last_val_loss": state.last_val_loss,
        "counters": {
            "bad_steps": state.bad_steps,
            "clipped_steps": state.clipped_steps,
            "evals_since_best": state.evals_since_best,
        },
        "world_size": state.world_size,
        # The precision the session that saved this checkpoint trained in (train.precision may
        # change on resume; metrics.jsonl's start records say it for each session).
        "precision": loaded.config.train.precision,
        "config": config_to_dict(loaded.config),
    }
