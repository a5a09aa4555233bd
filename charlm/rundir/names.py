"""The names of the files and folders a run directory and a checkpoint hold (one place for all).

    RUN_DIR/config.yaml, metrics.jsonl, data/ (when train prepared the text), checkpoints/,
            tensorboard/ (train.tensorboard: event files), trainer.lock and, while one
            trains, trainer.pid (lock.py names those two)
    checkpoints/step-NNNNNNNN/  model.safetensors, optimizer.pt, train_state.safetensors,
                                raw_model.safetensors (NT-ASGD), state.json, config.yaml,
                                tokenizer.json, meta.json
    checkpoints/latest.json, best.json

checkpoint.py describes what each holds.
"""

from __future__ import annotations

from charlm.errors import UsageError

# The run directory
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
DATA = "data"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
# A checkpoint folder (and, for tokenizer.json and meta.json, a prepared data folder)
MODEL = "model.safetensors"
RAW_MODEL = "raw_model.safetensors"
OPTIMIZER = "optimizer.pt"
TRAIN_STATE = "train_state.safetensors"
STATE = "state.json"
TOKENIZER = "tokenizer.json"
META = "meta.json"
# Pointers in checkpoints/
LATEST = "latest.json"
BEST = "best.json"

WHICH = ("best", "latest")  # the checkpoints a run directory points at (BEST, LATEST)


def check_which(value: str) -> str:
    """`--checkpoint`'s value if it names a pointer of WHICH; else the one-line refusal."""
    if value not in WHICH:
        raise UsageError(f"--checkpoint must be 'best' or 'latest' (got '{value}')")
    return value
