"""The measuring scripts behind docs/results.md: their own logic, without the runs they time."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from charlm.config import build_config, shipped_configs

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WindowModel(torch.nn.Module):
    """Stands in for nanoGPT's GPT: uniform predictions, and a record of every window."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.windows = vocab, []

    def forward(self, x, y):
        self.windows.append((x[0].clone(), y[0].clone()))
        return torch.zeros(1, x.shape[1], self.vocab), None


@pytest.mark.parametrize(
    "length,block,stride", [(200, 16, 16), (200, 16, 4), (37, 8, 3), (5, 8, 8)]
)
def test_nanogpt_score_predicts_every_character_once_with_enough_context(length, block, stride):
    score = load_script("nanogpt_score").score
    ids = torch.arange(length)  # every id once: a window's place in the text is its first id
    model = WindowModel(length)
    total, count = score(model, ids, block, stride)
    assert count == length - 1
    assert total == pytest.approx(count * math.log(length))
    scored, done = [], 0
    for x, y in model.windows:  # what each window scored: its targets after the ones done
        start = int(x[0])
        assert len(x) <= block and torch.equal(ids[start + 1 : start + 1 + len(y)], y)
        first = done - start
        for j in range(first, len(y)):
            scored.append(start + j + 1)
            context = j + 1
            assert context >= min(start + j + 1, block - stride + 1)
        done = start + len(y)
    assert scored == list(range(1, length))


@pytest.mark.parametrize("name", sorted(load_script("recipe_search").CANDIDATES))
def test_recipe_search_candidates_are_valid_settings(name):
    script = load_script("recipe_search")
    config, settings = script.CANDIDATES[name]
    sets = ["train.max_time=600", "train.max_steps=0", *settings]
    built = build_config(config_file=shipped_configs()[config], overrides=sets)
    assert built.train.max_time == 600 and built.train.max_steps == 0


def test_recipe_search_rows_rebuild_the_models_they_measured():
    """The table's rows were measured on the 2x256 GRU that the ten-minute config was then."""
    script = load_script("recipe_search")

    def model(name):
        config, settings = script.CANDIDATES[name]
        return build_config(config_file=shipped_configs()[config], overrides=settings).model

    assert (model("cpu").cell, model("cpu").hidden_size, model("cpu").dropout) == ("gru", 256, 0.1)
    assert (model("gru320").cell, model("gru320").hidden_size) == ("gru", 320)
    assert (model("lstm384").cell, model("lstm384").hidden_size) == ("lstm", 384)
