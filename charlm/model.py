"""The network: embedding, stacked GRU/LSTM/tanh-RNN, linear decoder, and its recurrent state."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from charlm.config import ModelConfig
from charlm.regularise import embedding_dropout, locked_dropout

# The recurrent state: a tensor (layers, batch, hidden) for GRU/RNN, an (h, c) pair for LSTM.
State = Tensor | tuple[Tensor, Tensor]

_MODULES = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
GATES = {"gru": 3, "lstm": 4, "rnn": 1}  # weight rows per hidden unit, as PyTorch stacks them


@dataclass(frozen=True)
class LayerWeights:
    """One layer's parameters in PyTorch's layout (gate order r,z,n for GRU; i,f,g,o for LSTM)."""

    w_ih: Tensor  # (gates * hidden, input)
    w_hh: Tensor  # (gates * hidden, hidden)
    b_ih: Tensor  # (gates * hidden,)
    b_hh: Tensor  # (gates * hidden,)


def cell_step(cell: str, w: LayerWeights, x: Tensor, state: State, leak: float = 0.0) -> State:
    """Advance one layer by one time step: x (batch, input) and state -> new state.

    The same equations as `nn.GRU`/`nn.LSTM`/`nn.RNN`, written out so that a step can be taken
    without the fused kernel (sampling, leaky units, gradient-through-time measurements).
    """
    if cell == "lstm":
        h, c = state  # type: ignore[misc]
        gates = torch.addmm(w.b_ih, x, w.w_ih.t()) + torch.addmm(w.b_hh, h, w.w_hh.t())
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    h = state  # type: ignore[assignment]
    gx = torch.addmm(w.b_ih, x, w.w_ih.t())
    gh = torch.addmm(w.b_hh, h, w.w_hh.t())
    if cell == "gru":
        xr, xz, xn = gx.chunk(3, dim=1)
        hr, hz, hn = gh.chunk(3, dim=1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h
    new = torch.tanh(gx + gh)
    if leak:
        new = leak * h + (1 - leak) * new
    return new


class RNNLanguageModel(nn.Module):
    """Token ids (seq_len, batch) and a state -> next-token logits (seq_len, batch, vocab).

    Time-major throughout: it is the fused kernels' native layout (batch-first costs a copy).
    """

    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, config.embedding_dim)
        kwargs = {"nonlinearity": "tanh"} if config.cell == "rnn" else {}
        self.rnn = _MODULES[config.cell](
            config.embedding_dim,
            config.hidden_size,
            num_layers=config.layers,
            dropout=config.dropout if config.layers > 1 else 0.0,
            **kwargs,
        )
        self.dropout = nn.Dropout(config.dropout)
        # Weightless one-layer twins of self.rnn (on the meta device, outside the module tree):
        # `functional_call` runs them with a layer's weights, so locked dropout between layers
        # still uses the fused kernel. Index 0 takes the embedding, index 1 a layer's output.
        with torch.device("meta"):
            self._layer_shells = tuple(
                _MODULES[config.cell](size, config.hidden_size, **kwargs)
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
        hidden = self.config.hidden_size
        for layer in range(self.config.layers):
            w_hh = getattr(self.rnn, f"weight_hh_l{layer}")
            if self.config.recurrent_init == "orthogonal":
                for block in w_hh.data.split(hidden, dim=0):
                    nn.init.orthogonal_(block)
            elif self.config.recurrent_init == "identity":
                # IRNN (Le et al. 2015): identity recurrence, zero recurrent bias.
                for block in w_hh.data.split(hidden, dim=0):
                    block.copy_(torch.eye(hidden))
                for name in (f"bias_hh_l{layer}", f"bias_ih_l{layer}"):
                    nn.init.zeros_(getattr(self.rnn, name))
            if self.config.cell == "lstm":
                # One forget bias in total: PyTorch adds b_ih and b_hh, so set one, zero the other.
                b_ih = getattr(self.rnn, f"bias_ih_l{layer}").data
                b_hh = getattr(self.rnn, f"bias_hh_l{layer}").data
                b_ih[hidden : 2 * hidden] = self.config.forget_bias
                b_hh[hidden : 2 * hidden] = 0.0

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
        return LayerWeights(
            getattr(self.rnn, f"weight_ih_l{layer}"),
            getattr(self.rnn, f"weight_hh_l{layer}"),
            getattr(self.rnn, f"bias_ih_l{layer}"),
            getattr(self.rnn, f"bias_hh_l{layer}"),
        )

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zeros in the shape this cell carries; the training loop never branches on the cell."""
        shape = (self.config.layers, batch_size, self.config.hidden_size)
        device = device if device is not None else self.embedding.weight.device
        h = torch.zeros(shape, device=device)
        return (h, torch.zeros(shape, device=device)) if self.config.cell == "lstm" else h

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
            w = self.layer_weights(k)
            weights = {
                "weight_ih_l0": w.w_ih,
                "weight_hh_l0": dropped_hh[k],
                "bias_ih_l0": w.b_ih,
                "bias_hh_l0": w.b_hh,
            }
            if isinstance(state, tuple):
                layer_state: State = (state[0][k : k + 1], state[1][k : k + 1])
            else:
                layer_state = state[k : k + 1]
            x, final = functional_call(self._layer_shells[min(k, 1)], weights, (x, layer_state))
            finals.append(final)
            if k < c.layers - 1:
                x = locked_dropout(self.dropout(x), c.hidden_dropout, True)
        if isinstance(state, tuple):
            return x, (torch.cat([f[0] for f in finals]), torch.cat([f[1] for f in finals]))
        return x, torch.cat(finals)

    def _unrolled(self, emb: Tensor, state: State) -> tuple[Tensor, State]:
        """A step-by-step forward for cells no fused kernel implements (leaky units)."""
        layers = []
        inputs = emb
        drop = self.config.dropout if self.training else 0.0
        for layer in range(self.config.layers):
            w = self.layer_weights(layer)
            h = state[layer]  # type: ignore[index]
            outputs = []
            for x in inputs:
                h = cell_step(self.config.cell, w, x, h, self.config.leak)
                outputs.append(h)
            layers.append(h)
            inputs = torch.stack(outputs)
            if layer < self.config.layers - 1 and drop:
                inputs = nn.functional.dropout(inputs, drop, training=True)
        return inputs, torch.stack(layers)

    def step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """One token per sequence: token (batch,) -> logits (batch, vocab), new state.

        The lean path for generation: no fused-kernel set-up per call (several times faster than
        calling `nn.GRU` on one step on a CPU), same weights and same outputs (tested).
        """
        x = self.embedding(token)  # (batch, embedding_dim)
        cell = self.config.cell
        new_h, new_c = [], []
        for layer in range(self.config.layers):
            w = self.layer_weights(layer)
            if cell == "lstm":
                h, c = cell_step(cell, w, x, (state[0][layer], state[1][layer]))  # type: ignore[misc]
                new_c.append(c)
            else:
                h = cell_step(cell, w, x, state[layer], self.config.leak)  # type: ignore[assignment,index]
            new_h.append(h)
            x = h
        logits = self.output(x)
        if cell == "lstm":
            return logits, (torch.stack(new_h), torch.stack(new_c))
        return logits, torch.stack(new_h)


