"""The optimiser registry: each name of `optim.name`, how it is built, its state's size."""

from __future__ import annotations

from collections.abc import Callable

import torch

from charlm.config import OptimConfig
from charlm.errors import ConfigError

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
