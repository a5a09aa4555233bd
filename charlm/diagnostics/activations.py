"""Inside the cells: gate activations and their saturation, and the singular values of W_hh."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from charlm.diagnostics.gradients import burn_in, draw_windows
from charlm.model.network import RNNLanguageModel

# Saturated: a tanh beyond +-0.99, a sigmoid in its outer 1% (below 0.01 or above 0.99); a relu
# unit counts as "off" at exactly 0 (its gradient is 0 there too).
TANH_EDGE, SIGMOID_EDGE = 0.99, 0.01


def saturated(values: np.ndarray, kind: str) -> float:
    """The share of `values` (a squashing function's outputs) in its flat region."""
    values = np.asarray(values)
    if kind == "tanh":
        hits = np.abs(values) > TANH_EDGE
    elif kind == "sigmoid":
        hits = (values < SIGMOID_EDGE) | (values > 1 - SIGMOID_EDGE)
    elif kind == "relu":
        hits = values == 0
    else:
        raise ValueError(f"unknown kind {kind}")
    return float(hits.mean()) if values.size else 0.0


@dataclass
class ActivationStats:
    """One model's activations over the measured steps: per layer, name -> values."""

    label: str
    kinds: dict[str, str]  # name -> tanh | sigmoid | relu
    values: list[dict[str, np.ndarray]]  # [layer][name] -> every unit at every step, flat
    windows: int
    steps: int

    def saturation(self) -> list[dict[str, float]]:
        return [{n: saturated(v, self.kinds[n]) for n, v in layer.items()} for layer in self.values]

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kinds": self.kinds,
            "saturation": self.saturation(),
            "windows": self.windows,
            "steps": self.steps,
        }


def activation_stats(
    model: RNNLanguageModel,
    ids: np.ndarray,
    *,
    steps: int = 50,
    batch: int = 32,
    seed: int = 0,
    targets: np.ndarray | None = None,
    line_break: int | None = None,
    label: str = "",
) -> ActivationStats:
    """The cell's squashed values (`Cell.kinds`) at each of `steps` steps of `batch` windows,
    placed as `measure_model` places them (same seed: the same windows)."""
    ends, starts = draw_windows(ids, steps, batch, seed, targets, line_break)
    device = model.embedding.weight.device
    model.eval()
    cell, leak = model.cell, model.config.leak
    weights = [model.layer_weights(k) for k in range(model.config.layers)]
    collected: list[dict[str, list[np.ndarray]]] = [{n: [] for n in cell.kinds} for _ in weights]
    with torch.no_grad():
        state = burn_in(model, ids, starts, ends - steps - 1, device)
        inputs = np.stack([ids[e - steps - 1 : e] for e in ends]).T.astype(np.int64)
        for tokens in torch.as_tensor(inputs, device=device):
            x = model.embedding(tokens)
            for layer, w in enumerate(weights):
                values = cell.activations(w, x, state[layer], leak)
                for name in cell.kinds:
                    collected[layer][name].append(values[name].flatten().cpu().numpy())
                state[layer] = cell.step(w, x, state[layer], leak)
                x = cell.output(state[layer])
    values = [{n: np.concatenate(v) for n, v in layer.items()} for layer in collected]
    return ActivationStats(label, dict(cell.kinds), values, batch, steps + 1)


def singular_values(model: RNNLanguageModel) -> list[dict[str, list[float]]]:
    """Per layer, each block of W_hh (the cell's `blocks`: one per gate) -> its singular
    values, largest first."""
    hidden, out = model.config.hidden_size, []
    for layer in range(model.config.layers):
        w_hh = model.layer_weights(layer).w_hh.detach().float().cpu()
        blocks = w_hh.split(hidden, dim=0)
        names = model.cell.blocks if len(model.cell.blocks) == len(blocks) else ("W_hh",)
        if len(names) != len(blocks):
            blocks = (w_hh,)
        out.append(
            {n: torch.linalg.svdvals(b).tolist() for n, b in zip(names, blocks, strict=True)}
        )
    return out