class LeanStepper:
    """A frozen copy of a model's weights laid out for one-token steps (sampling).

    Each layer's weights are transposed to (input, gates * hidden) once, contiguous, with the
    two biases added together where the equations allow, so a step is one or two `addmm` plus
    in-place activations: for a 2x512 LSTM on a CPU, 2.8x `RNNLanguageModel.step` and 4-13x
    calling `nn.LSTM` on a length-1 sequence (docs/benchmarks.md). It reads the weights when
    built: build a new one after the model changes. Outputs match `model.step` (tested to 1e-5).
    """

    def __init__(self, model: RNNLanguageModel) -> None:
        config = model.config
        self.cell, self.layers, self.leak = config.cell, config.layers, config.leak
        hidden = config.hidden_size
        self.hidden = hidden
        with torch.no_grad():
            self.embedding = model.embedding.weight.detach().clone()
            decoder_t = model.decoder.weight.detach().t()  # (hidden or embedding, vocab)
            if model.projection is not None:
                # Folded into one matrix: (hidden, embedding) @ (embedding, vocab).
                decoder_t = model.projection.weight.detach().t() @ decoder_t
            self.decoder_t = decoder_t.contiguous()  # (hidden, vocab)
            self.decoder_b = model.decoder.bias.detach().clone()
            self.w_x: list[Tensor] = []  # GRU: (input, 3h); else [x; h] stacked (input + h, g*h)
            self.w_h: list[Tensor] = []  # GRU only: (hidden, 3h)
            self.b_x: list[Tensor] = []
            self.b_h: list[Tensor] = []  # GRU only: zero but for b_hn, which r multiplies
            for layer in range(self.layers):
                w = model.layer_weights(layer)
                if self.cell == "gru":
                    # r and z see b_ih + b_hh; n sees b_in outside and b_hn inside r * (...).
                    b_x = w.b_ih.detach().clone()
                    b_x[: 2 * hidden] += w.b_hh[: 2 * hidden]
                    b_h = torch.zeros_like(b_x)
                    b_h[2 * hidden :] = w.b_hh[2 * hidden :]
                    self.w_x.append(w.w_ih.detach().t().contiguous())
                    self.w_h.append(w.w_hh.detach().t().contiguous())
                    self.b_x.append(b_x)
                    self.b_h.append(b_h)
                else:
                    # One product for input and state: [x, h] @ [W_ih^T; W_hh^T].
                    self.w_x.append(torch.cat([w.w_ih, w.w_hh], dim=1).detach().t().contiguous())
                    self.b_x.append((w.b_ih + w.b_hh).detach())

    @torch.no_grad()
    def __call__(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """token (batch,) and a state as the model carries it -> logits (batch, vocab), state."""
        x = self.embedding[token]  # (batch, embedding_dim)
        hidden, new_h, new_c = self.hidden, [], []
        for layer in range(self.layers):
            if self.cell == "lstm":
                h, c = state[0][layer], state[1][layer]  # type: ignore[index]
                gates = torch.addmm(self.b_x[layer], torch.cat([x, h], dim=1), self.w_x[layer])
                gates[:, : 2 * hidden].sigmoid_()  # i, f
                gates[:, 2 * hidden : 3 * hidden].tanh_()  # g
                gates[:, 3 * hidden :].sigmoid_()  # o
                i, f, g, o = gates.chunk(4, dim=1)
                c = f.mul_(c).addcmul_(i, g)
                x = o.mul_(torch.tanh(c))
                new_c.append(c)
            elif self.cell == "gru":
                h = state[layer]  # type: ignore[index]
                gx = torch.addmm(self.b_x[layer], x, self.w_x[layer])  # (batch, 3 * hidden)
                gh = torch.addmm(self.b_h[layer], h, self.w_h[layer])
                rz = gx[:, : 2 * hidden].add_(gh[:, : 2 * hidden]).sigmoid_()
                r, z = rz.chunk(2, dim=1)
                n = gh[:, 2 * hidden :].mul_(r).add_(gx[:, 2 * hidden :]).tanh_()
                x = torch.lerp(n, h, z)  # (1 - z) * n + z * h
            else:
                h = state[layer]  # type: ignore[index]
                new = torch.addmm(self.b_x[layer], torch.cat([x, h], dim=1), self.w_x[layer])
                x = new.tanh_()
                if self.leak:
                    x = torch.lerp(x, h, self.leak)  # leak * h + (1 - leak) * new
            new_h.append(x)
        logits = torch.addmm(self.decoder_b, x, self.decoder_t)  # (batch, vocab)
        if self.cell == "lstm":
            return logits, (torch.stack(new_h), torch.stack(new_c))
        return logits, torch.stack(new_h)


def detach_state(state: State) -> State:
    """Cut the graph at the window edge; the values still carry over (truncated BPTT)."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, counting tied tensors once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
