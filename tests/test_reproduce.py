"""The reproduction recipes: their configs validate, and the script runs a recipe end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from helpers import pattern_text

from charlm.config import build_config

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
assert spec is not None and spec.loader is not None
reproduce = importlib.util.module_from_spec(spec)
sys.modules["reproduce"] = reproduce  # dataclasses look their module up there
spec.loader.exec_module(reproduce)


@pytest.mark.parametrize("name", sorted(reproduce.RECIPES))
def test_each_recipe_and_its_quick_settings_validate(name: str) -> None:
    recipe = reproduce.RECIPES[name]
    config = build_config(config_file=ROOT / recipe.config, overrides=list(recipe.quick))
    assert config.train.threads == 1  # quick runs must not collapse on a busy 2-core machine


def test_recipe_configs_ask_for_what_the_issue_names() -> None:
    shakespeare = build_config(config_file=ROOT / "configs/shakespeare-char.yaml")
    assert shakespeare.data.val_fraction == 0.1 and shakespeare.data.level == "char"
    wikitext = build_config(config_file=ROOT / "configs/wikitext2-word.yaml")
    assert wikitext.optim.name == "asgd" and wikitext.model.tie_weights
    assert wikitext.train.variable_bptt and wikitext.model.weight_drop > 0


@pytest.mark.slow
def test_reproduce_runs_train_test_and_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_text, test_text = tmp_path / "train.txt", tmp_path / "test.txt"
    train_text.write_text(pattern_text(4000, seed=1), encoding="utf-8")
    test_text.write_text(pattern_text(600, seed=2), encoding="utf-8")
    recipe = reproduce.Recipe(
        config="configs/shakespeare-char.yaml",
        text=train_text,
        test_file=test_text,
        quick=(
            "model.layers=1",
            "model.hidden_size=16",
            "model.embedding_dim=8",
            "train.threads=1",
            "train.batch_size=4",
            "train.seq_len=16",
            "train.max_steps=12",
            "train.eval_every=6",
            "train.patience=0",
        ),
        sample_args=("--length", "30"),
    )
    monkeypatch.setitem(reproduce.RECIPES, "tiny", recipe)
    summary = reproduce.reproduce("tiny", quick=True, out=tmp_path / "runs")
    saved = json.loads((tmp_path / "runs/tiny-quick/summary.json").read_text())
    assert saved == summary
    assert summary["best_validation"]["evaluations"] == 2
    assert summary["best_validation"]["last_step"] == 12
    assert summary["test"]["tokens"] == len(test_text.read_text()) - 1  # batch size 1: all but one
    assert len(summary["samples"]) >= 30
    assert [c.split()[1] for c in summary["commands"]] == ["train", "evaluate", "sample"]
