"""AWD-LSTM's regularisers: locked, embedding and weight dropout, AR/TAR."""

from __future__ import annotations

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
