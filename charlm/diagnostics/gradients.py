"""Gradient flow through time: how strongly the last step's loss reaches hidden states k steps back.

For a window x_1..x_T the loss at the last step, l_T, depends on the hidden state h_{T-k} of
every layer through the product of k step Jacobians. Its norm |dl_T / dh_{T-k}| against k is
the picture behind vanishing (plain RNN: shrinks geometrically) and exploding gradients, and
behind the gates (the LSTM cell's additive path and the GRU's interpolation keep it up).

The fused `nn.GRU`/`nn.LSTM` kernels hide the per-step states, so the model is unrolled one step
at a time with its cell's reference step on its own weights (model/cells.py; tested in test_model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from charlm.diagnostics.choices import MEASURES, NORMS
from charlm.errors import DataError, UsageError
from charlm.model.cells import cell_label, layer_of, map_state
from charlm.model.network import RNNLanguageModel

BURN_IN = 50  # steps run without gradients first, so the states measured are typical ones
WINDOWS = 32  # windows a profile averages over, unless told

# step(x_t, state) -> (new state, [hidden state of each layer] (batch, hidden) each)
StepFn = Callable[[Tensor, Any], tuple[Any, list[Tensor]]]
# loss(hidden states of the last step) -> a scalar: a sum over the batch, so that the gradient
# with respect to window b's states is that window's own gradient.
LossFn = Callable[[list[Tensor]], Tensor]


def gradient_norms_by_lag(
    step: StepFn, state: Any, inputs: Sequence[Tensor], loss: LossFn, max_lag: int
) -> Tensor:
    """|d loss(h_T) / d h_{T-k}| for k = 1..max_lag, per layer and window: (layers, lags, batch).

    Any step function will do: a model's cells, or a hand-made one-unit RNN in a test. `inputs`
    are the T >= max_lag + 1 per-step inputs; h_t is the state after input t.
    """
    if len(inputs) < max_lag + 1:
        raise UsageError(
            f"max_lag {max_lag} needs at least {max_lag + 1} steps (got {len(inputs)})"
        )
    # The states must be part of the graph even when nothing upstream needs a gradient.
    state = _requiring_grad(state)
    history: list[list[Tensor]] = []  # history[t][layer]
    for x in inputs:
        state, hiddens = step(x, state)
        history.append(hiddens)
    layers = len(history[-1])
    wanted = [history[-1 - k][layer] for layer in range(layers) for k in range(1, max_lag + 1)]
    grads = torch.autograd.grad(loss(history[-1]), wanted, allow_unused=True)
    norms = [
        torch.zeros(w.shape[0]) if g is None else g.detach().flatten(1).norm(dim=1).cpu()
        for g, w in zip(grads, wanted, strict=True)
    ]
    return torch.stack(norms).reshape(layers, max_lag, -1)


def _requiring_grad(state: Any) -> Any:
    if isinstance(state, (list, tuple)):
        return type(state)(_requiring_grad(s) for s in state)
    return state.detach().requires_grad_(True)


def model_step(model: RNNLanguageModel) -> StepFn:
    """One time step of every layer of `model`, the state a list with one entry per layer."""
    cell, leak = model.cell, model.config.leak
    weights = [model.layer_weights(layer) for layer in range(model.config.layers)]

    def step(tokens: Tensor, state: list[Any]) -> tuple[list[Any], list[Tensor]]:
        x = model.embedding(tokens)  # (batch, embedding_dim)
        new_state, hiddens = [], []
        for w, layer_state in zip(weights, state, strict=True):
            layer_state = cell.step(w, x, layer_state, leak)
            x = cell.output(layer_state)
            new_state.append(layer_state)
            hiddens.append(x)
        return new_state, hiddens

    return step


def _per_layer(state: Any, layers: int) -> list[Any]:
    return [layer_of(state, i) for i in range(layers)]


@dataclass(frozen=True)
class GradientProfile:
    """A norm against lag for one model: mean and largest over the windows. `measure` says
    which: the loss gradient |d loss_T / d h_(T-k)|, or the Jacobian |d s_T / d s_(T-k)| of the
    layer's state (h; (h, c) for LSTMs) in the `norm` named."""

    source: str
    cell: str
    layers: int
    hidden_size: int
    lags: list[int]
    grad_norm: list[list[float]]  # [layer][lag index], mean over windows
    grad_norm_max: list[list[float]]  # [layer][lag index], largest window
    label: str = ""  # the legend's name (a cell's name, not a path)
    measure: str = "loss"
    norm: str = ""  # jacobian: spectral or frobenius
    at: str = "random"  # random positions, or the task's scored positions
    windows: int = 0
    seed: int = 0  # of the window positions
    model_seed: int | None = None  # train.seed the weights were drawn with (fresh models)
    step: int | None = None  # the checkpoint's training step (trained models)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measure_model(
    model: RNNLanguageModel,
    ids: np.ndarray,
    *,
    max_lag: int = 50,
    batch: int = 32,
    seed: int = 0,
    source: str = "",
    targets: np.ndarray | None = None,
    line_break: int | None = None,
    measure: str = "loss",
    norm: str = "spectral",
) -> GradientProfile:
    """The profile of `model` over `batch` windows drawn at random from `ids`.

    Each window runs its burn-in without gradients from a zero state (BURN_IN steps, or with
    `line_break`, the newline's id, from the start of the target's line), then max_lag + 1 steps unrolled; the
    loss is the cross-entropy of the last step's prediction of the next token. `targets`
    (positions in `ids`) restricts that predicted token to chosen places, e.g. the recall
    positions of a lag task; windows too close to the start are left out. `measure=jacobian`
    ignores the loss: the norm of the product of the layer's step Jacobians.
    """
    if max_lag < 1 or batch < 1:
        raise UsageError(f"--max-lag and --batch must be at least 1 (got {max_lag}, {batch})")
    if measure not in MEASURES or norm not in NORMS:
        raise UsageError(
            f"--measure is one of {', '.join(MEASURES)}, --norm one of {', '.join(NORMS)}"
        )
    ends, starts = draw_windows(ids, max_lag, batch, seed, targets, line_break)
    device = model.embedding.weight.device
    was_training = model.training
    model.eval()  # no dropout: the profile is a property of the weights
    try:
        state = burn_in(model, ids, starts, ends - max_lag - 1, device)
        inputs = torch.as_tensor(
            np.stack([ids[e - max_lag - 1 : e] for e in ends]).T.astype(np.int64)
        )
        inputs = inputs.to(device)  # (max_lag + 1, batch), time-major
        target = torch.as_tensor(ids[ends].astype(np.int64), device=device)
        if measure == "loss":
            norms = _loss_norms(model, state, inputs, target, max_lag)
        else:
            norms = _jacobian_norms(model, state, inputs, max_lag, norm)
    finally:
        model.train(was_training)
    return GradientProfile(
        source=source,
        cell=model.config.cell,
        layers=model.config.layers,
        hidden_size=model.config.hidden_size,
        lags=list(range(1, max_lag + 1)),
        grad_norm=norms.mean(dim=2).tolist(),
        grad_norm_max=norms.amax(dim=2).tolist(),
        label=cell_label(model.config),
        measure=measure,
        norm=norm if measure == "jacobian" else "",
        at="task" if targets is not None else "random",
        windows=batch,
        seed=seed,
    )


