"""Opening a training run: its settings, every refusal before a byte is written, the lock,
the process group; then the `Trainer` (trainer.py) runs it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from charlm.config import RunConfig, build_config, config_to_dict
from charlm.data.prepare import PrepareSettings, load_prepared
from charlm.data.tokenizer import LEGACY_SENTENCE_SPLIT
from charlm.errors import CheckpointError, UsageError
from charlm.rundir.checkpoint import (
    LoadedCheckpoint,
    has_checkpoint,
    is_run_dir,
    load_checkpoint,
)
from charlm.rundir.lock import RunLock
from charlm.system.device import resolve_device
from charlm.system.distributed import DistContext, setup_distributed
from charlm.tasks.masks import check_task_settings
from charlm.training.precision import check_precision
from charlm.training.preflight import (
    DataPlan,
    check_memory,
    check_out_dir,
    check_still_latest,
    plan_data,
    vocab_estimate,
)
from charlm.training.resume import (
    check_global_batch,
    refuse_unsafe_changes,
)
from charlm.training.tensorboard_log import check_tensorboard
from charlm.training.trainer import Trainer, TrainResult
from charlm.training.wandb_log import check_wandb
from charlm.training.warmstart import WarmStart, open_warm_start


def train(
    run_dir: Path,
    *,
    text: Path | None = None,
    data_dir: Path | None = None,
    val_file: Path | None = None,
    config_file: Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    resume: bool = False,
    force: bool = False,
    show_progress: bool = True,
    errors: str = "strict",
    init_from: Path | None = None,
    init_keep: Iterable[str] = (),
) -> TrainResult:
    """Train a model into `run_dir`, or continue the run there with `resume`.

    Data comes from `data_dir` (made by `charlm prepare`), else `text` is prepared into
    RUN_DIR/data (cached; `errors="replace"` accepts invalid UTF-8), else the built-in corpus is.
    `init_from` starts from another run's weights and vocabulary (warmstart.py).
    """
    run_dir = Path(run_dir)
    warm = None
    if init_from is not None:
        warm = open_warm_start(init_from, init_keep, run_dir, resume=resume, data_dir=data_dir)
    config, loaded = _open_run(run_dir, data_dir, config_file, overrides, resume, force, warm)
    # Every refusal is decided here, before the run directory is touched (README, "Resuming
    # and recovering"): the data is found and checked, not yet prepared.
    check_memory(config, vocab_estimate(config, loaded or (warm and warm.source), data_dir))
    check_tensorboard(config.train.tensorboard)
    check_wandb(config.train.wandb)
    settings = PrepareSettings.from_config(config.data, val_file, errors)
    plan = plan_data(
        run_dir,
        config,
        loaded,
        text,
        data_dir,
        settings,
        show_progress and is_main_process(),
        vocabulary=warm.tokenizer_json if warm else None,
    )
    _check_task(config, plan, text)
    dist = setup_distributed(config.train.device, config.train.dist_timeout_s)
    try:
        if loaded is not None:
            check_global_batch(loaded, config, dist.world_size, run_dir)
        device = resolve_device(config.train.device, dist.local_rank)
        check_precision(config.train.precision, device)  # bf16: CUDA, or native on a CPU
        with _run_lock(run_dir, dist, loaded):
            result = Trainer(run_dir, config, dist, loaded, plan, force, show_progress, warm).run()
    except RuntimeError as exc:
        if dist.is_peer_failure(exc):  # a collective failed: another rank died or hung
            # No orderly teardown of a broken group: it can block on the dead peer.
            raise dist.peer_failure(exc) from None
        dist.close()
        raise
    except BaseException:
        dist.close()
        raise
    dist.close()
    return result


def _open_run(
    run_dir: Path,
    data_dir: Path | None,
    config_file: Path | None,
    overrides: tuple[str, ...] | list[str],
    resume: bool,
    force: bool,
    warm: WarmStart | None = None,
) -> tuple[RunConfig, LoadedCheckpoint | None]:
    """The run's settings and, with `resume`, its latest checkpoint; refuses what cannot be."""
    if resume and force:
        raise UsageError("--resume and --force contradict each other; pass one")
    check_out_dir(run_dir)
    if resume:
        if not has_checkpoint(run_dir):
            raise CheckpointError(
                f"{run_dir}: no checkpoint to resume from; start the run without --resume"
                + (" (add --force to replace what is there)" if is_run_dir(run_dir) else "")
            )
        loaded = load_checkpoint(run_dir, "latest")
        config = build_config(
            base=config_to_dict(loaded.config), config_file=config_file, overrides=overrides
        )
        refuse_unsafe_changes(loaded.config, config, run_dir)
        loaded.preload_optimizer_state()  # a damaged or unsafe file is refused now
        return config, loaded
    if data_dir is not None and warm is None:
        # Prepared data says what it is: its level overrides the config file's (an explicit
        # --set data.level still wins, and must then agree).
        overrides = [*_prepared_settings(Path(data_dir)), *overrides]
    if warm is not None:  # the source's settings; its shape and vocabulary cannot change
        config = warm.config(config_file, overrides)
    else:
        config = build_config(config_file=config_file, overrides=overrides)
    if is_run_dir(run_dir) and not force:
        raise UsageError(
            f"{run_dir} already holds a run; pass --resume to continue it, "
            "--force to start over (its checkpoints are deleted), or another --out"
        )
    return config, None


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a process alone (before the process group exists)."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def _run_lock(run_dir: Path, dist: DistContext, loaded: LoadedCheckpoint | None) -> Iterator[None]:
    """The main process holds the run's lock (rundir/lock.py) for the whole of training."""
    if not dist.is_main:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        check_still_latest(run_dir, loaded)
        yield


def _prepared_settings(data_dir: Path) -> list[str]:
    """The data.* settings a prepared folder was made with, as overrides (absent: defaults)."""
    meta = load_prepared(data_dir).meta
    settings = meta.get("settings", {})
    keys = ("lowercase", "segments", "word_split", "sentence_split")
    keys = keys if meta["level"] == "word" else ()
    if keys and "sentence_split" not in settings:  # data made before the setting: the rule
        settings = {**settings, "sentence_split": LEGACY_SENTENCE_SPLIT}
    # The vocabulary the data holds (not the data.vocab_size default) goes into config.yaml.
    vocab = [f"data.vocab_size={meta['vocab_size']}"] if meta["level"] != "char" else []
    return [f"data.level={meta['level']}", *vocab] + [
        f"data.{key}={settings[key]}" for key in keys if key in settings
    ]


def _check_task(config: RunConfig, plan: DataPlan, text: Path | None) -> None:
    """best_by and the curriculum need what the data's mask provides: refused before writing."""
    if plan.prepare is not None:
        masks = plan.prepare.inputs.masks
        info, source = (masks.info if masks else None), str(text or "the built-in corpus")
    else:
        info, source = load_prepared(plan.data_dir).meta.get("task"), str(plan.data_dir)
    t = config.train
    check_task_settings(t.best_by, t.curriculum_metric, info, source)
