"""Warm start (`train --init-from`): another run's weights and vocabulary as a new run's start.

The new run takes the source checkpoint's settings as its base (a --config file and --set apply
on top), its tokenizer (the new text is encoded with the old vocabulary: what it never saw
becomes the unknown token, counted in the data's meta.json, the header and metrics.jsonl) and
its weights. The optimiser and the step counter start fresh unless `keep` names them.
Everything here is decided before the run directory is touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from charlm.config import OptimConfig, RunConfig, build_config, config_changes, config_to_dict
from charlm.data.tokenizer import load_tokenizer, special_ids, tokenizer_level
from charlm.errors import CheckpointError, UsageError
from charlm.model.network import RNNLanguageModel
from charlm.rundir.checkpoint import LoadedCheckpoint, load_checkpoint
from charlm.training.optimizers import patch_resumed_optimizer

KEEP_CHOICES = ("optimizer", "step")
# Settings that decide the weights' shapes: the source's weights cannot fill another shape.
SHAPE_KEYS = (
    "model.cell",
    "model.layers",
    "model.hidden_size",
    "model.embedding_dim",
    "model.tie_weights",
)
# Settings the source's tokenizer already fixed: the new text is encoded with that vocabulary.
VOCABULARY_KEYS = (
    "data.level",
    "data.vocab_size",
    "data.lowercase",
    "data.segments",
    "data.word_split",
    "data.sentence_split",
)


@dataclass
class WarmStart:
    """The source checkpoint of a warm start, its weights read, and what else it hands over."""

    source: LoadedCheckpoint
    keep: frozenset[str]
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None  # with keep "optimizer"

    @property
    def tokenizer_json(self) -> str:
        return self.source.tokenizer_json

    def config(self, config_file: Path | None, overrides: Iterable[str]) -> RunConfig:
        """The source's settings, then the file and the overrides; shape or vocabulary changes
        are refused with every differing setting listed (source value vs requested)."""
        config = build_config(
            base=config_to_dict(self.source.config),
            config_file=config_file,
            overrides=list(overrides),
        )
        fixed = set(SHAPE_KEYS) | set(VOCABULARY_KEYS)
        if self.source.meta["level"] == "char":
            fixed.discard("data.vocab_size")  # a char vocabulary has no size setting
        changed = [
            f"{key}: {old!r} (source) vs {new!r} (requested)"
            for key, old, new in config_changes(self.source.config, config)
            if key in fixed
        ]
        if changed:
            raise UsageError(
                f"--init-from {self.source.path}: the source model's shape and vocabulary are "
                "fixed, but these settings differ: " + "; ".join(changed) + " (drop them, or "
                "train from scratch without --init-from)"
            )
        if self.optimizer is not None and config.optim.name != self.source.config.optim.name:
            raise UsageError(
                f"--init-keep optimizer: the source used optim.name={self.source.config.optim.name}"
                f" but this run sets optim.name={config.optim.name}; keep one or drop the option"
            )
        steps = config.train.max_steps
        if "step" in self.keep and steps and steps <= self.source.step:
            raise UsageError(
                f"--init-keep step: the source is at step {self.source.step:,} and "
                f"train.max_steps={steps} would train no step; set train.max_steps above it"
            )
        return config

    def apply(
        self, model: RNNLanguageModel, optimizer: torch.optim.Optimizer, optim: OptimConfig
    ) -> int:
        """Put the source's weights (and, if kept, its optimiser state) in place; returns the
        step to start at (the source's with keep "step", else 0)."""
        model.load_state_dict(self.weights)
        if self.optimizer is not None:
            optimizer.load_state_dict(self.optimizer)
            patch_resumed_optimizer(optimizer, optim)
        return self.source.step if "step" in self.keep else 0

    def summary(self, meta: dict[str, Any]) -> dict[str, Any]:
        """What metrics.jsonl's start record says of the warm start (meta: the new data's)."""
        unknown = int(meta.get("train_unknown", 0))
        return {
            "init_from": str(self.source.path),
            "init_step": self.source.step,
            "init_keep": sorted(self.keep),
            "unknown_tokens": unknown,
            "unknown_share": unknown / max(int(meta.get("train_tokens", 0)), 1),
        }


def describe(summary: dict[str, Any], vocab_size: int) -> str:
    """The header line of a warm start."""
    kept = ", ".join(summary["init_keep"]) or "weights only"
    return (
        f"warm start from {summary['init_from']} (step {summary['init_step']:,}; kept: {kept}): "
        f"{summary['unknown_tokens']:,} unknown tokens in the training text, "
        f"{summary['unknown_share']:.2%} of its tokens (vocabulary {vocab_size:,})"
    )


def open_warm_start(
    path: Path, keep: Iterable[str], run_dir: Path, *, resume: bool, data_dir: Path | None
) -> WarmStart:
    """Read and check the source of `--init-from` (best checkpoint of a run, or a checkpoint
    folder); refuses a bad --init-keep, --resume, and a source inside the new run."""
    keep = frozenset(keep)
    unknown = sorted(keep - set(KEEP_CHOICES))
    if unknown:
        raise UsageError(
            f"--init-keep {unknown[0]!r} is not one of: {', '.join(KEEP_CHOICES)} "
            "(the weights and the vocabulary are always taken)"
        )
    if resume:
        raise UsageError(
            "--init-from starts a new run; --resume continues one: drop --init-from to "
            "continue a warm-started run"
        )
    source = load_checkpoint(path, "best")
    run_dir = Path(run_dir).resolve()
    if run_dir == source.path.resolve() or run_dir in source.path.resolve().parents:
        raise UsageError(
            f"--init-from {path} lies inside --out {run_dir}; give the new run another --out"
        )
    check_vocabulary(Tokenizer.from_str(source.tokenizer_json), source.meta["level"], path)
    weights = source.build_model("cpu").state_dict()
    optimizer = None
    if "optimizer" in keep:
        try:
            optimizer = source.optimizer_state()
        except CheckpointError as exc:
            raise CheckpointError(f"--init-keep optimizer: {exc}") from None
    warm = WarmStart(source, keep, weights, optimizer)
    if data_dir is not None:
        _check_same_vocabulary(warm, Path(data_dir))
    return warm


def check_vocabulary(tokenizer: Tokenizer, level: str, path: Path) -> None:
    """New text can only be encoded where unseen input has somewhere to go: char and word
    vocabularies need their unknown token (every one charlm writes has it: char `<unk>` at id
    0, word UNKNOWN_TOKEN); byte-level BPE spells any text and needs none."""
    if level == "bpe":
        return
    if tokenizer_level(tokenizer) != level or special_ids(tokenizer)["unk"] is None:
        raise CheckpointError(
            f"{path}: its {level} vocabulary has no unknown token, so text it never saw cannot "
            "be encoded with it; warm-start from a checkpoint that charlm wrote"
        )


def _check_same_vocabulary(warm: WarmStart, data_dir: Path) -> None:
    """--data with --init-from: the folder must be encoded with the source's own vocabulary
    (a folder without a tokenizer is refused later, as for any --data)."""
    path = data_dir / "tokenizer.json"
    if not path.is_file():
        return
    if load_tokenizer(path).to_str() != Tokenizer.from_str(warm.tokenizer_json).to_str():
        raise UsageError(
            f"--data {data_dir}: prepared with another vocabulary than --init-from "
            f"{warm.source.path}; pass the text itself (charlm train TEXT --init-from ...), "
            "which is encoded with the source's vocabulary"
        )
