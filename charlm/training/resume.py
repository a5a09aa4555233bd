"""Exact resume: RNG capture and restore by rank, carried state, averaged weights, refusals.

What a checkpoint's train_state.safetensors holds, by key (the constants below): the carried
state of every stream of the job in global order (STATE_H, and STATE_C for paired cells), the
main process's torch generator (RNG_TORCH, RNG_CUDA_PREFIX + device) and every process's own
(RNG_TORCH_RANKS, RNG_CUDA_RANKS), which decide its dropout masks.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charlm.config import RESUME_SAFE_KEYS, RunConfig, config_changes
from charlm.errors import UsageError
from charlm.model.cells import State, map_state
from charlm.rundir.checkpoint import LoadedCheckpoint
from charlm.system.distributed import DistContext
from charlm.training.ntasgd import WeightAverager

STATE_H, STATE_C = "state_h", "state_c"
RNG_TORCH, RNG_CUDA_PREFIX = "rng_torch", "rng_cuda_"
RNG_TORCH_RANKS, RNG_CUDA_RANKS = "rng_torch_ranks", "rng_cuda_ranks"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def refuse_unsafe_changes(saved: RunConfig, wanted: RunConfig, run_dir: Path) -> None:
    """A resume may change only RESUME_SAFE_KEYS; anything else changes the model or data."""
    changed = [
        f"{key}: {old!r} -> {new!r}"
        for key, old, new in config_changes(saved, wanted)
        if key not in RESUME_SAFE_KEYS
    ]
    if changed:
        raise UsageError(
            f"{run_dir}: cannot resume with settings that change the model or data: "
            + "; ".join(changed)
            + " (start a new run with another --out, or drop these overrides)"
        )


def check_global_batch(
    loaded: LoadedCheckpoint, config: RunConfig, world_size: int, run_dir: Path
) -> None:
    """Resume on any number of processes that keeps the global batch (so the streams)."""
    old, new = loaded.config.train, config.train
    saved_world = loaded.state.world_size
    saved = old.batch_size * saved_world * old.grad_accum
    wanted = new.batch_size * world_size * new.grad_accum
    if saved == wanted:
        return
    per_step = new.batch_size * world_size
    hint = (
        f"--set train.grad_accum={saved // per_step}"
        if saved % per_step == 0
        else f"train.batch_size x processes x train.grad_accum = {saved}"
    )
    raise UsageError(
        f"{run_dir}: the run's global batch is {saved} (batch_size {old.batch_size} x "
        f"{saved_world} processes x grad_accum {old.grad_accum}) but this resume makes it "
        f"{wanted} ({new.batch_size} x {world_size} x {new.grad_accum}), which would change "
        f"the data layout; keep it, e.g. {hint}"
    )


def state_tensors(state: State) -> dict[str, torch.Tensor]:
    if isinstance(state, tuple):
        return {STATE_H: state[0], STATE_C: state[1]}
    return {STATE_H: state}


def gather_state(dist: DistContext, state: State) -> State:
    """The carried state of every stream of the job, in global stream order (for checkpoints)."""
    return map_state(dist.gather_columns, state)


def shard_state(
    tensors: dict[str, torch.Tensor], first: int, count: int, device: torch.device
) -> State:
    """This process's streams [first, first + count) of a checkpoint's carried state."""
    h = tensors[STATE_H][:, first : first + count].contiguous().to(device)
    if STATE_C in tensors:
        return (h, tensors[STATE_C][:, first : first + count].contiguous().to(device))
    return h


def rng_snapshot() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The main process's generators: Python's and NumPy's (JSON), torch's (tensors)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    info = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    tensors = {RNG_TORCH: torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{RNG_CUDA_PREFIX}{i}"] = s
    return info, tensors


def rank_rng(dist: DistContext, device: torch.device) -> dict[str, torch.Tensor]:
    """Every process's torch generators, stacked by rank (a collective: all processes call)."""
    tensors = {RNG_TORCH_RANKS: dist.all_gather(torch.get_rng_state())}
    if device.type == "cuda":
        tensors[RNG_CUDA_RANKS] = dist.all_gather(torch.cuda.get_rng_state(device))
    return tensors


def rng_restore(info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = info["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(tensors[RNG_TORCH])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith(RNG_CUDA_PREFIX)]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def restore_rank_rng(
    tensors: dict[str, torch.Tensor], dist: DistContext, device: torch.device, seed: int, step: int
) -> None:
    """Each process's own torch generators (its dropout masks), saved by rank.

    A process the saved run did not have starts a fresh generator from (seed, rank, step).
    """
    saved = tensors.get(RNG_TORCH_RANKS)
    if saved is None:  # a checkpoint from before per-rank states: rank 0's state is restored
        return
    if dist.rank >= saved.shape[0]:
        torch.manual_seed(int(np.random.SeedSequence([seed, dist.rank, step]).generate_state(1)[0]))
        return
    # clone(): set_rng_state reads a row of the stacked states from its storage's start.
    torch.set_rng_state(saved[dist.rank].clone())
    saved_cuda = tensors.get(RNG_CUDA_RANKS)
    if saved_cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(saved_cuda[dist.rank].clone(), device)


def restore_averaging(
    model: torch.nn.Module, averager: WeightAverager, loaded: LoadedCheckpoint
) -> None:
    """NT-ASGD mid-averaging: the checkpoint's model holds the mean, raw_model the weights the
    optimiser steps. Put the raw ones in the model and the mean back in the averager."""
    raw = loaded.raw_weights()
    if raw is None:
        return
    average = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(raw[name])
    averager.load(average, loaded.state.averaged_steps)
