"""Gradient flow through time: how strongly the last step's loss reaches hidden states k steps back.

For a window x_1..x_T the loss at the last step, l_T, depends on the hidden state h_{T-k} of
every layer through the product of k step Jacobians. Its norm |dl_T / dh_{T-k}| against k is
the picture behind vanishing (plain RNN: shrinks geometrically) and exploding gradients, and
behind the gates (the LSTM cell's additive path and the GRU's interpolation keep it up).

The fused `nn.GRU`/`nn.LSTM` kernels hide the per-step states, so the model is unrolled one step
at a time with its cell's reference step on its own weights (cells.py; tested in test_model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from charlm.cells import layer_of
from charlm.errors import DataError, UsageError
from charlm.model import RNNLanguageModel

BURN_IN = 50  # steps run without gradients first, so the states measured are typical ones

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
    """Gradient norm against lag for one model: mean and largest over the windows."""

    source: str
    cell: str
    layers: int
    hidden_size: int
    lags: list[int]
    grad_norm: list[list[float]]  # [layer][lag index], mean over windows
    grad_norm_max: list[list[float]]  # [layer][lag index], largest window

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "cell": self.cell,
            "layers": self.layers,
            "hidden_size": self.hidden_size,
            "lags": self.lags,
            "grad_norm": self.grad_norm,
            "grad_norm_max": self.grad_norm_max,
        }


def measure_model(
    model: RNNLanguageModel,
    ids: np.ndarray,
    *,
    max_lag: int = 50,
    batch: int = 32,
    seed: int = 0,
    source: str = "",
    targets: np.ndarray | None = None,
) -> GradientProfile:
    """The gradient-vs-lag profile of `model` over `batch` windows drawn at random from `ids`.

    Each window runs BURN_IN steps without gradients from a zero state, then max_lag + 1 steps
    unrolled; the loss is the cross-entropy of the last step's prediction of the next token.
    `targets` (positions in `ids`) restricts that predicted token to chosen places, e.g. the
    recall positions of a lag task; windows too close to the start are left out.
    """
    if max_lag < 1 or batch < 1:
        raise UsageError(f"--max-lag and --batch must be at least 1 (got {max_lag}, {batch})")
    span = BURN_IN + max_lag + 2  # inputs and the final target
    if len(ids) < span:
        raise DataError(
            f"the text has {len(ids)} tokens; --max-lag {max_lag} needs at least {span} "
            "(give more text or a smaller --max-lag)"
        )
    device = model.embedding.weight.device
    rng = np.random.default_rng(seed)
    if targets is None:
        starts = rng.integers(0, len(ids) - span + 1, size=batch)
    else:
        usable = np.asarray(targets)[np.asarray(targets) >= span - 1] - (span - 1)
        if len(usable) == 0:
            raise DataError(f"no target position lies {span - 1} or more tokens into the text")
        starts = rng.choice(usable, size=batch, replace=len(usable) < batch)
    windows = torch.as_tensor(np.stack([ids[s : s + span] for s in starts]).T.astype(np.int64))
    windows = windows.to(device)  # (span, batch), time-major as the model wants
    was_training = model.training
    model.eval()  # no dropout: the profile is a property of the weights
    try:
        with torch.no_grad():
            _, state = model(windows[:BURN_IN], model.initial_state(batch, device))
        layers = model.config.layers
        target = windows[-1]

        def loss(hiddens: list[Tensor]) -> Tensor:
            return F.cross_entropy(model.output(hiddens[-1]), target, reduction="sum")

        norms = gradient_norms_by_lag(
            model_step(model), _per_layer(state, layers), list(windows[BURN_IN:-1]), loss, max_lag
        )  # (layers, lags, batch)
    finally:
        model.train(was_training)
    return GradientProfile(
        source=source,
        cell=model.config.cell,
        layers=layers,
        hidden_size=model.config.hidden_size,
        lags=list(range(1, max_lag + 1)),
        grad_norm=norms.mean(dim=2).tolist(),
        grad_norm_max=norms.amax(dim=2).tolist(),
    )


def profile_run(
    run: Path, text: Path, *, which: str = "best", device: str = "cpu", **options: Any
) -> GradientProfile:
    """Measure a trained run's checkpoint on a text, tokenised with the run's own vocabulary."""
    from tokenizers import Tokenizer

    from charlm.checkpoint import open_for_use
    from charlm.prepare import read_text
    from charlm.tokenizer import Encoder

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
    from charlm.device import resolve_device
    from charlm.prepare import read_text
    from charlm.tokenizer import Encoder, build_tokenizer

    config = build_config(config_file=config_file, overrides=list(overrides))
    raw = read_text(text, csv_column=config.data.csv_column)
    tokenizer = build_tokenizer(
        config.data.level,
        [raw],
        config.data.vocab_size,
        lowercase=config.data.lowercase,
        segments=config.data.segments,
        word_split=config.data.word_split,
    )
    ids = Encoder(tokenizer, config.data.level).encode(raw)
    torch.manual_seed(config.train.seed)
    model = RNNLanguageModel(config.model, tokenizer.get_vocab_size())
    if config.model.unigram_bias:
        model.init_output_bias(ids, config.model.unigram_bias)
    model = model.to(resolve_device(device, flag="--device"))
    name = f"{config.model.cell} (initial)" if config_file is None else f"{config_file} (initial)"
    return measure_model(model, ids, source=name, **options)
