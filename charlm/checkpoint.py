"""Self-contained checkpoints: atomic writes, retention, and loads that never run code.

On disk, a run directory holds:

    RUN_DIR/config.yaml            the resolved settings of the run
    RUN_DIR/metrics.jsonl          one JSON record per line (see metrics.py)
    RUN_DIR/checkpoints/
        step-00001000/             one checkpoint, complete on its own:
            model.safetensors        weights (safetensors: tensors only, nothing to execute)
            optimizer.pt             optimizer state, loaded with torch.load(weights_only=True)
            train_state.safetensors  carried hidden state and torch RNG states
            raw_model.safetensors    only while NT-ASGD averages: the raw weights (model.*
                                     then holds the average, which sampling and evaluation use)
            state.json               format version, step, data cursor, Python/NumPy RNG, scores
            config.yaml              the run's settings (rebuilds the model without the run)
            tokenizer.json           the vocabulary (tokenizers.Tokenizer.from_file loads it)
            meta.json                the prepared data's description (level, counts, hashes)
        latest.json                {"name": "step-00001000"}: the newest complete checkpoint
        best.json                  {"name": ..., "val_loss": ...}: lowest validation loss

A checkpoint folder is written under a temporary name, every file fsynced, then renamed into
place; the pointer files are replaced the same way, so a kill at any moment leaves the previous
checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from charlm import __version__
from charlm.config import RunConfig, build_config, config_to_yaml, read_yaml
from charlm.errors import CheckpointError, ConfigError
from charlm.model import RNNLanguageModel

FORMAT_NAME = "charlm-checkpoint"
FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_FILES = ("model.safetensors", "state.json", "config.yaml", "tokenizer.json", "meta.json")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small file so that readers see the old or the new content, never a mixture."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@dataclass
class TrainingState:
    """Everything besides weights and optimizer that an exact resume needs."""

    step: int
    info: dict[str, Any]  # JSON-able: cursor, RNG of Python/NumPy, scores, counters
    tensors: dict[str, torch.Tensor]  # hidden state, torch RNG states


def save_checkpoint(
    run_dir: Path,
    model: RNNLanguageModel,
    optimizer: torch.optim.Optimizer,
    config: RunConfig,
    tokenizer_json: str,
    meta: dict[str, Any],
    state: TrainingState,
    is_best: bool,
    keep: int,
    raw_weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write step-NNNNNNNN/ atomically, move the pointers, prune old ones; returns the folder.

    `raw_weights` (NT-ASGD, while averaging): the weights the optimiser steps, saved beside the
    model's (which then hold the average) as raw_model.safetensors, for resume.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": FORMAT_NAME})
    if raw_weights is not None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in raw_weights.items()},
            str(tmp / "raw_model.safetensors"),
        )
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in state.tensors.items()},
        str(tmp / "train_state.safetensors"),
    )
    info = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "charlm_version": __version__,
        "torch_version": torch.__version__,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "step": state.step,
        **state.info,
    }
    (tmp / "state.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    (tmp / "config.yaml").write_text(config_to_yaml(config), encoding="utf-8")
    (tmp / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    for file in tmp.iterdir():
        _fsync_file(file)
    fsync_dir(tmp)
    if final.exists():  # the same step saved again (after an interrupt): swap, then drop the old
        old = root / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / "latest.json", json.dumps({"name": name, "step": state.step}))
    if is_best:
        best = {"name": name, "step": state.step, "val_loss": info.get("best_val_loss")}
        atomic_write_text(root / "best.json", json.dumps(best))
    _prune(root, keep)
    return final


def _read_pointer(root: Path, which: str) -> str | None:
    try:
        name = json.loads((root / f"{which}.json").read_text(encoding="utf-8"))["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) and _STEP_DIR.match(name) else None


def step_dirs(root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def _prune(root: Path, keep: int) -> None:
    protected = {_read_pointer(root, "best"), _read_pointer(root, "latest")}
    steps = step_dirs(root)
    for path in steps[: max(0, len(steps) - keep)]:
        if path.name not in protected:
            shutil.rmtree(path, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # left by a killed writer
        if stale.is_dir() and not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return (path / CHECKPOINTS).is_dir() or (path / "config.yaml").is_file()


def has_checkpoint(run_dir: Path) -> bool:
    return bool(step_dirs(Path(run_dir) / CHECKPOINTS))


def resolve_checkpoint(path: Path, which: str = "best") -> Path:
    """A run directory (its best, else latest, checkpoint) or a checkpoint folder -> the folder.

    `which` is "best" or "latest". A damaged pointer falls back to the newest complete folder.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint")
    if (path / "state.json").is_file():
        return path
    if path.is_file():
        raise CheckpointError(
            f"{path}: not a charlm checkpoint (expected a run directory or a checkpoint folder "
            "holding state.json); charlm never loads pickled files"
        )
    root = path / CHECKPOINTS
    if not root.is_dir():
        raise CheckpointError(
            f"{path}: not a charlm run directory (no {CHECKPOINTS}/ folder); "
            "pass the --out folder of a `charlm train` run"
        )
    order = [which, "latest"] if which == "best" else [which]
    for pointer in order:
        name = _read_pointer(root, pointer)
        if name and (root / name / "state.json").is_file():
            return root / name
    steps = step_dirs(root)
    if not steps:
        raise CheckpointError(f"{path}: the run has no checkpoint yet (train it first)")
    return steps[-1]


