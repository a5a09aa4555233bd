"""Skipping non-finite optimiser steps on the device, with no read-back to the host per step."""

from __future__ import annotations

import torch

from charlm.cells import State, map_state


def _choose(ok: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(ok, new, old)


class DeviceStepGuard:
    """`train.step_guard=device`: the step is taken, and undone on the device when it was bad.

    The host guard reads the loss and gradient norm back every step to decide whether to step;
    on a GPU that read stops the host from queueing the next step while this one runs. Here the
    decision stays a device tensor `ok`: the weights and the optimiser's state are copied before
    the step and chosen back with `where(ok, new, old)` after it (whatever a non-finite gradient
    made of them), so a bad step leaves them bit-identical to skipping it, and a good one is
    exactly the plain step. The step's loss, the clipping and
    the bad-step counts accumulate on the device; `read()` fetches them in one transfer, at
    logging, evaluation and checkpoint steps only.

    The optimiser must already hold its state (after the first step): a first step that is
    undone would still have created it. Cost: one copy of the weights and optimiser state per
    step, which a GPU does in microseconds for these model sizes.
    """

    def __init__(self, device: torch.device, clip_norm: float) -> None:
        self.clip_norm = clip_norm
        self._ready = False
        # loss sum, good steps, clipped steps, bad steps, current bad streak, longest streak
        self._counts = torch.zeros(6, dtype=torch.float64, device=device)
        self._last_norm = torch.zeros((), dtype=torch.float64, device=device)

    def ready(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether every parameter has optimiser state (so a step can be undone exactly); once
        true it stays true, so the check costs nothing after the first step."""
        if not self._ready:
            self._ready = all(
                optimizer.state.get(p) for group in optimizer.param_groups for p in group["params"]
            )
        return self._ready

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        loss: torch.Tensor,
        grad_norm: torch.Tensor,
        old_state: State,
        new_state: State,
    ) -> State:
        """Step `optimizer` unless the loss or gradient is non-finite, deciding on the device.
        Returns the carried state to keep: the new one after a good step, the old one else."""
        ok = torch.isfinite(loss) & torch.isfinite(grad_norm)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        with torch.no_grad():
            saved = [
                (
                    p,
                    p.detach().clone(),
                    {k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)},
                )
                for p in params
            ]
            optimizer.step()
            for p, old, old_opt in saved:
                p.copy_(_choose(ok, p, old))
                for key, value in old_opt.items():
                    current = optimizer.state[p][key]
                    current.copy_(_choose(ok, current, value))
            counts, norm = self._counts, grad_norm.detach().double()
            good = ok.double()
            counts[0] += torch.where(ok, loss.detach().double(), 0.0)
            counts[1] += good
            if self.clip_norm:
                counts[2] += (ok & (norm > self.clip_norm)).double()
            counts[3] += 1.0 - good
            counts[4] = (counts[4] + 1.0) * (1.0 - good)
            counts[5] = torch.maximum(counts[5], counts[4])
            self._last_norm = torch.where(ok, norm, self._last_norm)
        return map_state(lambda n, o: _choose(ok, n, o).detach(), new_state, old_state)

    def read(self) -> dict[str, float]:
        """What happened since the last read (one transfer), then start a new interval; the
        current bad streak carries over."""
        loss_sum, good, clipped, bad, streak, longest = self._counts.tolist()
        last_norm = float(self._last_norm)
        self._counts[[0, 1, 2, 3]] = 0.0
        self._counts[5] = self._counts[4]
        return {
            "loss_sum": loss_sum,
            "good_steps": int(good),
            "clipped_steps": int(clipped),
            "bad_steps": int(bad),
            "bad_streak": int(streak),
            "longest_streak": int(longest),
            "last_grad_norm": last_norm,
        }
