"""The names of the files and folders a run directory and a checkpoint hold (one place for all).

    RUN_DIR/config.yaml, metrics.jsonl, data/ (when train prepared the text), checkpoints/,
            tensorboard/ (train.tensorboard: event files), wandb.json (train.wandb: the W&B
            run's id), wandb/ (W&B's own files, unless WANDB_DIR says elsewhere), trainer.lock
            and, while one trains, trainer.pid (lock.py names those two)
    checkpoints/step-NNNNNNNN/  model.safetensors, optimizer.pt, train_state.safetensors,
                                raw_model.safetensors (NT-ASGD), state.json, config.yaml,
                                tokenizer.json (+ TOKENIZER_EXTRAS), meta.json
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
WANDB_RUN = "wandb.json"
WANDB_DIR = "wandb"
# A checkpoint folder (and, for tokenizer.json and meta.json, a prepared data folder)
MODEL = "model.safetensors"
RAW_MODEL = "raw_model.safetensors"
OPTIMIZER = "optimizer.pt"
TRAIN_STATE = "train_state.safetensors"
STATE = "state.json"
TOKENIZER = "tokenizer.json"
# Beside tokenizer.json (folders written before have none; charlm never reads them): the
# special tokens for transformers' AutoTokenizer, data/tokenizer.py's HF_TOKENIZER_CONFIG and
# HF_SPECIAL_TOKENS (tests/test_tokenizer_json.py checks the two agree).
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json")
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