@dataclass
class LoadedCheckpoint:
    """A checkpoint read from disk. Only JSON, YAML and tensor files are parsed."""

    path: Path
    info: dict[str, Any]
    config: RunConfig
    meta: dict[str, Any]
    tokenizer_json: str

    @property
    def step(self) -> int:
        return int(self.info["step"])

    def build_model(self, device: torch.device | str = "cpu") -> RNNLanguageModel:
        model = RNNLanguageModel(self.config.model, int(self.meta["vocab_size"]))
        try:
            missing, unexpected = load_model(
                model, str(self.path / "model.safetensors"), strict=False, device=str(device)
            )
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"{self.path / 'model.safetensors'}: damaged or incompatible weights ({_short(exc)})"
            ) from None
        if missing or unexpected:
            raise CheckpointError(
                f"{self.path / 'model.safetensors'}: weights do not match the config "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
            )
        return model.to(device)

    def optimizer_state(self) -> dict[str, Any]:
        path = self.path / "optimizer.pt"
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing; this checkpoint cannot be resumed") from None
        except Exception as exc:  # the weights-only unpickler refuses anything but plain data
            unsafe = _unsafe_globals(path)
            if unsafe:
                raise CheckpointError(
                    f"{path}: refused to load: it asks to run {', '.join(unsafe[:3])}; "
                    "the file is not from charlm and may be malicious"
                ) from None
            raise CheckpointError(f"{path}: damaged optimizer state ({_short(exc)})") from None

    def raw_weights(self) -> dict[str, torch.Tensor] | None:
        """The optimiser's raw weights when the checkpoint was saved mid-averaging, else None."""
        path = self.path / "raw_model.safetensors"
        if not path.is_file():
            return None
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: damaged raw weights ({_short(exc)})") from None

    def train_tensors(self) -> dict[str, torch.Tensor]:
        path = self.path / "train_state.safetensors"
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: damaged training state ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        return []


def load_checkpoint(path: Path, which: str = "best") -> LoadedCheckpoint:
    """Read a checkpoint's description; weights and optimizer load on demand."""
    folder = resolve_checkpoint(path, which)
    for name in _FILES:
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: incomplete checkpoint ({name} is missing)")
    try:
        info = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{folder}: damaged state.json or meta.json ({_short(exc)})"
        ) from None
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{folder}: not a charlm checkpoint (state.json has no charlm format)"
        )
    version = info.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder}: checkpoint format version {version} is newer than this charlm reads "
            f"({FORMAT_VERSION}); upgrade charlm"
        )
    try:
        config = build_config(base=read_yaml(folder / "config.yaml"))
    except ConfigError as exc:
        raise CheckpointError(f"{folder / 'config.yaml'}: {exc}") from None
    tokenizer_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
    _check_tokenizer(folder, tokenizer_json, meta)
    return LoadedCheckpoint(folder, info, config, meta, tokenizer_json)


def _check_tokenizer(folder: Path, tokenizer_json: str, meta: dict[str, Any]) -> None:
    """The vocabulary must be the one the weights were trained with, or sampling is nonsense."""
    from tokenizers import Tokenizer

    try:
        size = Tokenizer.from_str(tokenizer_json).get_vocab_size()
    except Exception as exc:  # tokenizers raises its own Exception type for bad JSON
        raise CheckpointError(
            f"{folder / 'tokenizer.json'}: damaged tokenizer ({_short(exc)})"
        ) from None
    if size != meta.get("vocab_size"):
        raise CheckpointError(
            f"{folder / 'tokenizer.json'}: has {size} entries but the model was trained on "
            f"{meta.get('vocab_size')}; restore the checkpoint's own tokenizer.json"
        )
