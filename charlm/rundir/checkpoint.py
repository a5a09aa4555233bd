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
import errno
import hashlib
import json
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from charlm._version import __version__
from charlm.config import RunConfig, build_config, config_to_yaml, read_yaml
from charlm.errors import CheckpointError, ConfigError, environment_error, human_bytes
from charlm.model.network import RNNLanguageModel
from charlm.rundir.names import (
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
from charlm.system.device import resolve_device
from charlm.system.files import atomic_write_text, fsync_file, replace_durably, writing

__all__ = ["CHECKPOINTS"]  # re-exported: callers imported it from here before runfiles.py

FORMAT_NAME = "charlm-checkpoint"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_FILES = (MODEL, STATE, CONFIG, TOKENIZER, META)


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
    # charlm/tasks/curriculum.py: the curriculum's stage (None: no curriculum) and train.best_by's best
    # value (None: val_loss, kept in best_val_loss). Written only when set (state.json "task").
    curriculum_stage: int | None = None
    best_metric: float | None = None
    # Seconds of training and training targets read, over every resume (metrics.jsonl's
    # elapsed_s and tokens); a checkpoint written by an earlier charlm may have neither: its time counts
    # from 0 when resumed, and its tokens stay unknown (None).
    elapsed_s: float = 0.0
    tokens: int | None = None
    # The CPU threads the run trained with (train.threads=0 keeps it on resume: a thread change
    # alters the last bits); None off the CPU and in checkpoints an earlier charlm wrote.
    threads: int | None = None
    # Written by save_checkpoint, read by `charlm info`.
    version: int = FORMAT_VERSION
    charlm_version: str | None = None
    torch_version: str | None = None
    saved_at: str | None = None
    tokenizer_sha256: str | None = None  # absent in older checkpoints: size-checked

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
            "elapsed_s": self.elapsed_s,
            "tokens": self.tokens,
            **({"threads": self.threads} if self.threads else {}),
            **({"tokenizer_sha256": self.tokenizer_sha256} if self.tokenizer_sha256 else {}),
            **self._task_json(),
        }

    def _task_json(self) -> dict[str, Any]:
        if self.curriculum_stage is None and self.best_metric is None:
            return {}
        return {"task": {"stage": self.curriculum_stage, "best": self.best_metric}}

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
            curriculum_stage=(info.get("task") or {}).get("stage"),
            best_metric=(info.get("task") or {}).get("best"),
            elapsed_s=float(info.get("elapsed_s") or 0.0),
            tokens=info.get("tokens"),
            threads=info.get("threads"),
            version=int(info.get("version", FORMAT_VERSION)),
            charlm_version=info.get("charlm_version"),
            torch_version=info.get("torch_version"),
            saved_at=info.get("saved_at"),
            tokenizer_sha256=info.get("tokenizer_sha256"),
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
    tokenizer_files: dict[str, str] | None = None,
) -> Path:
    """Write step-NNNNNNNN/ atomically, move the pointers, prune old ones; returns the folder.

    `raw_weights` (NT-ASGD, while averaging): the weights the optimiser steps, saved beside the
    model's (which then hold the average) as raw_model.safetensors, for resume.
    `tokenizer_files`: name -> text of files beside tokenizer.json (TOKENIZER_EXTRAS: the
    special tokens for transformers, data/tokenizer.transformers_files); never read by charlm.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root)  # a failed write's folder keeps its space until removed
    name = f"step-{state.step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        with writing(final):  # safetensors words a full disk its own way: as the OSError
            info = _write_files(
                tmp, model, optimizer, config, tokenizer_json, meta, state, raw_weights
            )
            for file_name, text in (tokenizer_files or {}).items():
                (tmp / file_name).write_text(text, encoding="utf-8")
            for file in tmp.iterdir():
                fsync_file(file)
    except (OSError, RuntimeError) as exc:
        needed = _tensor_bytes(model, optimizer, state, raw_weights)
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failure(exc, root, state.step, needed) from None
    if final.exists():  # the same step saved again (after an interrupt): swap, then drop the old
        old = root / f".old-{name}-{os.getpid()}"
        replace_durably(final, old)
        replace_durably(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        replace_durably(tmp, final)  # fsyncs the folder tmp, renames it, fsyncs root
    atomic_write_text(root / LATEST, json.dumps({"name": name, "step": state.step}))
    if is_best:
        best = {"name": name, "step": state.step, "val_loss": info.get("best_val_loss")}
        atomic_write_text(root / BEST, json.dumps(best))
    _prune(root, keep)
    return final


def _write_files(
    tmp: Path,
    model: RNNLanguageModel,
    optimizer: torch.optim.Optimizer,
    config: RunConfig,
    tokenizer_json: str,
    meta: dict[str, Any],
    state: TrainingState,
    raw_weights: dict[str, torch.Tensor] | None,
) -> dict[str, Any]:
    """Every file of one checkpoint, into the temporary folder `tmp`; returns state.json's."""
    save_model(model, str(tmp / MODEL), metadata={"format": FORMAT_NAME})
    if raw_weights is not None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in raw_weights.items()},
            str(tmp / RAW_MODEL),
        )
    with open(tmp / OPTIMIZER, "wb") as file:  # a full disk is then an OSError, not torch's
        torch.save(optimizer.state_dict(), file)
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
        tokenizer_sha256=tokenizer_sha256(tokenizer_json),
    ).to_json()
    (tmp / STATE).write_text(json.dumps(info, indent=1), encoding="utf-8")
    (tmp / CONFIG).write_text(config_to_yaml(config), encoding="utf-8")
    (tmp / TOKENIZER).write_text(tokenizer_json, encoding="utf-8")
    (tmp / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return info


def tokenizer_sha256(tokenizer_json: str) -> str:
    return hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()


def _tensor_bytes(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    raw_weights: dict[str, torch.Tensor] | None,
) -> int:
    """About what one checkpoint takes on disk: its tensors' bytes."""
    tensors = list(model.state_dict().values()) + list(state.tensors.values())
    tensors += list((raw_weights or {}).values())
    for values in optimizer.state.values():
        tensors += [v for v in values.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _write_failure(exc: BaseException, root: Path, step: int, needed: int) -> Exception:
    """A failed checkpoint write as a one-line error; disk full says what it needed and had.

    torch.save reports a full disk as a RuntimeError from its zip writer, not an OSError, so
    a RuntimeError counts as disk full when the free space is below what the write needed.
    """
    free = shutil.disk_usage(root).free
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or (isinstance(exc, RuntimeError) and free < needed):
        again = (
            "resume with --resume"
            if step_dirs(root)
            else "start again with --force (no checkpoint was saved yet to resume from)"
        )
        return CheckpointError(
            f"{root}: disk full while saving step {step} (needs about {human_bytes(needed)}, "
            f"{human_bytes(free)} free); nothing partial was left: free some space and {again}"
        )
    if isinstance(exc, OSError):
        found = environment_error(exc)
        if found is not None:
            return found
    return exc  # type: ignore[return-value]


def _remove_stale_temps(root: Path) -> None:
    """Temporary folders of writers that are gone (one trainer per run: any but ours)."""
    for pattern in (".tmp-*", ".old-*"):  # .old-: a kill between the two renames of a swap
        for stale in root.glob(pattern):
            if stale.is_dir() and not stale.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(stale, ignore_errors=True)


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
    _optimizer: dict[str, Any] | None = field(default=None, repr=False, compare=False)

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

    def preload_optimizer_state(self) -> None:
        """Read (and so check) the optimizer state now, before anything is written; the next
        `optimizer_state()` hands it over."""
        self._optimizer = self.optimizer_state()

    def optimizer_state(self) -> dict[str, Any]:
        if self._optimizer is not None:
            state, self._optimizer = self._optimizer, None
            return state
        path = self.path / OPTIMIZER
        try:
            with warnings.catch_warnings():  # torch's warnings would advise the unsafe load
                warnings.simplefilter("ignore")
                return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing; this checkpoint cannot be resumed") from None
        except Exception:  # the weights-only unpickler refuses anything but plain data
            unsafe = _unsafe_globals(path)
            if unsafe:
                raise CheckpointError(
                    f"{path}: refused to load: it asks to call {', '.join(unsafe[:3])}; nothing "
                    "was run; the file is not from charlm and may be malicious"
                ) from None
            # torch's own text is left out: it suggests weights_only=False, the unsafe way.
            raise CheckpointError(
                f"{path}: damaged optimizer state (not a file that torch.save wrote, or cut "
                "short); nothing was run; resume from another checkpoint"
            ) from None

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
    """The callables a torch file (zip) or a raw pickle names, read without running any."""
    try:
        found = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        found = []
    return found or _pickle_globals(path)


def _pickle_globals(path: Path) -> list[str]:
    """'module.name' of every GLOBAL/STACK_GLOBAL in the pickles of a raw (non-zip) file.

    pickletools only decodes opcodes; nothing is imported or called. STACK_GLOBAL takes its
    module and name from the two strings pushed before it.
    """
    import pickletools

    found: list[str] = []
    try:
        with open(path, "rb") as f:
            while len(found) < 10 and f.peek(1):
                strings: list[str] = []
                for opcode, arg, _ in pickletools.genops(f):
                    if opcode.name == "GLOBAL":
                        found.append(str(arg).replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
    except Exception:  # not a pickle, or cut short: whatever was decoded so far
        pass
    plain = ("collections.OrderedDict", "torch._utils._rebuild_tensor_v2")
    return [name for name in dict.fromkeys(found) if name not in plain]


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
    _check_tokenizer(folder, tokenizer_json, meta, info.get("tokenizer_sha256"))
    return LoadedCheckpoint(folder, info, config, meta, tokenizer_json)


def open_for_use(
    path: Path, which: str = "best", device: str = "auto"
) -> tuple[LoadedCheckpoint, RNNLanguageModel]:
    """A checkpoint and its model in eval mode, for sample, evaluate and gradients alike.

    `device` "auto" means the run's own train.device (itself "auto" unless the run chose one:
    CUDA, then MPS, then the CPU); any other name must exist."""
    loaded = load_checkpoint(path, which)
    wanted = device if device != "auto" else loaded.config.train.device
    return loaded, loaded.build_model(resolve_device(wanted, flag="--device")).eval()


def _check_tokenizer(
    folder: Path, tokenizer_json: str, meta: dict[str, Any], sha256: str | None
) -> None:
    """The vocabulary must be the one the weights were trained with, or sampling is nonsense.

    Checkpoints record the tokenizer's sha256 (older ones do not, and are checked by size)."""
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
    if sha256 is not None and tokenizer_sha256(tokenizer_json) != sha256:
        raise CheckpointError(
            f"{folder / TOKENIZER}: not the vocabulary the model was trained with (its "
            "sha256 differs from the one in state.json); restore the checkpoint's own "
            "tokenizer.json"
        )
