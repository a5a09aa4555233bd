"""The key-readout probe: how well a linear readout of a state decodes its line's key, held out.

The state Jacobian says whether a change of the key would still move the state; it cannot say
whether the state still *holds* the key in a form a readout can use, nor whether the model's
own readout uses it. The probe answers the first: on lines of a task (each window run from its
line's start, as a model trained one line per example sees them), the layer's state k steps
before the scored position is fed to a linear readout (a multinomial logistic regression,
started from the model's own readout where the state is the last layer's) fitted to the line's
first character (the lag task's key) on one half of the lines and scored on the other half.
Beside it, the model's own accuracy at the scored position on the same held-out lines: a
state that decodes the key while the model's prediction misses it holds the key, and only the
readout fails to use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from charlm.diagnostics.gradients import burn_in, model_step
from charlm.errors import DataError, UsageError
from charlm.model.cells import cell_label
from charlm.model.network import RNNLanguageModel

PROBE_LINES = 256  # held-out lines by default (as many again fitted on)
MIN_LINES = 16  # per half: fewer held-out lines say too little about an accuracy
FIT_STEPS = 100  # LBFGS iterations of each logistic regression


@dataclass(frozen=True)
class ProbeProfile:
    """Held-out readout accuracy against k, the steps before the scored position (k = 0: the
    state the model's own readout reads; on a lag-L line k = L + 1 is the state after the key)."""

    source: str
    cell: str
    layers: int
    hidden_size: int
    lags: list[int]  # the k probed, from 0 to max_lag (probe_lags)
    accuracy: list[list[float]]  # [layer][index in lags]: the probe on the held-out lines
    fit_accuracy: list[list[float]]  # [layer][index in lags]: on the lines it was fitted on
    model_accuracy: float  # the model's own top prediction at the scored position, held out
    chance: float  # the most frequent key's share of the held-out lines: a constant guess
    keys: int  # distinct keys (line-first characters) seen
    windows: int  # held-out lines (as many again were fitted on)
    label: str = ""
    measure: str = "probe"
    at: str = "task"
    seed: int = 0  # of the split into fitted and held-out lines
    model_seed: int | None = None
    step: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def probe_lines(
    ids: np.ndarray, targets: np.ndarray, line_break: int, max_lag: int, batch: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fit ends, fit starts, held-out ends, held-out starts): one window per line, ending at
    the line's first scored position, the lines shuffled (seeded) and split in two disjoint
    halves of at most `batch` lines each."""
    breaks = np.flatnonzero(ids == line_break)
    targets = np.asarray(targets)
    which = np.searchsorted(breaks, targets) - 1
    ok = which >= 0
    starts = np.where(ok, breaks[np.clip(which, 0, None)] + 1, 0)
    reach = targets - starts - 1
    usable = ok & (reach >= max_lag)
    _, first = np.unique(starts[usable], return_index=True)  # one window per line
    ends, starts = targets[usable][first], starts[usable][first]
    if len(ends) < 2 * MIN_LINES:
        raise DataError(
            f"--measure probe: {len(ends)} lines reach {max_lag} steps before their scored "
            f"position; it needs {2 * MIN_LINES} (half fitted, half held out): give a longer "
            "--text or a smaller --max-lag"
        )
    order = np.random.default_rng(seed).permutation(len(ends))
    half = min(len(ends) // 2, batch)
    fit, held = order[:half], order[half : 2 * half]
    return ends[fit], starts[fit], ends[held], starts[held]


def line_states(
    model: RNNLanguageModel, ids: np.ndarray, ends: np.ndarray, starts: np.ndarray, max_lag: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per layer the states (k, lines, state size) at k = 0..max_lag steps before each end,
    and the model's logits at the end (lines, vocabulary)."""
    device = model.embedding.weight.device
    step = model_step(model)
    with torch.no_grad():
        state = burn_in(model, ids, starts, ends - max_lag - 1, device)
        inputs = np.stack([ids[e - max_lag - 1 : e] for e in ends]).T.astype(np.int64)
        per_step: list[list[torch.Tensor]] = []
        for x in torch.as_tensor(inputs, device=device):
            state, hiddens = step(x, state)
            per_step.append([_flat(s) for s in state])
        logits = model.output(hiddens[-1])
    layers = len(per_step[0])
    states = [torch.stack([s[layer] for s in reversed(per_step)]) for layer in range(layers)]
    return states, logits


def _flat(state: Any) -> torch.Tensor:
    parts = state if isinstance(state, tuple) else (state,)
    return torch.cat([p.detach().double().cpu() for p in parts], dim=1)


def probe_lags(max_lag: int) -> list[int]:
    """The k probed: every k up to 20, then about 40 more spread to `max_lag`, and the last
    two (on a lag-L line with max_lag = L + 1: the key itself and the state after it)."""
    spread = np.linspace(0, max_lag, 41).round().astype(int).tolist()
    return sorted({*range(min(max_lag, 20) + 1), *spread, max(max_lag - 1, 0), max_lag})


def fit_readout(
    fit_x: torch.Tensor, fit_y: torch.Tensor, classes: int, start: tuple | None = None
) -> tuple:
    """A multinomial logistic regression of the key on one state (lines, D), by LBFGS, with no
    weight penalty (a separable fit stops at FIT_STEPS). The state is divided by its largest
    magnitude only: a relu network's units span many orders of magnitude, and per-unit
    standardising would hide a readout the model itself can use. `start` (weights (D, classes),
    bias) is a readout to begin from, the model's own where there is one: of it and the fitted
    one, the better on the fitted lines is kept, so the probe never fits worse than the model's
    own readout. Returns (weights, bias, scale)."""
    x = torch.nan_to_num(fit_x.double(), nan=0.0, posinf=1e300, neginf=-1e300)
    scale = x.abs().max().clamp_min(1e-300)
    z = x / scale
    if start is None:
        first = (
            torch.zeros(z.shape[1], classes, dtype=z.dtype),
            torch.zeros(classes, dtype=z.dtype),
        )
    else:  # the same logits on the scaled state
        first = (start[0].double() * scale, start[1].double())
    weights = first[0].clone().requires_grad_(True)
    bias = first[1].clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS(
        [weights, bias], max_iter=FIT_STEPS, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weights + bias, fit_y)
        loss.backward()
        return loss

    optimiser.step(closure)
    fitted = (weights.detach(), bias.detach(), scale)
    began = (*first, scale)
    if start is not None and _fit(fit_x, fit_y, began) > _fit(fit_x, fit_y, fitted):
        return began
    return fitted


def _fit(x: torch.Tensor, y: torch.Tensor, readout: tuple) -> float:
    """Accuracy on the fitted lines; a readout whose outputs are not finite counts as 0."""
    weights, bias, scale = readout
    if not (torch.isfinite(weights).all() and torch.isfinite(bias).all()):
        return 0.0
    return readout_accuracy(x, y, readout)


def own_readout(model: RNNLanguageModel, keys: np.ndarray, size: int) -> tuple:
    """The model's own readout of the keys from the last layer's state (size D; h first):
    its output map is affine in h, so its weights are output(e_i) - output(0) and its bias
    output(0), restricted to the keys' rows; the rest of the state (an LSTM's c) gets 0."""
    hidden = model.config.hidden_size
    device = model.embedding.weight.device
    with torch.no_grad():
        points = torch.cat([torch.zeros(1, hidden), torch.eye(hidden)]).to(device)
        logits = model.output(points).double().cpu()[:, torch.as_tensor(keys)]
    weights = torch.zeros(size, len(keys), dtype=torch.float64)
    weights[:hidden] = logits[1:] - logits[0]
    return weights, logits[0]


def readout_accuracy(x: torch.Tensor, y: torch.Tensor, fitted: tuple) -> float:
    """The share of lines (rows of x) whose key the fitted readout ranks first."""
    weights, bias, scale = fitted
    x = torch.nan_to_num(x.double(), nan=0.0, posinf=1e300, neginf=-1e300)
    return float(((x / scale @ weights + bias).argmax(dim=1) == y).double().mean())


def probe_model(
    model: RNNLanguageModel,
    ids: np.ndarray,
    targets: np.ndarray,
    line_break: int,
    *,
    max_lag: int = 50,
    batch: int = 256,
    seed: int = 0,
    source: str = "",
) -> ProbeProfile:
    """The probe of `model` on the lines of `ids` holding `targets` (the scored positions)."""
    if max_lag < 0 or batch < MIN_LINES:
        raise UsageError(
            f"--measure probe: --max-lag must be at least 0 and --batch (held-out lines) at "
            f"least {MIN_LINES} (got {max_lag}, {batch})"
        )
    fit_end, fit_start, held_end, held_start = probe_lines(
        ids, targets, line_break, max_lag, batch, seed
    )
    was_training = model.training
    model.eval()
    try:
        fit_states, _ = line_states(model, ids, fit_end, fit_start, max_lag)
        held_states, logits = line_states(model, ids, held_end, held_start, max_lag)
    finally:
        model.train(was_training)
    keys = np.unique(np.concatenate([ids[fit_start], ids[held_start]]))
    fit_y = torch.as_tensor(np.searchsorted(keys, ids[fit_start]))
    held_y = torch.as_tensor(np.searchsorted(keys, ids[held_start]))
    lags = probe_lags(max_lag)
    accuracy: list[list[float]] = [[] for _ in fit_states]
    fit_accuracy: list[list[float]] = [[] for _ in fit_states]
    last = len(fit_states) - 1
    for layer, (fit_x, held_x) in enumerate(zip(fit_states, held_states, strict=True)):
        start = own_readout(model, keys, fit_x.shape[2]) if layer == last else None
        for k in lags:
            fitted = fit_readout(fit_x[k], fit_y, len(keys), start)
            accuracy[layer].append(readout_accuracy(held_x[k], held_y, fitted))
            fit_accuracy[layer].append(readout_accuracy(fit_x[k], fit_y, fitted))
    own = logits.argmax(dim=1).cpu().numpy() == ids[held_end]
    return ProbeProfile(
        source=source,
        cell=model.config.cell,
        layers=model.config.layers,
        hidden_size=model.config.hidden_size,
        lags=lags,
        accuracy=accuracy,
        fit_accuracy=fit_accuracy,
        model_accuracy=float(own.mean()),
        chance=float(np.bincount(held_y.numpy()).max() / len(held_y)),
        keys=len(keys),
        windows=len(held_end),
        label=cell_label(model.config),
        seed=seed,
    )
