"""The recurrent cells: one object per cell (module, state, initialisation, steps) in a registry.

A cell says how to build its module for a stack of layers (PyTorch's fused `nn.GRU`/`nn.LSTM`/
`nn.RNN` where one exists, else `UnrolledRNN`, a loop over time), whether its state is an (h, c)
pair, how its weights start, its reference step (the equations written out, for sampling,
gradient-through-time measurements and cells without a fused kernel) and its lean sampling
layout and step. Every cell keeps PyTorch's parameter names (`weight_ih_l0`, `weight_hh_l0`,
`bias_ih_l0`, `bias_hh_l0`, plus its own extras), so checkpoints, DropConnect and per-layer
gradient norms need no cell-specific code. Adding a cell: a class here, its name in `CELLS`, and
its name in `ModelConfig.cell`'s list (config.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from charlm.config import ModelConfig

# The recurrent state: a tensor (layers, batch, hidden), or an (h, c) pair of them for LSTMs.
State = Tensor | tuple[Tensor, Tensor]


def map_state(fn: Callable[..., Tensor], *states: State) -> State:
    """`fn` applied to the state's tensor, or to each of the pair's tensors: with several
    states, to their corresponding tensors together (`fn(h1, h2)` and `fn(c1, c2)`)."""
    if isinstance(states[0], tuple):
        return tuple(fn(*parts) for parts in zip(*states, strict=True))  # type: ignore[return-value]
    return fn(*states)


def stack_layers(states: list[State]) -> State:
    """Per-layer states (batch, hidden) -> one state (layers, batch, hidden)."""
    return map_state(lambda *parts: torch.stack(parts), *states)


def layer_of(state: State, layer: int) -> State:
    return map_state(lambda s: s[layer], state)


class Affine:
    """`x @ W + b` for the lean steps, with W laid out (in, out) once: `affine(x)`, or
    `affine(x, addend)` = `x @ W + addend` for a matrix with no bias of its own. quantize.py
    swaps it for an int8 twin; in fp32 it is the one `torch.addmm` the steps always made."""

    __slots__ = ("bias", "weight")

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        self.weight, self.bias = weight, bias  # (in, out), (out,)

    def __call__(self, x: Tensor, addend: Tensor | None = None) -> Tensor:
        added = self.bias if addend is None else addend
        return torch.mm(x, self.weight) if added is None else torch.addmm(added, x, self.weight)


@dataclass(frozen=True)
class LayerWeights:
    """One layer's parameters in PyTorch's layout (gate order r,z,n for GRU; i,f,g,o for LSTM)."""

    w_ih: Tensor  # (gates * hidden, input)
    w_hh: Tensor  # (gates * hidden, hidden)
    b_ih: Tensor  # (gates * hidden,)
    b_hh: Tensor | None = None  # (gates * hidden,); None for a cell with one bias per gate
    peep: Tensor | None = None  # lstm-peephole: (3 * hidden,) diagonal weights on c (i, f, o)

    def named(self, layer: int = 0) -> dict[str, Tensor]:
        """The tensors under their module names for `layer` (for `functional_call`)."""
        names = {
            "weight_ih": self.w_ih,
            "weight_hh": self.w_hh,
            "bias_ih": self.b_ih,
            "bias_hh": self.b_hh,
            "weight_peep": self.peep,
        }
        return {f"{k}_l{layer}": v for k, v in names.items() if v is not None}


class Cell:
    """What the network needs of a cell. Subclasses set the class attributes and `step`."""

    name: str = ""
    gates: int = 1  # weight rows per hidden unit
    paired = False  # state is (h, c)
    fused: type[nn.RNNBase] | None = None  # PyTorch's kernel for a stack, if there is one
    fused_kwargs: dict[str, str] = {}
    recurrent_bias = True  # a separate b_hh, as PyTorch's kernels have
    extras: dict[str, int] = {}  # further per-layer parameters: name -> size in hidden units
    zero_init: tuple[str, ...] = ()  # UnrolledRNN: parameters (by name prefix) that start at 0
    blocks: tuple[str, ...] = ("W_hh",)  # names of W_hh's blocks of `hidden` rows, in order
    # `activations`' entries and their squashing function (sigmoid, tanh or relu)
    kinds: dict[str, str] = {"h": "tanh"}

    def module(self, input_size: int, hidden: int, layers: int, dropout: float) -> nn.Module:
        """The stack of `layers` layers: `module(x (seq, batch, input), state)` -> (output,
        final state), as `nn.GRU` is called; `dropout` between layers while training."""
        if self.fused is not None:
            return self.fused(
                input_size, hidden, num_layers=layers, dropout=dropout, **self.fused_kwargs
            )
        return UnrolledRNN(self, input_size, hidden, layers, dropout)

    def layer_weights(self, rnn: nn.Module, layer: int) -> LayerWeights:
        def get(name: str) -> Tensor | None:
            return getattr(rnn, f"{name}_l{layer}", None)

        return LayerWeights(
            get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_peep")
        )  # type: ignore[arg-type]

    def initialise(self, rnn: nn.Module, config: ModelConfig) -> None:
        """The settings' recurrent initialisation, over the module's own (PyTorch's) one."""
        hidden = config.hidden_size
        for layer in range(config.layers):
            w = self.layer_weights(rnn, layer)
            gain = config.recurrent_gain
            if config.recurrent_init == "orthogonal":
                for block in w.w_hh.data.split(hidden, dim=0):
                    nn.init.orthogonal_(block, gain=gain)
            elif config.recurrent_init == "identity":
                # IRNN (Le et al. 2015): identity recurrence, zero recurrent bias.
                for block in w.w_hh.data.split(hidden, dim=0):
                    block.copy_(gain * torch.eye(hidden))
                for bias in (w.b_hh, w.b_ih):
                    if bias is not None:
                        nn.init.zeros_(bias)
            self.initialise_layer(w, config)

    def initialise_layer(self, w: LayerWeights, config: ModelConfig) -> None:
        """Cell-specific initialisation of one layer (the LSTMs' forget bias)."""

    def reset_parameter(self, name: str, p: Tensor, hidden: int) -> None:
        """UnrolledRNN's initialisation of one parameter: zero for `zero_init`, else PyTorch's
        for its RNNs."""
        if name.startswith(self.zero_init):
            nn.init.zeros_(p)
            return
        bound = 1.0 / math.sqrt(hidden)
        nn.init.uniform_(p, -bound, bound)

    def zeros(self, shape: tuple[int, ...], device: torch.device | str | None) -> State:
        h = torch.zeros(shape, device=device)
        return (h, torch.zeros(shape, device=device)) if self.paired else h

    def output(self, state: State) -> Tensor:
        """The layer's output (its h) from its state."""
        return state[0] if self.paired else state  # type: ignore[return-value]

    def step(self, w: LayerWeights, x: Tensor, state: State, leak: float = 0.0) -> State:
        """The reference step of one layer: x (batch, input) and its state -> new state."""
        raise NotImplementedError

    def activations(self, w: LayerWeights, x: Tensor, state: State, leak: float = 0.0) -> dict:
        """The squashed values inside one step, by the names in `kinds` (gates, candidates);
        a cell that does not say more gives its new output h."""
        return {"h": self.output(self.step(w, x, state, leak))}

    def sequence(
        self, w: LayerWeights, xs: Tensor, state: State, leak: float = 0.0
    ) -> tuple[Tensor, State]:
        """One layer over a sequence xs (seq, batch, input) -> outputs (seq, batch, hidden) and
        its final state, one reference step at a time."""
        outputs = []
        for x in xs:
            state = self.step(w, x, state, leak)
            outputs.append(self.output(state))
        return torch.stack(outputs), state

    def lean_layout(self, w: LayerWeights) -> tuple[Any, ...]:
        """One layer's weights laid out for `lean_step`: its products as `Affine`s (transposed
        once, biases folded), then any other tensors it needs."""
        # One product for input and state: [x, h] @ [W_ih^T; W_hh^T].
        bias = w.b_ih + w.b_hh if w.b_hh is not None else w.b_ih
        return (
            Affine(torch.cat([w.w_ih, w.w_hh], dim=1).detach().t().contiguous(), bias.detach()),
        )

    def lean_step(
        self, layout: tuple[Any, ...], x: Tensor, state: State, leak: float = 0.0
    ) -> State:
        """`step` on a `lean_layout`, without autograd: the same state to 1e-5 (tested)."""
        raise NotImplementedError


class GRU(Cell):
    name, gates, fused = "gru", 3, nn.GRU
    blocks, kinds = ("r", "z", "n"), {"r": "sigmoid", "z": "sigmoid", "n": "tanh"}

    def activations(self, w: LayerWeights, x: Tensor, state: State, leak: float = 0.0) -> dict:
        gx = torch.addmm(w.b_ih, x, w.w_ih.t())
        gh = torch.addmm(w.b_hh, state, w.w_hh.t())  # type: ignore[arg-type]
        xr, xz, xn = gx.chunk(3, dim=1)
        hr, hz, hn = gh.chunk(3, dim=1)
        r = torch.sigmoid(xr + hr)
        return {"r": r, "z": torch.sigmoid(xz + hz), "n": torch.tanh(xn + r * hn)}

    def step(self, w: LayerWeights, x: Tensor, state: State, leak: float = 0.0) -> State:
        a = self.activations(w, x, state)
        return (1 - a["z"]) * a["n"] + a["z"] * state

    def lean_layout(self, w: LayerWeights) -> tuple[Any, ...]:
        # r and z see b_ih + b_hh; n sees b_in outside and b_hn inside r * (...).
        hidden = w.w_hh.shape[1]
        b_x = w.b_ih.detach().clone()
        b_x[: 2 * hidden] += w.b_hh[: 2 * hidden]  # type: ignore[index]
        b_h = torch.zeros_like(b_x)
        b_h[2 * hidden :] = w.b_hh[2 * hidden :]  # type: ignore[index]
        w_x, w_h = w.w_ih.detach().t().contiguous(), w.w_hh.detach().t().contiguous()
        return Affine(w_x, b_x), Affine(w_h, b_h)

    def lean_step(
        self, layout: tuple[Any, ...], x: Tensor, state: State, leak: float = 0.0
    ) -> State:
        from_x, from_h = layout
        h, hidden = state, state.shape[1]  # type: ignore[union-attr]
        gx = from_x(x)  # (batch, 3 * hidden)
        gh = from_h(h)
        rz = gx[:, : 2 * hidden].add_(gh[:, : 2 * hidden]).sigmoid_()
        r, z = rz.chunk(2, dim=1)
        n = gh[:, 2 * hidden :].mul_(r).add_(gx[:, 2 * hidden :]).tanh_()
        return torch.lerp(n, h, z)  # type: ignore[arg-type]  # (1 - z) * n + z * h


class LSTM(Cell):
    name, gates, fused, paired = "lstm", 4, nn.LSTM, True
    blocks = ("i", "f", "g", "o")
    kinds = {"i": "sigmoid", "f": "sigmoid", "g": "tanh", "o": "sigmoid", "tanh(c)": "tanh"}

    def initialise_layer(self, w: LayerWeights, config: ModelConfig) -> None:
        # One forget bias in total: PyTorch adds b_ih and b_hh, so set one, zero the other.
        hidden = config.hidden_size
        w.b_ih.data[hidden : 2 * hidden] = config.forget_bias
        w.b_hh.data[hidden : 2 * hidden] = 0.0  # type: ignore[union-attr]

    def activations(self, w: LayerWeights, x: Tensor, state: State, leak: float = 0.0) -> dict:
        h, c = state
        gates = torch.addmm(w.b_ih, x, w.w_ih.t()) + torch.addmm(w.b_hh, h, w.w_hh.t())  # type: ignore[arg-type]
        i, f, g, o = gates.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        return {"i": i, "f": f, "g": g, "o": o, "c": c, "tanh(c)": torch.tanh(c)}

    def step(self, w: LayerWeights, x: Tensor, state: State, leak: float = 0.0) -> State:
        a = self.activations(w, x, state)
        return a["o"] * a["tanh(c)"], a["c"]

    def lean_step(
        self, layout: tuple[Any, ...], x: Tensor, state: State, leak: float = 0.0
    ) -> State:
        (affine,) = layout
        (h, c), hidden = state, state[0].shape[1]  # type: ignore[index]
        gates = affine(torch.cat([x, h], dim=1))
        gates[:, : 2 * hidden].sigmoid_()  # i, f
        gates[:, 2 * hidden : 3 * hidden].tanh_()  # g
        gates[:, 3 * hidden :].sigmoid_()  # o
        i, f, g, o = gates.chunk(4, dim=1)
        c = f.mul_(c).addcmul_(i, g)
        return o.mul_(torch.tanh(c)), c


class TanhRNN(Cell):
    """h' = tanh(W_ih x + b_ih + W_hh h + b_hh); leaky units: leak * h + (1 - leak) * that."""

    name, gates, fused, fused_kwargs = "rnn", 1, nn.RNN, {"nonlinearity": "tanh"}
    activation: Callable[[Tensor], Tensor] = staticmethod(torch.tanh)
    activation_: Callable[[Tensor], Tensor] = staticmethod(Tensor.tanh_)  # in place (lean step)

    def activations(self, w: LayerWeights, x: Tensor, state: State, leak: float = 0.0) -> dict:
        """The new unit values before any leak mixes in the old state."""
        gx = torch.addmm(w.b_ih, x, w.w_ih.t())
        gh = torch.addmm(w.b_hh, state, w.w_hh.t())  # type: ignore[arg-type]
        return {"h": self.activation(gx + gh)}

    def step(self, w: LayerWeights, x: Tensor, state: State, leak: float = 0.0) -> State:
        new = self.activations(w, x, state)["h"]
        if leak:
            new = leak * state + (1 - leak) * new
        return new

    def lean_step(
        self, layout: tuple[Any, ...], x: Tensor, state: State, leak: float = 0.0
    ) -> State:
        (affine,) = layout
        h = state
        new = self.activation_(affine(torch.cat([x, h], dim=1)))  # type: ignore[list-item]
        return torch.lerp(new, h, leak) if leak else new  # type: ignore[arg-type]


class ReluRNN(TanhRNN):
    """`model.cell=rnn` with `model.nonlinearity=relu`: h' = relu(...). With
    `model.recurrent_init=identity` it is Le, Jaitly and Hinton (2015)'s IRNN. PyTorch's fused
    `nn.RNN` has the same choice (nonlinearity="relu"), so the same parameters and kernel."""

    fused_kwargs, kinds = {"nonlinearity": "relu"}, {"h": "relu"}
    activation = staticmethod(torch.relu)
    activation_ = staticmethod(Tensor.relu_)


class _Projected(Cell):
    """For unrolled cells: the input's share of the gates (x W_ih^T + b_ih) is computed for all
    steps in one product; `_from_input` does the rest of a step."""

    def _from_input(self, w: LayerWeights, gx: Tensor, state: State) -> State:
        raise NotImplementedError

    def step(self, w: LayerWeights, x: Tensor, state: State, leak: float = 0.0) -> State:
        return self._from_input(w, torch.addmm(w.b_ih, x, w.w_ih.t()), state)

    def sequence(
        self, w: LayerWeights, xs: Tensor, state: State, leak: float = 0.0
    ) -> tuple[Tensor, State]:
        outputs = []
        for gx in F.linear(xs, w.w_ih, w.b_ih):
            state = self._from_input(w, gx, state)
            outputs.append(self.output(state))
        return torch.stack(outputs), state


class PeepholeLSTM(_Projected, LSTM):
    """Gers & Schmidhuber (2000): the gates also read the cell state, through diagonal weights:
    input and forget gates c_{t-1}, the output gate the new c_t. No fused kernel: unrolled.
    The peephole weights start at zero, so the cell starts as the plain LSTM."""

    name, fused = "lstm-peephole", None
    extras, zero_init = {"weight_peep": 3}, ("weight_peep",)
    kinds, activations = {"h": "tanh"}, Cell.activations  # its output h only

    def _from_input(self, w: LayerWeights, gx: Tensor, state: State) -> State:
        """The step once the input's share of the gates (x W_ih^T + b_ih) is known."""
        h, c = state
        gates = torch.addmm(gx + w.b_hh, h, w.w_hh.t())  # type: ignore[operator]
        i, f, g, o = gates.chunk(4, dim=1)
        p_i, p_f, p_o = w.peep.chunk(3)  # type: ignore[union-attr]
        c = torch.sigmoid(f + p_f * c) * c + torch.sigmoid(i + p_i * c) * torch.tanh(g)
        return torch.sigmoid(o + p_o * c) * torch.tanh(c), c

    def lean_layout(self, w: LayerWeights) -> tuple[Any, ...]:
        return (*super().lean_layout(w), *w.peep.detach().chunk(3))  # type: ignore[union-attr]

    def lean_step(
        self, layout: tuple[Any, ...], x: Tensor, state: State, leak: float = 0.0
    ) -> State:
        affine, p_i, p_f, p_o = layout
        h, c = state
        gates = affine(torch.cat([x, h], dim=1))
        i, f, g, o = gates.chunk(4, dim=1)
        i = i.addcmul_(p_i, c).sigmoid_()
        f = f.addcmul_(p_f, c).sigmoid_()
        c = f.mul_(c).addcmul_(i, g.tanh_())
        return o.addcmul_(p_o, c).sigmoid_().mul_(torch.tanh(c)), c


def hard_sigmoid(x: Tensor) -> Tensor:
    """Theano's `T.nnet.hard_sigmoid`: clip(0.2 x + 0.5, 0, 1) (not PyTorch's x / 6 + 1/2)."""
    return (0.2 * x + 0.5).clamp(0.0, 1.0)


class TutorialGRU(_Projected):
    """The WildML tutorial's GRU exactly as its Theano code computes it (gate order z, r, c;
    one bias per gate, starting at zero as there):

        z = hard_sigmoid(U_z x + W_z s + b_z)     r = hard_sigmoid(U_r x + W_r s + b_r)
        c = tanh(U_c x + W_c (s * r) + b_c)       s' = (1 - z) * c + z * s

    The reset gate multiplies the state before W_c (PyTorch's GRU: r * (W_hn h + b_hn)).
    No fused kernel: unrolled."""

    name, gates, recurrent_bias, zero_init = "gru-tutorial", 3, False, ("bias",)
    blocks = ("z", "r", "c")

    def _from_input(self, w: LayerWeights, gx: Tensor, s: Tensor) -> Tensor:  # type: ignore[override]
        hidden = s.shape[1]
        xc = gx[:, 2 * hidden :]
        zr = torch.addmm(gx[:, : 2 * hidden], s, w.w_hh[: 2 * hidden].t())
        z, r = hard_sigmoid(zr).chunk(2, dim=1)
        c = torch.tanh(torch.addmm(xc, s * r, w.w_hh[2 * hidden :].t()))
        return (1 - z) * c + z * s

    def lean_layout(self, w: LayerWeights) -> tuple[Any, ...]:
        hidden = w.w_hh.shape[1]
        w_hh = w.w_hh.detach()
        return (
            Affine(w.w_ih.detach().t().contiguous(), w.b_ih.detach().clone()),
            Affine(w_hh[: 2 * hidden].t().contiguous()),
            Affine(w_hh[2 * hidden :].t().contiguous()),
        )

    def lean_step(
        self, layout: tuple[Any, ...], x: Tensor, state: State, leak: float = 0.0
    ) -> State:
        from_x, w_zr, w_c = layout
        s, hidden = state, state.shape[1]  # type: ignore[union-attr]
        gx = from_x(x)
        zr = w_zr(s, gx[:, : 2 * hidden]).mul_(0.2).add_(0.5).clamp_(0.0, 1.0)
        z, r = zr.chunk(2, dim=1)
        c = w_c(r.mul_(s), gx[:, 2 * hidden :]).tanh_()
        return torch.lerp(c, s, z)  # type: ignore[arg-type]


class UnrolledRNN(nn.Module):
    """A stack of layers of a cell with no fused kernel, called as `nn.GRU` is (time-major).

    Parameters carry PyTorch's names and layout, so everything that reads a fused module's
    weights reads these too."""

    def __init__(
        self, cell: Cell, input_size: int, hidden: int, layers: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.cell, self.hidden_size, self.num_layers, self.dropout = cell, hidden, layers, dropout
        for k in range(layers):
            size = input_size if k == 0 else hidden
            shapes = {
                "weight_ih": (cell.gates * hidden, size),
                "weight_hh": (cell.gates * hidden, hidden),
                "bias_ih": (cell.gates * hidden,),
            }
            if cell.recurrent_bias:
                shapes["bias_hh"] = (cell.gates * hidden,)
            shapes.update({name: (units * hidden,) for name, units in cell.extras.items()})
            for name, shape in shapes.items():
                self.register_parameter(f"{name}_l{k}", nn.Parameter(torch.empty(shape)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            self.cell.reset_parameter(name, p.data, self.hidden_size)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        weights = [self.cell.layer_weights(self, k) for k in range(self.num_layers)]
        return run_layers(self.cell, weights, x, state, self.dropout if self.training else 0.0)


def run_layers(
    cell: Cell,
    weights: list[LayerWeights],
    inputs: Tensor,
    state: State,
    dropout: float = 0.0,
    leak: float = 0.0,
) -> tuple[Tensor, State]:
    """A stack of layers over a sequence, step by step: (output, final state), as `nn.GRU`."""
    finals = []
    for k, w in enumerate(weights):
        inputs, final = cell.sequence(w, inputs, layer_of(state, k), leak)
        finals.append(final)
        if dropout and k < len(weights) - 1:
            inputs = F.dropout(inputs, dropout, training=True)
    return inputs, stack_layers(finals)


CELLS: dict[str, Cell] = {
    cell.name: cell for cell in (GRU(), LSTM(), TanhRNN(), PeepholeLSTM(), TutorialGRU())
}
# Variants of a registered cell chosen by a setting: (cell, model.nonlinearity) -> the cell.
_VARIANTS: dict[tuple[str, str], Cell] = {("rnn", "relu"): ReluRNN()}


def cell_for(config: ModelConfig) -> Cell:
    """The cell object a model's settings ask for (`model.cell`, and `model.nonlinearity` for
    the plain RNN)."""
    return _VARIANTS.get((config.cell, config.nonlinearity), CELLS[config.cell])


def cell_label(config: ModelConfig) -> str:
    """A short name for legends: the cell, or the plain RNN's variant (irnn, relu rnn, leaky
    rnn a=0.9, identity-init rnn)."""
    if config.cell != "rnn":
        return config.cell
    name = "rnn" if config.nonlinearity == "tanh" else "relu rnn"
    if config.recurrent_init == "identity":
        name = "irnn" if config.nonlinearity == "relu" else "identity-init rnn"
    return f"leaky {name} (a={config.leak:g})" if config.leak else name
