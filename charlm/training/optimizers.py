"""The optimiser registry: each name of `optim.name`, how it is built, its state's size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from charlm.config import OptimConfig
from charlm.errors import ConfigError

OptimizerFactory = Callable[[list[torch.nn.Parameter], OptimConfig], torch.optim.Optimizer]


@dataclass(frozen=True)
class Optimizer:
    """One entry of the registry: how the optimiser is built from `optim.*`, and how many
    weight-sized buffers its state holds (for the memory estimate checked before a run)."""

    build: OptimizerFactory
    state_copies: int


# Adding an optimiser: an entry here and its name in `OptimConfig.name` (config.py);
# tests/test_registries.py fails if the two lists differ.
OPTIMIZERS: dict[str, Optimizer] = {
    "rmsprop": Optimizer(
        lambda params, o: torch.optim.RMSprop(
            params, lr=o.lr, alpha=o.alpha, eps=o.eps, weight_decay=o.weight_decay
        ),
        state_copies=1,  # the squared-gradient average
    ),
    "adam": Optimizer(
        lambda params, o: torch.optim.Adam(params, lr=o.lr, eps=o.eps, weight_decay=o.weight_decay),
        state_copies=2,  # first and second moments
    ),
    "adamw": Optimizer(
        lambda params, o: torch.optim.AdamW(
            params, lr=o.lr, eps=o.eps, weight_decay=o.weight_decay
        ),
        state_copies=2,
    ),
    # NT-ASGD: plain SGD; the averaging is WeightAverager's (training/ntasgd.py), once
    # ValidationPolicy triggers it. Its one copy is the running mean.
    "asgd": Optimizer(
        lambda params, o: torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay),
        state_copies=1,
    ),
    # pytorch/examples' and Zaremba et al.'s recipes: plain, momentum or Nesterov SGD.
    "sgd": Optimizer(
        lambda params, o: torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        ),
        state_copies=1,  # the momentum buffer
    ),
}


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser `optim.name` names over the model's parameters; an unknown name is refused
    (it used to train AdamW without a word)."""
    return optimizer_entry(optim.name).build(list(model.parameters()), optim)


def optimizer_entry(name: str) -> Optimizer:
    """The registry's entry for `name`, or the one-line refusal naming the choices."""
    entry = OPTIMIZERS.get(name)
    if entry is None:
        raise ConfigError(
            f"optim.name: unknown optimiser '{name}'; use one of {', '.join(OPTIMIZERS)}"
        )
    return entry


def patch_resumed_optimizer(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> None:
    """Settings that a resume may change but that the optimiser's saved state carries: set them
    from the config again after `load_state_dict` (the rate is set every step anyway)."""
    for group in optimizer.param_groups:
        if "eps" in group:
            group["eps"] = optim.eps
