"""Optimisers by name, the learning-rate and BPTT-length schedules, and the validation policy.

Adding an optimiser: an entry in `OPTIMIZERS` and its name in `OptimConfig.name` (config.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from charlm.config import OptimConfig
from charlm.errors import ConfigError
from charlm.regularise import should_start_averaging

OptimizerFactory = Callable[[list[torch.nn.Parameter], OptimConfig], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "rmsprop": lambda params, o: torch.optim.RMSprop(
        params, lr=o.lr, alpha=o.alpha, eps=o.eps, weight_decay=o.weight_decay
    ),
    "adam": lambda params, o: torch.optim.Adam(
        params, lr=o.lr, eps=o.eps, weight_decay=o.weight_decay
    ),
    "adamw": lambda params, o: torch.optim.AdamW(
        params, lr=o.lr, eps=o.eps, weight_decay=o.weight_decay
    ),
    # NT-ASGD: plain SGD; the averaging is WeightAverager's, once ValidationPolicy triggers it.
    "asgd": lambda params, o: torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay),
    # pytorch/examples' and Zaremba et al.'s recipes: plain, momentum or Nesterov SGD.
    "sgd": lambda params, o: torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
    ),
}


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser `optim.name` names over the model's parameters; an unknown name is refused
    (it used to train AdamW without a word)."""
    factory = OPTIMIZERS.get(optim.name)
    if factory is None:
        raise ConfigError(
            f"optim.name: unknown optimiser '{optim.name}'; use one of {', '.join(OPTIMIZERS)}"
        )
    return factory(list(model.parameters()), optim)


def patch_resumed_optimizer(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> None:
    """Settings that a resume may change but that the optimiser's saved state carries: set them
    from the config again after `load_state_dict` (the rate is set every step anyway)."""
    for group in optimizer.param_groups:
        if "eps" in group:
            group["eps"] = optim.eps


def learning_rate(
    optim: OptimConfig, step: int, total_steps: int, epoch: int = 0, plateau_scale: float = 1.0
) -> float:
    """The rate for optimiser step `step` (0-based) after `epoch` completed epochs.

    A pure function of its arguments, so resume needs no state beyond the cursor and, for
    schedule=plateau, the scale that past plateaus left (`plateau_scale`, saved in checkpoints).
    """
    if optim.warmup_steps and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "decay":  # char-rnn: decay at the end of each epoch >= decay_after
        decays = max(0, epoch - max(1, math.ceil(optim.decay_after_epochs)) + 1)
        return optim.lr * optim.decay_rate**decays
    if optim.schedule == "plateau":
        return optim.lr * plateau_scale
    if optim.schedule == "cosine":
        span = max(1, total_steps - optim.warmup_steps)
        progress = min(1.0, (step - optim.warmup_steps) / span)
        floor = optim.lr * 0.1  # decay to a tenth, not to zero (as nanoGPT does)
        return floor + 0.5 * (optim.lr - floor) * (1 + math.cos(math.pi * progress))
    return optim.lr


def bptt_length(seq_len: int, seed: int, step: int) -> int:
    """AWD-LSTM's variable window: seq_len (p=0.95) or seq_len/2, then a normal draw around it
    (sd 5, at least 5 tokens), so windows start at ever-different offsets across epochs.

    Drawn from a generator seeded by (seed, step): every process draws the same length, and a
    resumed run draws what the uninterrupted one would have, without saving any state.
    """
    rng = np.random.default_rng([seed, step])
    base = seq_len if rng.random() < 0.95 else seq_len / 2
    return max(5, int(rng.normal(base, 5)))


def variable_bptt_steps(stream_len: int, seq_len: int, seed: int, epochs: float) -> int:
    """How many variable-length windows (`bptt_length`) it takes to cover `epochs` epochs of
    streams `stream_len` long: the steps of a run bounded by train.epochs."""
    step, epoch, position = 0, 0, 0
    while epoch + position / stream_len < epochs:
        end = min(position + bptt_length(seq_len, seed, step), stream_len)
        epoch, position = (epoch + 1, 0) if end >= stream_len else (epoch, end)
        step += 1
    return step


@dataclass(frozen=True)
class Verdict:
    """What one validation decided."""

    is_best: bool
    start_averaging: bool  # NT-ASGD's trigger fired
    stop: bool  # train.patience is spent


@dataclass
class ValidationPolicy:
    """What validation drives: the best loss, train.patience, the plateau schedule's scale and
    NT-ASGD's trigger. Its state is saved in every checkpoint (`state_dict`)."""

    optim: OptimConfig
    patience: int = 0
    best_val_loss: float | None = None
    evals_since_best: int = 0
    val_history: list[float] = field(default_factory=list)
    plateau_scale: float = 1.0
    plateau_bad_evals: int = 0

    def observe(self, val_loss: float, averaging: bool) -> Verdict:
        """Take one validation loss; `averaging`: whether NT-ASGD already averages."""
        # A non-finite loss is never "best" (and never replaces a finite best).
        is_best = math.isfinite(val_loss) and (
            self.best_val_loss is None or val_loss < self.best_val_loss
        )
        if is_best:
            self.best_val_loss = val_loss
        self.val_history.append(val_loss)
        optim = self.optim
        start = (
            optim.name == "asgd"
            and not averaging
            and should_start_averaging(self.val_history, optim.nonmono)
        )
        self.evals_since_best = 0 if is_best else self.evals_since_best + 1
        if optim.schedule == "plateau":
            self.plateau_bad_evals = 0 if is_best else self.plateau_bad_evals + 1
            if self.plateau_bad_evals >= optim.plateau_patience:
                self.plateau_scale *= optim.decay_rate
                self.plateau_bad_evals = 0
        stop = bool(self.patience) and self.evals_since_best >= self.patience
        return Verdict(is_best, start, stop)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_val_loss": self.best_val_loss,
            "evals_since_best": self.evals_since_best,
            "val_history": list(self.val_history),
            "plateau_scale": self.plateau_scale,
            "plateau_bad_evals": self.plateau_bad_evals,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_val_loss = state["best_val_loss"]
        self.evals_since_best = int(state["evals_since_best"])
        self.val_history = list(state["val_history"])
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_bad_evals = int(state["plateau_bad_evals"])
