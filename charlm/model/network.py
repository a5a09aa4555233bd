"""The network: embedding, a stack of recurrent cells (cells.py), decoder, and sampling steps."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from charlm.config import ModelConfig
from charlm.model.cells import (
    CELLS,
    Affine,
    LayerWeights,
    State,
    cell_for,
    layer_of,
    map_state,
    run_layers,
    stack_layers,
)
from charlm.model.quantize import quantize_layouts
from charlm.model.regularise import embedding_dropout, locked_dropout

__all__ = ["LayerWeights", "State", "cell_step"]  # re-exported: they lived here before cells.py

GATES = {name: cell.gates for name, cell in CELLS.items()}  # weight rows per hidden unit


def cell_step(cell: str, w: LayerWeights, x: Tensor, state: State, leak: float = 0.0) -> State:
    """Advance one layer of `cell` by one time step: x (batch, input) and state -> new state
    (the cell's reference step, cells.py)."""
    return CELLS[cell].step(w, x, state, leak)


class RNNLanguageModel(nn.Module):
    """Token ids (seq_len, batch) and a state -> next-token logits (seq_len, batch, vocab).

    Time-major throughout: it is the fused kernels' native layout (batch-first costs a copy).
    """

    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, config.embedding_dim)
        self.cell = cell_for(config)
        self.rnn = self.cell.module(
            config.embedding_dim,
            config.hidden_size,
            config.layers,
            config.dropout if config.layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        # Weightless one-layer twins of self.rnn (on the meta device, outside the module tree):
        # `functional_call` runs them with a layer's weights, so locked dropout between layers
        # still uses the fused kernel. Index 0 takes the embedding, index 1 a layer's output.
        with torch.device("meta"):
            self._layer_shells = tuple(
                self.cell.module(size, config.hidden_size, 1, 0.0)
                for size in (config.embedding_dim, config.hidden_size)
            )
        # Tying with a hidden size other than the embedding's goes through a projection to the
        # embedding width (Press & Wolf 2017's tied embeddings with a projection matrix P).
        self.projection = (
            nn.Linear(config.hidden_size, config.embedding_dim, bias=False)
            if config.tie_weights and config.hidden_size != config.embedding_dim
            else None
        )
        self.decoder = nn.Linear(
            config.embedding_dim if self.projection is not None else config.hidden_size,
            vocab_size,
        )
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as the config asks; called once at construction, seeded by the caller."""
        if self.config.init == "charlm":
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
            if not self.config.tie_weights:
                bound = 1.0 / math.sqrt(self.config.hidden_size)
                nn.init.uniform_(self.decoder.weight, -bound, bound)
            nn.init.zeros_(self.decoder.bias)
            if self.projection is not None:
                bound = 1.0 / math.sqrt(self.config.hidden_size)
                nn.init.uniform_(self.projection.weight, -bound, bound)
        elif self.config.init == "uniform":
            for parameter in self.parameters():
                nn.init.uniform_(parameter, -self.config.init_range, self.config.init_range)
        elif self.config.tie_weights:
            # init=pytorch, tied: one matrix is both embedding and decoder, and the embedding's
            # N(0, 1) makes the first logits far too confident (WikiText-2, tied 2x128 GRU, 150
            # steps: 7.38 nats against 6.77 with U(+-0.1); docs/benchmarks.md).
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        # init=pytorch keeps what the modules drew when they were built.
        self.cell.initialise(self.rnn, self.config)  # recurrent_init, the LSTMs' forget bias

    def init_output_bias(self, train_ids: np.ndarray, scale: float = 1.0) -> None:
        """Set the decoder bias to `scale` times the add-one smoothed log unigram frequencies of
        `train_ids` (centred): the first prediction is the unigram distribution raised to
        `scale`, renormalised. Counted in slices, so a memory-mapped corpus is never loaded."""
        counts = np.ones(self.vocab_size, dtype=np.float64)
        for start in range(0, len(train_ids), 1 << 24):
            piece = np.asarray(train_ids[start : start + (1 << 24)])
            counts += np.bincount(piece, minlength=self.vocab_size)[: self.vocab_size]
        log_prior = np.log(counts / counts.sum())
        with torch.no_grad():
            bias = torch.from_numpy(scale * (log_prior - log_prior.mean()))
            self.decoder.bias.copy_(bias.to(self.decoder.bias))

    def layer_weights(self, layer: int) -> LayerWeights:
        return self.cell.layer_weights(self.rnn, layer)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zeros in the shape this cell carries; the training loop never branches on the cell."""
        shape = (self.config.layers, batch_size, self.config.hidden_size)
        device = device if device is not None else self.embedding.weight.device
        return self.cell.zeros(shape, device)

    def forward(
        self, tokens: Tensor, state: State, return_hidden: bool = False
    ) -> tuple[Tensor, State] | tuple[Tensor, State, Tensor, Tensor]:
        """Logits and the new state; with `return_hidden` also the last layer's output before
        and after its dropout (seq_len, batch, hidden), for activation regularisation."""
        c = self.config
        emb = embedding_dropout(self.embedding, tokens, c.embedding_dropout, self.training)
        emb = locked_dropout(self.dropout(emb), c.input_dropout, self.training)
        if c.leak > 0:
            output, state = self._unrolled(emb, state)
        elif self.training and (c.weight_drop or c.hidden_dropout):
            output, state = self._regularised(emb, state)
        else:
            output, state = self.rnn(emb, state)  # (seq_len, batch, hidden)
        dropped = locked_dropout(self.dropout(output), c.output_dropout, self.training)
        logits = self.output(dropped)  # (seq_len, batch, vocab_size)
        if return_hidden:
            return logits, state, output, dropped
        return logits, state

    def output(self, hidden: Tensor) -> Tensor:
        """The last layer's output (..., hidden) -> logits (..., vocab), through the projection
        when tied weights need one."""
        if self.projection is not None:
            hidden = self.projection(hidden)
        return self.decoder(hidden)

    def _regularised(self, emb: Tensor, state: State) -> tuple[Tensor, State]:
        """Training forward with DropConnect on the recurrent weights (weight_drop) and locked
        dropout between layers (hidden_dropout), still through the fused kernels.

        The dropped w_hh is a fresh tensor passed in place of the parameter for this call, so
        the gradient reaches the raw weight through the mask and `layer_weights` stay the raw
        (evaluation) weights. One mask per forward: the same dropped weights at every step.
        """
        c = self.config
        dropped_hh = [
            F.dropout(getattr(self.rnn, f"weight_hh_l{k}"), c.weight_drop, training=True)
            for k in range(c.layers)
        ]
        if not c.hidden_dropout:  # one fused call for the whole stack
            swapped = {f"weight_hh_l{k}": w for k, w in enumerate(dropped_hh)}
            return functional_call(self.rnn, swapped, (emb, state))
        x, finals = emb, []
        for k in range(c.layers):
            weights = {**self.layer_weights(k).named(0), "weight_hh_l0": dropped_hh[k]}
            shell = self._layer_shells[min(k, 1)]
            layer_state = map_state(lambda s, k=k: s[k : k + 1], state)
            x, final = functional_call(shell, weights, (x, layer_state))
            finals.append(final)
            if k < c.layers - 1:
                x = locked_dropout(self.dropout(x), c.hidden_dropout, True)
        return x, map_state(lambda *parts: torch.cat(parts), *finals)

    def _unrolled(self, emb: Tensor, state: State) -> tuple[Tensor, State]:
        """A step-by-step forward through the fused module's weights, for what the kernel does
        not compute (leaky units)."""
        weights = [self.layer_weights(k) for k in range(self.config.layers)]
        drop = self.config.dropout if self.training else 0.0
        return run_layers(self.cell, weights, emb, state, drop, self.config.leak)

    def step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """One token per sequence: token (batch,) -> logits (batch, vocab), new state.

        The lean path for generation: no fused-kernel set-up per call (several times faster than
        calling `nn.GRU` on one step on a CPU), same weights and same outputs (tested).
        """
        x = self.embedding(token)  # (batch, embedding_dim)
        new = []
        for layer in range(self.config.layers):
            w = self.layer_weights(layer)
            new.append(self.cell.step(w, x, layer_of(state, layer), self.config.leak))
            x = self.cell.output(new[-1])
        return self.output(x), stack_layers(new)


class LeanStepper:
    """A frozen copy of a model's weights laid out for one-token steps (sampling).

    Each layer's weights are laid out by its cell (cells.py): transposed once, contiguous, with
    the two biases added together where the equations allow, so a step is one or two `addmm`
    plus in-place activations, several times faster on a CPU than `RNNLanguageModel.step` or calling
    `nn.LSTM` on a length-1 sequence (figures: docs/benchmarks.md). It reads the weights when
    built: build a new one after the model changes. Outputs match `model.step` (tested to 1e-5).
    `quantize="int8"` makes every product (the layers' and the decoder's) PyTorch's dynamic int8
    linear (quantize.py): CPU only, the same outputs to about 1e-2. Tokens `banned` (sampling's
    unknown token) get a decoder bias of -inf, so their logits come out -inf at no cost.
    """

    def __init__(
        self, model: RNNLanguageModel, quantize: str | None = None, banned: Sequence[int] = ()
    ) -> None:
        self.cell, self.layers, self.leak = model.cell, model.config.layers, model.config.leak
        self.quantize = quantize
        with torch.no_grad():
            self.embedding = model.embedding.weight.detach().clone()
            decoder_t = model.decoder.weight.detach().t()  # (hidden or embedding, vocab)
            if model.projection is not None:
                # Folded into one matrix: (hidden, embedding) @ (embedding, vocab).
                decoder_t = model.projection.weight.detach().t() @ decoder_t
            bias = model.decoder.bias.detach().clone()
            bias[list(banned)] = float("-inf")
            self.decoder = Affine(decoder_t.contiguous(), bias)
            self.layouts = [
                self.cell.lean_layout(model.layer_weights(layer)) for layer in range(self.layers)
            ]
        if quantize is not None:
            self.decoder, *self.layouts = quantize_layouts([self.decoder, *self.layouts], quantize)

    def layer_states(self, state: State) -> list[State]:
        """A state as the model carries it (layers, batch, hidden) -> one state per layer."""
        return [layer_of(state, layer) for layer in range(self.layers)]

    def advance(self, token: Tensor, states: list[State]) -> Tensor:
        """One step: token (batch,) -> logits (batch, vocab), `states` (per layer) replaced by the
        new ones. The sampler's loop; the caller turns autograd off (inference mode)."""
        x = self.embedding.index_select(0, token)  # (batch, embedding_dim)
        step, output, leak = self.cell.lean_step, self.cell.output, self.leak
        for layer, layout in enumerate(self.layouts):
            states[layer] = state = step(layout, x, states[layer], leak)
            x = output(state)
        return self.decoder(x)  # (batch, vocab)

    @torch.no_grad()
    def __call__(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """token (batch,) and a state as the model carries it -> logits (batch, vocab), state."""
        states = self.layer_states(state)
        logits = self.advance(token, states)
        return logits, stack_layers(states)


class SteppedModel:
    """A LeanStepper called as the model is called for scoring (evaluate): tokens (seq, batch)
    and a state -> logits (seq, batch, vocab) and the state, one lean step per position. How
    `evaluate --quantize int8` scores exactly the steps that int8 sampling takes."""

    training = False

    def __init__(self, model: RNNLanguageModel, stepper: LeanStepper) -> None:
        self.model, self.stepper, self.embedding = model, stepper, model.embedding

    def eval(self) -> SteppedModel:
        return self

    def train(self, mode: bool = True) -> SteppedModel:
        return self  # never trained: a frozen copy of the weights

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        return self.model.initial_state(batch_size, device)

    @torch.inference_mode()
    def __call__(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        states = self.stepper.layer_states(state)
        logits = torch.stack([self.stepper.advance(token, states) for token in tokens])
        return logits, stack_layers(states)


def detach_state(state: State) -> State:
    """Cut the graph at the window edge; the values still carry over (truncated BPTT)."""
    return map_state(Tensor.detach, state)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, counting tied tensors once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
