"""Signs that training went wrong: non-finite weights, an exploding loss, the checkpoint to go back to."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from charlm.rundir.checkpoint import CHECKPOINTS, has_checkpoint, resolve_checkpoint

EXPLOSION_FACTOR = 10.0  # a loss this many times a uniform guess's is "exploding"


def all_finite(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Whether every weight and every floating optimizer state is finite (one read-back)."""
    tensors = [p.detach() for p in model.parameters()]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v) and v.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def recovery_hint(run_dir: Path, lr: float) -> str:
    """Where to go back to after non-finite training: the last checkpoint (only finite ones
    are ever written) and the command that resumes it with a tenth of the rate."""
    lower = f"{lr / 10:.3g}" if math.isfinite(lr) and lr > 0 else "1e-4"
    if not has_checkpoint(run_dir):
        return (
            f"no checkpoint was saved before it; start again with "
            f"`charlm train ... --out {run_dir} --force --set optim.lr={lower}`"
        )
    last = resolve_checkpoint(run_dir, "latest")
    return (
        f"the last finite checkpoint is {last} ({CHECKPOINTS}/latest.json points at it); "
        f"resume from it with a lower rate: `charlm train --out {run_dir} --resume "
        f"--set optim.lr={lower}` (or a lower optim.clip_norm)"
    )


class ExplosionWatch:
    """Warns once when the logged training loss grows EXPLOSION_FACTOR times over where
    training starts: ln(vocabulary), the loss of a uniform guess (a rate too high for the
    model sends it there within a few steps, long before anything turns non-finite)."""

    def __init__(self, vocab_size: int) -> None:
        self.start = math.log(max(vocab_size, 2))
        self.warned = False

    def check(self, step: int, loss: float) -> str | None:
        if self.warned or not math.isfinite(loss) or loss < EXPLOSION_FACTOR * self.start:
            return None
        self.warned = True
        return (
            f"step {step}: the training loss exploded to {loss:.3g} nats, "
            f"{loss / self.start:,.0f} times where it starts ({self.start:.3g}, a uniform "
            "guess); lower optim.lr or set optim.clip_norm"
        )
