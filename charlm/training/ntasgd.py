"""NT-ASGD: the running mean of the weights, and when a run starts averaging."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class WeightAverager:
    """The running mean of the parameters since averaging started (the "A" of NT-ASGD).

    The optimiser keeps stepping the raw weights; `update()` after each step folds them into
    the mean. `applied(model)` swaps the mean in (evaluation, checkpoints for sampling) and the
    raw weights back afterwards, so training continues from exactly where it was.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.count = 0  # optimiser steps averaged so far; 0 = averaging not started
        self.average: dict[str, Tensor] = {}

    @property
    def is_active(self) -> bool:
        return self.count > 0

    def start(self) -> None:
        """Begin averaging at the current weights (NT-ASGD's trigger)."""
        self.average = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.count = 1

    @torch.no_grad()
    def update(self) -> None:
        if not self.is_active:
            return
        self.count += 1
        for name, p in self.model.named_parameters():
            self.average[name].add_(p.detach() - self.average[name], alpha=1.0 / self.count)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model for the duration; a no-op before averaging starts."""
        if not self.is_active:
            yield
            return
        params = dict(self.model.named_parameters())
        raw = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.average[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(raw[name])

    def raw_weights(self) -> dict[str, Tensor]:
        """A copy of the weights the optimiser is stepping (not the mean)."""
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def load(self, average: dict[str, Tensor], count: int) -> None:
        """Restore a saved mean (resume): `average` maps parameter names to tensors."""
        params = dict(self.model.named_parameters())
        self.average = {n: average[n].to(p.device, p.dtype).clone() for n, p in params.items()}
        self.count = count


def should_start_averaging(val_losses: list[float], nonmono: int) -> bool:
    """NT-ASGD's trigger: the newest validation loss is worse than the best of all but the
    last `nonmono` before it (Merity et al. 2017, algorithm 1; `val_losses` includes the newest).
    """
    history, newest = val_losses[:-1], val_losses[-1]
    return len(history) > nonmono and newest > min(history[:-nonmono])
