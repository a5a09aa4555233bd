"""AWD-LSTM's regularisers and weight averaging: locked, embedding and weight dropout, AR/TAR, NT-ASGD.

Merity, Keskar and Socher (2017), "Regularizing and Optimizing LSTM Language Models".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Variational dropout: one mask per sequence and feature, the same at every time step.

    x is time-major (seq_len, batch, features); the mask is (1, batch, features), so a unit
    dropped at the first step stays dropped for the whole window (Gal and Ghahramani 2016).
    """
    if not training or p == 0.0:
        return x
    mask = x.new_empty(1, x.shape[1], x.shape[2]).bernoulli_(1.0 - p) / (1.0 - p)
    return x * mask


def embedding_dropout(embedding: nn.Embedding, tokens: Tensor, p: float, training: bool) -> Tensor:
    """Drop whole words: every occurrence of a dropped token id gets a zero vector this batch.

    Equivalent to dropping rows of the embedding matrix; the kept rows are scaled by 1/(1-p).
    """
    if not training or p == 0.0:
        return embedding(tokens)
    weight = embedding.weight
    mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1.0 - p) / (1.0 - p)
    return F.embedding(tokens, weight * mask)


def activation_penalty(
    output: Tensor, alpha: float, beta: float, dropped: Tensor, mask: Tensor | None = None
) -> Tensor:
    """AR + TAR on the last layer's output (seq_len, batch, hidden), as AWD-LSTM adds them.

    AR (alpha) penalises large activations of the dropped output; TAR (beta) penalises change
    between consecutive steps of the undropped output (Merity et al. 2017, section 4.6).
    `mask` (seq_len, batch), true at real tokens, keeps sentence padding out of both means.
    """
    penalty = output.new_zeros(())
    if mask is None:
        mask = torch.ones(output.shape[:2], dtype=torch.bool, device=output.device)
    weight = mask.unsqueeze(-1).to(output.dtype)  # (seq_len, batch, 1)
    width = output.shape[-1]
    if alpha:
        squares = (dropped.pow(2) * weight).sum()
        penalty = penalty + alpha * squares / (weight.sum() * width).clamp_min(1)
    if beta and output.shape[0] > 1:
        pairs = weight[1:] * weight[:-1]  # both steps real
        change = ((output[1:] - output[:-1]).pow(2) * pairs).sum()
        penalty = penalty + beta * change / (pairs.sum() * width).clamp_min(1)
    return penalty


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
