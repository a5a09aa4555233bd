"""Checkpoints: self-contained, atomic, and never a way to run code."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from helpers import TINY, cli, train_tiny, write_corpus

from charlm.errors import CheckpointError
from charlm.inference.sample import SampleOptions, Sampler
from charlm.rundir.checkpoint import load_checkpoint, resolve_checkpoint


@pytest.fixture
def run(tmp_path: Path) -> Path:
    result = train_tiny(write_corpus(tmp_path), "--out", tmp_path / "run", steps=20)
    assert result.exit_code == 0, result.stderr
    return tmp_path / "run"


class RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_runs_nothing(run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = resolve_checkpoint(run, "latest")
    with open(folder / "optimizer.pt", "wb") as f:
        pickle.dump({"state": RunsCommand(marker)}, f)
    torch.save({"payload": RunsCommand(marker)}, folder / "optimizer.pt")
    with pytest.raises(CheckpointError, match="refused to load.*system"):
        load_checkpoint(run, "latest").optimizer_state()
    result = cli("train", "--out", run, "--resume", "-q", *TINY, "--set", "train.max_steps=30")
    assert (
        result.exit_code == 1
        and "refused to load" in result.stderr
        and "Traceback" not in result.stderr
    )
    assert not marker.exists()


def test_a_pickle_passed_as_checkpoint_is_not_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "model.pt"
    torch.save({"payload": RunsCommand(marker)}, bad)
    result = cli("sample", bad)
    assert result.exit_code == 1 and "never loads pickled files" in result.stderr
    assert not marker.exists()


def test_truncated_weights_give_a_clear_error(run: Path) -> None:
    folder = resolve_checkpoint(run)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = cli("sample", folder, "--length", "5")
    assert result.exit_code == 1
    assert "model.safetensors: damaged or incompatible weights" in result.stderr


def test_damaged_state_and_future_versions(run: Path) -> None:
    folder = resolve_checkpoint(run)
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**state, "version": 99}))
    with pytest.raises(CheckpointError, match="format version 99 is newer"):
        load_checkpoint(folder)
    (folder / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="damaged state.json"):
        load_checkpoint(folder)
    (folder / "state.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a charlm checkpoint"):
        load_checkpoint(folder)


def test_damaged_pointer_falls_back_to_newest_complete(run: Path) -> None:
    (run / "checkpoints" / "latest.json").write_text("garbage")
    (run / "checkpoints" / "best.json").unlink()
    assert resolve_checkpoint(run).name == "step-00000020"


def test_not_a_run_directory(tmp_path: Path) -> None:
    result = cli("sample", tmp_path)
    assert result.exit_code == 1 and "not a charlm run directory" in result.stderr
    result = cli("info", tmp_path / "nope")
    assert result.exit_code == 1 and "no such run directory" in result.stderr


def test_checkpoint_is_self_contained(run: Path, tmp_path: Path) -> None:
    import shutil

    folder = resolve_checkpoint(run)
    moved = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(folder, moved)
    shutil.rmtree(run)  # the run, its data and its config are gone
    text = Sampler(moved).generate(SampleOptions(length=30, seed=1), lambda i, s: None)[0]
    assert len(text) >= 20


def test_info_reads_and_never_writes(run: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    result = cli("info", run, "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["format_version"] == 1 and summary["step"] == 20 and summary["parameters"] > 0
    assert summary["config"]["model"]["hidden_size"] == 16
    cli("sample", run, "--length", "10", "--seed", "1")
    cli("evaluate", run, "--text", run / "data" / "meta.json")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_a_swapped_tokenizer_is_refused(run: Path, tmp_path: Path) -> None:
    from charlm.data.tokenizer import build_tokenizer, save_tokenizer

    folder = resolve_checkpoint(run)
    save_tokenizer(build_tokenizer("char", ["only a few letters"], 0), folder / "tokenizer.json")
    result = cli("sample", folder, "--length", "5")
    assert result.exit_code == 1 and "tokenizer.json: has" in result.stderr
    (folder / "tokenizer.json").write_text("{broken")
    result = cli("evaluate", folder, "--text", run / "data" / "meta.json")
    assert result.exit_code == 1 and "damaged tokenizer" in result.stderr
