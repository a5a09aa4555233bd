"""Settings: defaults, YAML, overrides, validation and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from charlm.config import (
    RESUME_SAFE_KEYS,
    RunConfig,
    all_keys,
    build_config,
    config_differences,
    config_to_dict,
    config_to_yaml,
    parse_override,
)
from charlm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_tutorial_optimiser() -> None:
    config = build_config()
    assert (config.optim.name, config.optim.lr, config.optim.alpha, config.optim.eps) == (
        "rmsprop",
        1e-3,
        0.9,
        1e-6,
    )
    assert config.optim.clip_norm == 5.0
    assert config.validate() == []


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = build_config(config_file=path)
    assert isinstance(config, RunConfig)


def test_the_interface_names_exist() -> None:
    keys = set(all_keys())
    wanted = {
        "data.level",
        "data.vocab_size",
        "model.cell",
        "model.layers",
        "model.hidden_size",
        "model.embedding_dim",
        "model.dropout",
        "model.tie_weights",
        "optim.lr",
        "optim.alpha",
        "optim.eps",
        "optim.clip_norm",
        "train.batch_size",
        "train.seq_len",
        "train.max_steps",
        "train.epochs",
        "train.eval_every",
        "train.checkpoint_every",
        "train.seed",
        "train.device",
        "train.keep_checkpoints",
        "train.max_bad_steps",
    }
    assert wanted <= keys
    assert RESUME_SAFE_KEYS <= keys


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.hiden_size.*did you mean 'model.hidden_size'"):
        build_config(overrides=["model.hiden_size=3"])
    path = tmp_path / "c.yaml"
    path.write_text("modle:\n  cell: gru\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown section 'modle'.*'model'"):
        build_config(config_file=path)


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(overrides=["model.layers=0", "train.seq_len=x", "optim.lr=-1"])
    message = str(info.value)
    assert (
        "model.layers" in message and "train.seq_len" in message and len(message.splitlines()) >= 2
    )


def test_yaml_quirks_are_coerced_from_the_annotation(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\ntrain:\n  epochs: 2\nmodel:\n  tie_weights: false\n")
    config = build_config(config_file=path)
    assert config.optim.lr == pytest.approx(1e-3) and isinstance(config.optim.lr, float)
    assert config.train.epochs == 2.0


def test_wrong_types_and_choices_name_the_key() -> None:
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer"):
        build_config(overrides=["train.batch_size=1.5"])
    with pytest.raises(ConfigError, match="model.cell: 'transformer' is not one of gru, lstm, rnn"):
        build_config(overrides=["model.cell=transformer"])
    with pytest.raises(ConfigError, match="model.tie_weights: expected true or false"):
        build_config(overrides=["model.tie_weights=maybe"])


def test_repeated_and_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  seed: 1\n  seed: 2\n")
    with pytest.raises(ConfigError, match="repeated key 'seed'"):
        build_config(config_file=path)
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: line \d+: malformed YAML"):
        build_config(config_file=path)
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(config_file=tmp_path / "missing.yaml")


def test_override_needs_key_equals_value() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        build_config(overrides=["train.seed"])


def test_command_line_wins_over_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  seed: 5\n")
    assert build_config(config_file=path, overrides=["train.seed=9"]).train.seed == 9


def test_cross_field_validation() -> None:
    with pytest.raises(ConfigError, match=r"model.unigram_bias must be in \[0, 1\]"):
        build_config(overrides=["model.unigram_bias=1.5"])
    with pytest.raises(ConfigError, match="set train.max_steps or train.epochs"):
        build_config(overrides=["train.max_steps=0"])
    with pytest.raises(ConfigError, match="data.batching=sentence needs data.level=word"):
        build_config(overrides=["data.batching=sentence"])


def test_saved_yaml_round_trips() -> None:
    config = build_config(overrides=["model.cell=lstm", "optim.lr=0.002", "train.seed=4"])
    from charlm.config import yaml

    again = build_config(base=yaml.safe_load(config_to_yaml(config)))
    assert again == config
    assert config_differences(config, again) == []
    other = build_config(overrides=["model.cell=gru"])
    assert "model.cell: 'lstm' -> 'gru'" in config_differences(config, other)


@given(
    seed=st.integers(0, 2**31 - 1),
    lr=st.floats(1e-6, 1.0),
    cell=st.sampled_from(["gru", "lstm", "rnn"]),
)
def test_overrides_parse_back_to_what_was_written(seed: int, lr: float, cell: str) -> None:
    config = build_config(
        overrides=[f"train.seed={seed}", f"optim.lr={lr!r}", f"model.cell={cell}"]
    )
    assert (config.train.seed, config.optim.lr, config.model.cell) == (seed, lr, cell)
    assert parse_override(f"train.seed={seed}") == ("train.seed", seed)
    assert config_to_dict(config)["optim"]["lr"] == lr


# -- defaults that depend on the level -------------------------------------------------------


def test_word_level_rmsprop_defaults_to_its_own_rate_unless_a_layer_names_one(tmp_path) -> None:
    from charlm.config import LEVEL_DEFAULTS, OptimConfig

    word_lr = LEVEL_DEFAULTS[("word", "rmsprop")][("optim", "lr")]
    assert word_lr != OptimConfig.lr
    assert build_config(overrides=["data.level=word"]).optim.lr == word_lr
    named = tmp_path / "w.yaml"
    named.write_text("data:\n  level: word\noptim:\n  lr: 1.0e-3\n")
    assert build_config(config_file=named).optim.lr == OptimConfig.lr  # a file names it
    assert build_config(overrides=["data.level=word", "optim.lr=2e-3"]).optim.lr == 2e-3
    # the other optimisers were not measured with it: they keep the section's default
    assert build_config(overrides=["data.level=word", "optim.name=adam"]).optim.lr == OptimConfig.lr


def test_char_and_bpe_defaults_are_the_sections_own() -> None:
    """The quick start and the Markov check (char level) cannot change with the word default."""
    from charlm.config import RunConfig

    assert build_config() == RunConfig()
    assert build_config(overrides=["data.level=bpe"]).optim == RunConfig().optim


def test_a_saved_word_run_keeps_the_rate_it_was_trained_with() -> None:
    """A run saved before the word default existed names lr 1e-3; resuming keeps it."""
    from charlm.config import config_to_dict

    old = config_to_dict(build_config(overrides=["data.level=word", "optim.lr=1e-3"]))
    assert build_config(base=old).optim.lr == 1e-3
