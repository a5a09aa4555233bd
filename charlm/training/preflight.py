"""What `train` decides before it writes a byte: the output folder, the data, memory, resuming."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlm.config import RunConfig
from charlm.data.prepare import PreparePlan, PrepareSettings, load_prepared, plan_prepare
from charlm.errors import CheckpointError, DataError, UsageError, human_bytes
from charlm.model.cells import CELLS
from charlm.rundir.checkpoint import resolve_checkpoint
from charlm.system.device import available_memory, resolve_device
from charlm.training.optimizers import optimizer_entry

CHAR_VOCAB_GUESS = 256  # a char vocabulary's size is known only once prepared; most are below


@dataclass
class DataPlan:
    """Where the run's data is, and the preparation still to do (`prepare` None: none)."""

    data_dir: Path
    prepare: PreparePlan | None = None


def check_out_dir(run_dir: Path) -> None:
    """--out must be a folder (or not exist yet) on a writable file system."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir}: --out names a file, not a folder; give a folder for the run")
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    check_writable(existing)


def check_writable(folder: Path) -> None:
    """Refuse a read-only file system or a folder this user may not write, before writing."""
    if os.access(folder, os.W_OK | os.X_OK):
        return
    statvfs = getattr(os, "statvfs", None)  # POSIX only: Windows says "permission denied"
    if statvfs is not None and statvfs(folder).f_flag & os.ST_RDONLY:
        raise UsageError(f"{folder}: read-only file system; give an --out on a writable one")
    raise UsageError(
        f"{folder}: permission denied; give an --out you may write, or fix its permissions"
    )


def plan_data(
    run_dir: Path,
    config: RunConfig,
    loaded: Any,
    text: Path | None,
    data_dir: Path | None,
    settings: PrepareSettings,
    show: bool,
    vocabulary: str | None = None,
) -> DataPlan:
    """Find (and, for a text, read and check) the run's data; refuse data a resumed run was not
    trained on. Nothing is written: RUN/data is prepared later, from this plan.

    `vocabulary` (train --init-from) encodes the text with that tokenizer.json; a resumed run
    whose data was encoded so is encoded with its own again."""
    if data_dir is None and text is None and loaded is not None:
        data_dir = Path(loaded.info["data_dir"])
        if not (data_dir / "meta.json").is_file():
            raise DataError(
                f"{data_dir}: the prepared data this run trained on is gone; pass the text "
                "again (charlm train TEXT --out RUN --resume) or --data DIR"
            )
    if data_dir is not None:
        meta = load_prepared(data_dir).meta
        _check_same_data(data_dir, meta.get("cache_key"), loaded)
        if meta["level"] != config.data.level:
            raise UsageError(
                f"{data_dir}: prepared at level '{meta['level']}' but data.level is "
                f"'{config.data.level}'; prepare again or set data.level={meta['level']}"
            )
        return DataPlan(Path(data_dir))
    if vocabulary is None and loaded is not None and loaded.meta.get("vocabulary_sha256"):
        vocabulary = loaded.tokenizer_json
    plan = plan_prepare(text, Path(run_dir) / "data", settings, show, vocabulary)
    _check_same_data(Path(text or "the built-in corpus"), plan.cache_key, loaded)
    return DataPlan(plan.out_dir, plan)


def _check_same_data(source: Path, cache_key: str | None, loaded: Any) -> None:
    if loaded is not None and cache_key != loaded.meta.get("cache_key"):
        raise UsageError(
            f"{source}: this is not the data the run was trained on (its input or preparation "
            "settings differ); resume with the original text or --data folder (nothing was "
            "changed)"
        )


def vocab_estimate(config: RunConfig, loaded: Any, data_dir: Path | None) -> int:
    """The vocabulary size if known (checkpoint, prepared data), else what the settings allow:
    known before any text is read, so a model too large is refused without reading it."""
    if loaded is not None:
        return int(loaded.meta["vocab_size"])
    if data_dir is not None:
        return int(load_prepared(data_dir).meta["vocab_size"])
    return CHAR_VOCAB_GUESS if config.data.level == "char" else config.data.vocab_size


def parameter_estimate(config: RunConfig, vocab: int) -> int:
    """Parameters of the model the settings build (recurrent layers, embedding, decoder)."""
    m = config.model
    gates = CELLS[m.cell].gates
    total = vocab * m.embedding_dim
    for layer in range(m.layers):
        width = m.embedding_dim if layer == 0 else m.hidden_size
        total += gates * m.hidden_size * (width + m.hidden_size + 2)
    out = m.embedding_dim if m.tie_weights else m.hidden_size
    if m.tie_weights and m.embedding_dim != m.hidden_size:
        total += m.hidden_size * m.embedding_dim
    return total + (0 if m.tie_weights else out * vocab) + vocab


def memory_estimate(config: RunConfig, vocab: int) -> tuple[int, int]:
    """(parameters, bytes) training needs: fp32 weights, gradients and optimizer state, plus the
    activations of one micro-batch kept for back-propagation (each layer's gates and output,
    the logits with their softmax and gradient)."""
    m, t = config.model, config.train
    params = parameter_estimate(config, vocab)
    state_bytes = 4 * params * (2 + optimizer_entry(config.optim.name).state_copies)
    per_token = m.layers * (CELLS[m.cell].gates + 2) * m.hidden_size + m.embedding_dim + 3 * vocab
    return params, state_bytes + 4 * t.batch_size * t.seq_len * per_token


def check_memory(config: RunConfig, vocab: int) -> None:
    """Refuse a model that cannot fit, with the figure, before any data is prepared."""
    params, needed = memory_estimate(config, vocab)
    device = resolve_device(config.train.device)
    free = available_memory(device)
    if free is None or needed <= free:
        return
    raise UsageError(
        f"model.hidden_size={config.model.hidden_size}, model.layers={config.model.layers}: "
        f"about {params:,} parameters needing {human_bytes(needed)} to train, but {device.type} "
        f"has {human_bytes(free)} free; use a smaller model.hidden_size, model.layers or "
        "train.batch_size"
    )


def check_still_latest(run_dir: Path, loaded: Any) -> None:
    """After taking the run's lock: the checkpoint read before is still the newest one."""
    if loaded is not None and resolve_checkpoint(run_dir, "latest") != loaded.path:
        raise CheckpointError(
            f"{run_dir}: another trainer saved a newer checkpoint while this one started; "
            "run the command again"
        )
