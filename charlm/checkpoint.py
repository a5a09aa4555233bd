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

import dataclasses
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from charlm import __version__
from charlm.config import RunConfig, build_config, config_to_yaml, read_yaml
from charlm.device import resolve_device
from charlm.errors import CheckpointError, ConfigError
from charlm.model import RNNLanguageModel
from charlm.runfiles import (
    BEST,
    CHECKPOINTS,
    CONFIG,
    LATEST,
    META,
    MODEL,
    OPTIMIZER,
    RAW_MODEL,
    STATE,
    TOKENIZER,
    TRAIN_STATE,
)

__all__ = ["CHECKPOINTS"]  # re-exported: callers imported it from here before runfiles.py

FORMAT_NAME = "charlm-checkpoint"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_FILES = (MODEL, STATE, CONFIG, TOKENIZER, META)


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
class RunState:
    """Where a run stands, besides weights, optimiser and tensors: `state.json` of a checkpoint.

    `from_json` is the one reader of state.json files, including those of older versions (a key
    they lack takes its default here); `to_json` writes the same keys as every format-1 file.
    """

    step: int
    epoch: int = 0  # the data cursor
    position: int = 0
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    bad_steps: int = 0
    clipped_steps: int = 0
    evals_since_best: int = 0
    val_history: list[float] = field(default_factory=list)  # every validation loss (NT-ASGD)
    plateau_scale: float = 1.0  # schedule=plateau: the factor past plateaus left
    plateau_bad_evals: int = 0
    averaged_steps: int = 0  # NT-ASGD: steps in the running mean
    rng: dict[str, Any] = field(default_factory=dict)  # Python's and NumPy's generators
    world_size: int = 1
    global_batch: int | None = None
    data_dir: str = ""
    parameters: int | None = None
    # Written by save_checkpoint, read by `charlm info`.
    version: int = FORMAT_VERSION
    charlm_version: str | None = None
    torch_version: str | None = None
    saved_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": self.version,
            "charlm_version": self.charlm_version,
            "torch_version": self.torch_version,
            "saved_at": self.saved_at,
            "step": self.step,
            "cursor": {"epoch": self.epoch, "position": self.position},
            "best_val_loss": self.best_val_loss,
            "last_val_loss": self.last_val_loss,
            "counters": {
                "bad_steps": self.bad_steps,
                "clipped_steps": self.clipped_steps,
                "evals_since_best": self.evals_since_best,
            },
            "val_history": self.val_history,
            "plateau": {"scale": self.plateau_scale, "bad_evals": self.plateau_bad_evals},
            "averaged_steps": self.averaged_steps,
            "rng": self.rng,
            "world_size": self.world_size,
            "global_batch": self.global_batch,
            "data_dir": self.data_dir,
            "parameters": self.parameters,
        }

    @classmethod
    def from_json(cls, info: dict[str, Any]) -> RunState:
        cursor = info.get("cursor") or {}
        counters = info.get("counters") or {}
        plateau = info.get("plateau") or {}
        return cls(
            step=int(info["step"]),
            epoch=int(cursor.get("epoch", 0)),
            position=int(cursor.get("position", 0)),
            best_val_loss=info.get("best_val_loss"),
            last_val_loss=info.get("last_val_loss"),
            bad_steps=int(counters.get("bad_steps", 0)),
            clipped_steps=int(counters.get("clipped_steps", 0)),
            evals_since_best=int(counters.get("evals_since_best", 0)),
            val_history=list(info.get("val_history", [])),
            plateau_scale=float(plateau.get("scale", 1.0)),
            plateau_bad_evals=int(plateau.get("bad_evals", 0)),
            averaged_steps=int(info.get("averaged_steps", 0)),
            rng=info.get("rng") or {},
            world_size=int(info.get("world_size", 1)),
            global_batch=info.get("global_batch"),
            data_dir=str(info.get("data_dir", "")),
            parameters=info.get("parameters"),
            version=int(info.get("version", FORMAT_VERSION)),
            charlm_version=info.get("charlm_version"),
            torch_version=info.get("torch_version"),
            saved_at=info.get("saved_at"),
        )


