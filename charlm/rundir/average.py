"""Checkpoint averaging: the mean weights of a run's last N checkpoints, saved as a checkpoint."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_model

from charlm._version import __version__
from charlm.config import config_to_dict, config_to_yaml
from charlm.errors import CheckpointError, UsageError
from charlm.rundir.checkpoint import (
    CHECKPOINTS,
    FORMAT_NAME,
    LoadedCheckpoint,
    is_run_dir,
    load_checkpoint,
    step_dirs,
)
from charlm.rundir.names import CONFIG, META, MODEL, STATE, TOKENIZER, TOKENIZER_EXTRAS
from charlm.system.files import (
    check_destination,
    fsync_file,
    refusing,
    remove_stale_temporaries,
    replace_durably,
    temporary_sibling,
)

# state.json keys that still describe averaged weights; scores, cursor, RNG and counters belong
# to one point of training, and an average is no point to resume from.
_KEPT_INFO = ("format", "version", "step", "parameters", "world_size", "global_batch")
_ELSEWHERE = "choose another --out"  # what to do when --out cannot be written


@dataclass
class AverageResult:
    path: Path
    sources: list[Path]

    @property
    def steps(self) -> list[int]:
        return [int(p.name.split("-")[1]) for p in self.sources]


def _plan(run: Path, last: int, out: Path) -> list[Path]:
    """Every refusal, decided before anything is read in full or written."""
    if last < 1:
        raise UsageError(f"--last must be at least 1 (got {last})")
    if not is_run_dir(run):
        raise CheckpointError(
            f"{run}: not a charlm run directory; pass the --out folder of a `charlm train` run"
        )
    steps = step_dirs(run / CHECKPOINTS)
    if len(steps) < last:
        kept = ", ".join(p.name for p in steps) or "none"
        raise UsageError(
            f"--last {last}: {run} keeps {len(steps)} checkpoints ({kept}); ask for fewer, or "
            "train with a larger train.keep_checkpoints"
        )
    if out.exists():
        raise UsageError(f"{out}: already exists; give --out a new path (nothing is overwritten)")
    root = (run / CHECKPOINTS).resolve()
    if out.resolve().is_relative_to(root):
        raise UsageError(
            f"{out}: inside the run's {CHECKPOINTS}/ folder, where training would prune it; "
            "write the average elsewhere"
        )
    check_destination(out, _ELSEWHERE)
    return steps[-last:]


def _same_model(first: LoadedCheckpoint, other: LoadedCheckpoint) -> None:
    a, b = config_to_dict(first.config)["model"], config_to_dict(other.config)["model"]
    changed = [f"model.{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k]]
    if other.tokenizer_json != first.tokenizer_json:
        changed.append("tokenizer.json differs")
    if changed:
        raise CheckpointError(
            f"{other.path}: cannot be averaged with {first.path.name} ({'; '.join(changed)})"
        )


def average_checkpoints(run: Path, last: int, out: Path) -> AverageResult:
    """Mean of the weights of the `last` newest checkpoints of `run`, written as folder `out`.

    The result loads like any checkpoint for sample, evaluate and info; it has no optimizer
    state, so it is not a point to resume training from.
    """
    run, out = Path(run), Path(out)
    sources = _plan(run, last, out)
    loaded = [load_checkpoint(folder) for folder in sources]
    for other in loaded[1:]:
        _same_model(loaded[0], other)
    newest = loaded[-1]
    model = newest.build_model("cpu")
    total = {k: v.detach().to(torch.float64) for k, v in model.state_dict().items()}
    for checkpoint in loaded[:-1]:
        for key, value in checkpoint.build_model("cpu").state_dict().items():
            total[key] += value.detach().to(torch.float64)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            value.copy_((total[key] / len(loaded)).to(value.dtype))
    info = {k: newest.info[k] for k in _KEPT_INFO if k in newest.info}
    info.update(
        charlm_version=__version__,
        torch_version=torch.__version__,
        saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        averaged_from={"run": str(run), "checkpoints": [p.name for p in sources]},
    )
    _write(out, model, info, newest)
    return AverageResult(out, sources)


def _write(out: Path, model: torch.nn.Module, info: dict, newest: LoadedCheckpoint) -> None:
    """The checkpoint's files in a temporary sibling folder, fsynced, then renamed to `out`:
    `out` appears complete or not at all, even on kill -9, and what a killed average left
    beside it is removed first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = temporary_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with refusing(out, _ELSEWHERE):
            tmp.mkdir()
            save_model(model, str(tmp / MODEL), metadata={"format": FORMAT_NAME})
            (tmp / STATE).write_text(json.dumps(info, indent=1), encoding="utf-8")
            (tmp / CONFIG).write_text(config_to_yaml(newest.config), encoding="utf-8")
            (tmp / TOKENIZER).write_text(newest.tokenizer_json, encoding="utf-8")
            for name in TOKENIZER_EXTRAS:  # transformers' files, where the newest has them
                if (newest.path / name).is_file():
                    shutil.copyfile(newest.path / name, tmp / name)
            (tmp / META).write_text(json.dumps(newest.meta, indent=1), encoding="utf-8")
            for file in tmp.iterdir():
                fsync_file(file)
            replace_durably(tmp, out)  # fsyncs the folder tmp, renames it, fsyncs out's folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
