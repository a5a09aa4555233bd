"""The network: embedding, stacked GRU/LSTM/tanh-RNN, linear decoder, and its recurrent state."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from charlm.config import ModelConfig

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
        self.decoder = nn.Linear(config.hidden_size, vocab_size)
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as the config asks; called once at construction, seeded by the caller."""
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if not self.config.tie_weights:
            bound = 1.0 / math.sqrt(self.config.hidden_size)
            nn.init.uniform_(self.decoder.weight, -bound, bound)
        nn.init.zeros_(self.decoder.bias)
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

    def forward(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        emb = self.dropout(self.embedding(tokens))  # (seq_len, batch, embedding_dim)
        if self.config.leak > 0:
            output, state = self._unrolled(emb, state)
        else:
            output, state = self.rnn(emb, state)  # (seq_len, batch, hidden)
        return self.decoder(self.dropout(output)), state  # (seq_len, batch, vocab_size)

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
        logits = self.decoder(x)
        if cell == "lstm":
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