@dataclass
class TrainingState:
    """Everything besides weights and optimizer that an exact resume needs."""

    state: RunState
    tensors: dict[str, torch.Tensor]  # hidden state, torch RNG states (resume.py names them)

    @property
    def step(self) -> int:
        return self.state.step


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
    save_model(model, str(tmp / MODEL), metadata={"format": FORMAT_NAME})
    if raw_weights is not None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in raw_weights.items()},
            str(tmp / RAW_MODEL),
        )
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in state.tensors.items()},
        str(tmp / TRAIN_STATE),
    )
    info = dataclasses.replace(
        state.state,
        version=FORMAT_VERSION,
        charlm_version=__version__,
        torch_version=torch.__version__,
        saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    ).to_json()
    (tmp / STATE).write_text(json.dumps(info, indent=1), encoding="utf-8")
    (tmp / CONFIG).write_text(config_to_yaml(config), encoding="utf-8")
    (tmp / TOKENIZER).write_text(tokenizer_json, encoding="utf-8")
    (tmp / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
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
    atomic_write_text(root / LATEST, json.dumps({"name": name, "step": state.step}))
    if is_best:
        best = {"name": name, "step": state.step, "val_loss": info.get("best_val_loss")}
        atomic_write_text(root / BEST, json.dumps(best))
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
    return (path / CHECKPOINTS).is_dir() or (path / CONFIG).is_file()


def has_checkpoint(run_dir: Path) -> bool:
    return bool(step_dirs(Path(run_dir) / CHECKPOINTS))


def resolve_checkpoint(path: Path, which: str = "best") -> Path:
    """A run directory (its best, else latest, checkpoint) or a checkpoint folder -> the folder.

    `which` is "best" or "latest". A damaged pointer falls back to the newest complete folder.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint")
    if (path / STATE).is_file():
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
        if name and (root / name / STATE).is_file():
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

    @property
    def state(self) -> RunState:
        return RunState.from_json(self.info)

    def build_model(self, device: torch.device | str = "cpu") -> RNNLanguageModel:
        model = RNNLanguageModel(self.config.model, int(self.meta["vocab_size"]))
        try:
            missing, unexpected = load_model(
                model, str(self.path / MODEL), strict=False, device=str(device)
            )
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"{self.path / MODEL}: damaged or incompatible weights ({_short(exc)})"
            ) from None
        if missing or unexpected:
            raise CheckpointError(
                f"{self.path / MODEL}: weights do not match the config "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
            )
        return model.to(device)

    def optimizer_state(self) -> dict[str, Any]:
        path = self.path / OPTIMIZER
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
        path = self.path / RAW_MODEL
        if not path.is_file():
            return None
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: damaged raw weights ({_short(exc)})") from None

    def train_tensors(self) -> dict[str, torch.Tensor]:
        path = self.path / TRAIN_STATE
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
        info = json.loads((folder / STATE).read_text(encoding="utf-8"))
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
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
        config = build_config(base=read_yaml(folder / CONFIG))
    except ConfigError as exc:
        raise CheckpointError(f"{folder / CONFIG}: {exc}") from None
    tokenizer_json = (folder / TOKENIZER).read_text(encoding="utf-8")
    _check_tokenizer(folder, tokenizer_json, meta)
    return LoadedCheckpoint(folder, info, config, meta, tokenizer_json)


def open_for_use(
    path: Path, which: str = "best", device: str = "auto"
) -> tuple[LoadedCheckpoint, RNNLanguageModel]:
    """A checkpoint and its model in eval mode, for sample, evaluate and gradients alike.

    `device` "auto" means the run's own train.device (itself "auto" unless the run chose one:
    CUDA, then MPS, then the CPU); any other name must exist."""
    loaded = load_checkpoint(path, which)
    wanted = device if device != "auto" else loaded.config.train.device
    return loaded, loaded.build_model(resolve_device(wanted)).eval()


def _check_tokenizer(folder: Path, tokenizer_json: str, meta: dict[str, Any]) -> None:
    """The vocabulary must be the one the weights were trained with, or sampling is nonsense."""
    from tokenizers import Tokenizer

    try:
        size = Tokenizer.from_str(tokenizer_json).get_vocab_size()
    except Exception as exc:  # tokenizers raises its own Exception type for bad JSON
        raise CheckpointError(f"{folder / TOKENIZER}: damaged tokenizer ({_short(exc)})") from None
    if size != meta.get("vocab_size"):
        raise CheckpointError(
            f"{folder / TOKENIZER}: has {size} entries but the model was trained on "
            f"{meta.get('vocab_size')}; restore the checkpoint's own tokenizer.json"
        )