def draw_windows(
    ids: np.ndarray,
    max_lag: int,
    batch: int,
    seed: int,
    targets: np.ndarray | None,
    line_break: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The windows' target positions and where each one's burn-in starts (from a zero state)."""
    rng = np.random.default_rng(seed)
    if line_break is not None:
        if targets is None:
            targets = np.arange(1, len(ids))
        return _line_windows(ids, max_lag, batch, rng, np.asarray(targets), line_break)
    span = BURN_IN + max_lag + 2  # inputs and the final target
    if len(ids) < span:
        raise DataError(
            f"the text has {len(ids)} tokens; --max-lag {max_lag} needs at least {span} "
            "(give more text or a smaller --max-lag)"
        )
    if targets is None:
        ends = rng.integers(span - 1, len(ids), size=batch)
    else:
        usable = np.asarray(targets)[np.asarray(targets) >= span - 1]
        if len(usable) == 0:
            raise DataError(f"no target position lies {span - 1} or more tokens into the text")
        ends = rng.choice(usable, size=batch, replace=len(usable) < batch)
    return ends, ends - (span - 1)


def _line_windows(
    ids: np.ndarray,
    max_lag: int,
    batch: int,
    rng: np.random.Generator,
    targets: np.ndarray,
    line_break: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Windows that start at their target's line start (after the previous newline), as a
    model trained one line per example from a zero state sees them."""
    breaks = np.flatnonzero(ids == line_break)
    which = np.searchsorted(breaks, targets) - 1  # the newline before each target
    ok = which >= 0
    starts = np.where(ok, breaks[np.clip(which, 0, None)] + 1, 0)
    reach = targets - starts - 1  # steps from the line's first state to the last input
    usable = ok & (reach >= max_lag)
    if not usable.any():
        longest = int(reach[ok].max()) if ok.any() else 0
        raise DataError(
            f"--max-lag {max_lag}: the scored positions lie at most {longest} steps after "
            f"their line's first character; give --max-lag {max(longest, 1)} or less"
        )
    pick = rng.choice(np.flatnonzero(usable), size=batch, replace=usable.sum() < batch)
    return targets[pick], starts[pick]


def burn_in(
    model: RNNLanguageModel, ids: np.ndarray, starts: np.ndarray, stops: np.ndarray, device: Any
) -> list[Any]:
    """Each window's state (per layer) after ids[start:stop] from a zero state, no gradients."""
    layers = model.config.layers
    with torch.no_grad():
        if len(set((stops - starts).tolist())) == 1:  # one length: one batched call
            state = model.initial_state(len(starts), device)
            if stops[0] > starts[0]:
                tokens = np.stack([ids[a:b] for a, b in zip(starts, stops, strict=True)]).T
                _, state = model(torch.as_tensor(tokens.astype(np.int64), device=device), state)
            return _per_layer(state, layers)
        finals = []
        for a, b in zip(starts, stops, strict=True):
            state = model.initial_state(1, device)
            if b > a:
                tokens = torch.as_tensor(ids[a:b].astype(np.int64), device=device)[:, None]
                _, state = model(tokens, state)
            finals.append(state)
        return _per_layer(map_state(lambda *s: torch.cat(s, dim=1), *finals), layers)


def _loss_norms(
    model: RNNLanguageModel, state: list[Any], inputs: Tensor, target: Tensor, max_lag: int
) -> Tensor:
    def loss(hiddens: list[Tensor]) -> Tensor:
        return F.cross_entropy(model.output(hiddens[-1]), target, reduction="sum")

    return gradient_norms_by_lag(model_step(model), state, list(inputs), loss, max_lag)


def _jacobian_norms(
    model: RNNLanguageModel, state: list[Any], inputs: Tensor, max_lag: int, norm: str
) -> Tensor:
    """Per layer: the layer's inputs are recorded in one pass, then its Jacobians taken."""
    step = model_step(model)
    with torch.no_grad():
        layer_inputs: list[list[Tensor]] = [[model.embedding(x) for x in inputs]]
        starts, current = list(state), list(state)
        for x in inputs:
            current, hiddens = step(x, current)
            for layer, h in enumerate(hiddens[:-1]):
                if len(layer_inputs) <= layer + 1:
                    layer_inputs.append([])
                layer_inputs[layer + 1].append(h)
    cell, leak = model.cell, model.config.leak
    rows = []
    for layer, xs in enumerate(layer_inputs):
        w = model.layer_weights(layer)
        rows.append(
            jacobian_norms_by_lag(
                lambda x, s, w=w: cell.step(w, x, s, leak), starts[layer], xs, max_lag, norm
            )
        )
    return torch.stack(rows)  # (layers, lags, batch)


LayerStep = Callable[[Tensor, Any], Any]  # (x (batch, input), a layer's state) -> new state


def jacobian_norms_by_lag(
    step: LayerStep, state: Any, inputs: Sequence[Tensor], max_lag: int, norm: str = "spectral"
) -> Tensor:
    """|d s_T / d s_(T-k)| for k = 1..max_lag, per window: (lags, batch).

    s is one layer's whole state (h, or h and c side by side for an LSTM), s_t the state after
    input t; the Jacobian is the product J_T J_(T-1) .. J_(T-k+1) of the step Jacobians
    J_t = d s_t / d s_(t-1), each taken in one backward pass (the state copied once per output
    unit). `norm`: spectral (the largest singular value) or frobenius.
    """
    if len(inputs) < max_lag + 1:
        raise UsageError(
            f"max_lag {max_lag} needs at least {max_lag + 1} steps (got {len(inputs)})"
        )
    states = [state]
    with torch.no_grad():
        for x in inputs:
            states.append(step(x, states[-1]))
    product, norms = None, []
    for t in range(len(inputs), len(inputs) - max_lag, -1):  # J_T first
        jac = step_jacobian(step, inputs[t - 1], states[t - 1])  # (batch, D, D)
        product = jac if product is None else product @ jac
        ord_ = 2 if norm == "spectral" else "fro"
        norms.append(torch.linalg.matrix_norm(product, ord=ord_).detach().cpu())
    return torch.stack(norms)


def step_jacobian(step: LayerStep, x: Tensor, state: Any) -> Tensor:
    """d s_t / d s_(t-1) per window: (batch, D, D), rows the new state's units."""
    parts = state if isinstance(state, tuple) else (state,)
    sizes = [p.shape[1] for p in parts]
    flat = torch.cat(parts, dim=1).detach()  # (batch, D)
    batch, size = flat.shape
    copies = flat.repeat_interleave(size, dim=0).requires_grad_(True)  # (batch * D, D)
    pieces = copies.split(sizes, dim=1)
    new = step(x.repeat_interleave(size, dim=0), pieces if isinstance(state, tuple) else pieces[0])
    new_flat = torch.cat(new if isinstance(new, tuple) else (new,), dim=1)
    # Copy j of window b keeps output unit j only: its gradient is row j of J.
    pick = torch.eye(size, device=flat.device).repeat(batch, 1)
    (grad,) = torch.autograd.grad((new_flat * pick).sum(), copies)
    return grad.reshape(batch, size, size)


def profile_run(
    run: Path, text: Path, *, which: str = "best", device: str = "cpu", **options: Any
) -> GradientProfile:
    """Measure a trained run's checkpoint on a text, tokenised with the run's own vocabulary."""
    from tokenizers import Tokenizer

    from charlm.data.prepare import read_text
    from charlm.data.tokenizer import Encoder
    from charlm.rundir.checkpoint import open_for_use

    loaded, model = open_for_use(run, which, device)
    tokenizer = Tokenizer.from_str(loaded.tokenizer_json)
    raw = read_text(text, csv_column=loaded.config.data.csv_column)
    ids = Encoder(tokenizer, loaded.meta["level"]).encode(raw)
    return measure_model(model, ids, source=str(run), **options)


def profile_config(
    config_file: Path | None,
    overrides: Sequence[str],
    text: Path,
    *,
    device: str = "cpu",
    **options: Any,
) -> GradientProfile:
    """Measure a freshly initialised model (seeded by train.seed, as training would build it)."""
    from charlm.config import build_config
    from charlm.data.prepare import read_text
    from charlm.data.tokenizer import Encoder, tokenizer_for
    from charlm.system.device import resolve_device

    config = build_config(config_file=config_file, overrides=list(overrides))
    raw = read_text(text, csv_column=config.data.csv_column)
    tokenizer = tokenizer_for(config.data, [raw])
    ids = Encoder(tokenizer, config.data.level).encode(raw)
    torch.manual_seed(config.train.seed)
    model = RNNLanguageModel(config.model, tokenizer.get_vocab_size())
    if config.model.unigram_bias:
        model.init_output_bias(ids, config.model.unigram_bias)
    model = model.to(resolve_device(device, flag="--device"))
    name = f"{config.model.cell} (initial)" if config_file is None else f"{config_file} (initial)"
    return measure_model(model, ids, source=name, **options)
