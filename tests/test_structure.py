"""The homes the restructuring gave each concept: one data-settings source, the optimiser table,
the validation policy, the typed run state, and a training run that leaves no global switch."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from charlm.config import OptimConfig
from charlm.data.prepare import PrepareSettings, prepare
from charlm.errors import ConfigError
from charlm.rundir.checkpoint import FORMAT_NAME, RunState, load_checkpoint
from charlm.training.optimizers import OPTIMIZERS, build_optimizer
from charlm.training.validation import ValidationPolicy
from tests.helpers import cli, train_tiny, write_corpus


def test_an_unknown_optimiser_is_refused_not_trained_as_adamw() -> None:
    model = torch.nn.Linear(2, 2)
    assert set(OPTIMIZERS) == {"rmsprop", "adam", "adamw", "asgd", "sgd"}
    for name, kind in [("rmsprop", torch.optim.RMSprop), ("asgd", torch.optim.SGD)]:
        assert type(build_optimizer(model, OptimConfig(name=name))) is kind  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError, match="optim.name: unknown optimiser 'lion'; use one of rmsprop, adam"
    ):
        build_optimizer(model, dataclasses.replace(OptimConfig(), name="lion"))


def test_validation_policy_decides_and_its_state_round_trips() -> None:
    optim = OptimConfig(name="asgd", schedule="plateau", plateau_patience=1, decay_rate=0.5)
    policy = ValidationPolicy(optim, patience=2)
    verdicts = [policy.observe(loss, averaging=False) for loss in (3.0, 2.0, 2.5)]
    assert [v.is_best for v in verdicts] == [True, True, False]
    assert policy.plateau_scale == 0.5 and not verdicts[-1].stop
    copy = ValidationPolicy(optim, patience=2)
    copy.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert copy == policy
    assert copy.observe(2.6, averaging=False).stop  # second evaluation without a best
    nonmono = ValidationPolicy(OptimConfig(name="asgd", nonmono=1))
    fired = [nonmono.observe(loss, averaging=False).start_averaging for loss in (3, 2, 1, 2.5)]
    assert fired == [False, False, False, True]


def test_run_state_reads_an_older_state_json_and_writes_format_1() -> None:
    older = {"format": FORMAT_NAME, "version": 1, "step": 40, "cursor": {"epoch": 1, "position": 9}}
    state = RunState.from_json(older)
    assert (state.step, state.epoch, state.position, state.world_size) == (40, 1, 9, 1)
    assert state.val_history == [] and state.plateau_scale == 1.0 and state.bad_steps == 0
    written = state.to_json()
    assert written["format"] == FORMAT_NAME and written["version"] == 1
    assert written["counters"] == {"bad_steps": 0, "clipped_steps": 0, "evals_since_best": 0}
    assert RunState.from_json(written) == state


def test_prepare_settings_take_every_default_from_data_config() -> None:
    from charlm.config import DataConfig

    data = DataConfig()
    settings = PrepareSettings()
    assert PrepareSettings.from_config(data) == settings
    for name in ("level", "vocab_size", "val_fraction", "csv_column", "lowercase", "segments"):
        assert getattr(settings, name) == getattr(data, name)


def test_one_csv_rule_for_train_and_prepare(tmp_path: Path) -> None:
    csv = tmp_path / "comments.csv"
    csv.write_text("id,body\n" + "".join(f'{i},"abc abd xyz {i}"\n' for i in range(300)))
    refused = [
        cli("prepare", csv, "--out", tmp_path / "p"),
        train_tiny(csv, "--out", tmp_path / "t", steps=2),
    ]
    for result in refused:
        assert result.exit_code == 2, result.stderr
        assert "needs its text column named" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "p").exists() and not (tmp_path / "t" / "checkpoints").exists()
    prepared = cli("prepare", csv, "--csv-column", "body", "--out", tmp_path / "p")
    assert prepared.exit_code == 0, prepared.stderr
    trained = train_tiny(csv, "--out", tmp_path / "t2", "--set", "data.csv_column=body", steps=2)
    assert trained.exit_code == 0, trained.stderr
    metas = [
        json.loads((d / "meta.json").read_text())
        for d in (tmp_path / "p", tmp_path / "t2" / "data")
    ]
    assert metas[0]["cache_key"] == metas[1]["cache_key"]  # same input, same settings


def test_data_prepared_by_the_old_train_default_is_still_reused(tmp_path: Path) -> None:
    text = write_corpus(tmp_path)
    old = prepare(text, tmp_path / "d", PrepareSettings(csv_column="body"), show_progress=False)
    again = prepare(text, tmp_path / "d", PrepareSettings(), show_progress=False)
    assert again["cache_key"] == old["cache_key"]


def test_train_on_prepared_data_records_its_real_vocabulary(tmp_path: Path) -> None:
    from conftest import make_english

    text = write_corpus(tmp_path, make_english(300))
    data = tmp_path / "data"
    result = cli("prepare", text, "--level", "word", "--vocab-size", "0", "--out", data)
    assert result.exit_code == 0, result.stderr
    real = json.loads((data / "meta.json").read_text())["vocab_size"]
    assert real not in (0, 8000)
    assert train_tiny("--data", data, "--out", tmp_path / "run", steps=2).exit_code == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["vocab_size"] == real
    assert load_checkpoint(tmp_path / "run").config.data.vocab_size == real


def test_sentence_batching_leaves_mkldnn_as_it_found_it(tmp_path: Path) -> None:
    from conftest import make_english

    assert torch.backends.mkldnn.enabled
    text = write_corpus(tmp_path, make_english(200))
    sets = ("--set", "data.level=word", "--set", "data.batching=sentence")
    result = train_tiny(text, "--out", tmp_path / "run", *sets, steps=3)
    assert result.exit_code == 0, result.stderr
    assert torch.backends.mkldnn.enabled
