"""Each choice named in config.py has its one home, and the two lists agree: a name added to a
setting's Literal without its registry entry (or the other way round) fails here, not for a
user. The homes are the ones docs/architecture.md names."""

from __future__ import annotations

import typing

import pytest
import torch

from charlm.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from charlm.data.batching import BATCHINGS
from charlm.data.tokenizer import LEVELS, build_tokenizer
from charlm.model.cells import CELLS
from charlm.training.optimizers import OPTIMIZERS, build_optimizer
from charlm.training.preflight import memory_estimate
from tests.helpers import seeded_model


def choices(section: type, name: str) -> set[str]:
    """The values a setting's `Literal[...]` allows."""
    return set(typing.get_args(typing.get_type_hints(section)[name]))


@pytest.mark.parametrize(
    ("section", "setting", "registry", "home"),
    [
        (ModelConfig, "cell", CELLS, "charlm/model/cells.py CELLS"),
        (OptimConfig, "name", OPTIMIZERS, "charlm/training/optimizers.py OPTIMIZERS"),
        (DataConfig, "level", LEVELS, "charlm/data/tokenizer.py LEVELS"),
        (DataConfig, "batching", BATCHINGS, "charlm/data/batching.py BATCHINGS"),
    ],
)
def test_config_names_match_their_registry(section, setting, registry, home) -> None:
    assert choices(section, setting) == set(registry), f"{section.__name__}.{setting} vs {home}"


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_builds_steps_and_sizes_its_state(name: str) -> None:
    model = seeded_model(5, layers=1, hidden_size=4, embedding_dim=3)
    optimizer = build_optimizer(model, OptimConfig(name=name))
    tokens = torch.zeros(3, 1, dtype=torch.long)  # (seq_len, batch)
    loss = model(tokens, model.initial_state(1, torch.device("cpu")))[0].sum()
    loss.backward()
    optimizer.step()
    buffers = sum(
        value.numel()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value) and value.dim() > 0
    )
    weights = sum(p.numel() for p in model.parameters())
    # The memory estimate's copies cover what the optimiser keeps after a step (asgd's running
    # mean lives in WeightAverager, so its optimiser, plain SGD, keeps none itself).
    assert buffers <= OPTIMIZERS[name].state_copies * weights
    params, size = memory_estimate(RunConfig(optim=OptimConfig(name=name)), 50)
    assert size > 4 * params * (2 + OPTIMIZERS[name].state_copies) - 1


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_every_cell_builds_and_runs(cell: str) -> None:
    model = seeded_model(5, cell=cell, layers=2, hidden_size=4, embedding_dim=3)
    logits, _ = model(
        torch.zeros(3, 2, dtype=torch.long), model.initial_state(2, torch.device("cpu"))
    )
    assert logits.shape == (3, 2, 5)  # (seq_len, batch, vocab)


@pytest.mark.parametrize("level", LEVELS)
def test_every_level_builds_a_tokenizer(level: str) -> None:
    text = "The cat sat. The dog ran.\n" * 20
    tokenizer = build_tokenizer(level, [text], 40)
    assert tokenizer.get_vocab_size() > 3
