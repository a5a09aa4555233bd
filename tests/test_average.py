"""`charlm average`: the mean of a run's last N checkpoints, loadable, and every refusal clean."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from helpers import TINY, cli, readme_blocks, train_tiny, write_corpus
from safetensors.torch import load_file

from charlm.rundir.checkpoint import step_dirs


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with checkpoints at steps 10, 20, 30 and 40."""
    folder = tmp_path_factory.mktemp("avg")
    corpus = write_corpus(folder)
    out = folder / "runs" / "mine"
    result = train_tiny(corpus, "--out", out, "--set", "train.keep_checkpoints=5", steps=40)
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in step_dirs(out / "checkpoints")][-4:] == [
        f"step-{s:08d}" for s in (10, 20, 30, 40)
    ]
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_average_is_the_mean_of_the_last_n(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "avg3"
    result = cli("average", run, "--last", "3", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "the mean of 3 checkpoints (steps 20, 30, 40)" in result.stderr
    sources = [weights(p) for p in step_dirs(run / "checkpoints")[-3:]]
    averaged = weights(out)
    assert set(averaged) == set(sources[0])
    for key, value in averaged.items():
        expected = sum(s[key].double() for s in sources) / 3
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)
    assert any(not torch.equal(averaged[k], sources[-1][k]) for k in averaged)
    state = json.loads((out / "state.json").read_text())
    assert state["step"] == 40 and "best_val_loss" not in state and "cursor" not in state
    assert state["averaged_from"]["checkpoints"] == [f"step-{s:08d}" for s in (20, 30, 40)]


def test_last_one_is_the_newest_checkpoint(run: Path, tmp_path: Path) -> None:
    assert cli("average", run, "--last", "1", "--out", tmp_path / "one").exit_code == 0
    newest = weights(step_dirs(run / "checkpoints")[-1])
    for key, value in weights(tmp_path / "one").items():
        assert torch.equal(value, newest[key]), key


def test_the_readme_example_runs_as_written(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(run.parents[1])  # holds runs/mine
    write_corpus(Path("."), name="held_out.txt")
    commands = readme_blocks("## Averaging checkpoints")[0]
    assert [c[:2] for c in commands] == [
        ["charlm", "average"],
        ["charlm", "evaluate"],
        ["charlm", "sample"],
    ]
    outputs = []
    for command in commands:
        result = cli(*command[1:])
        assert result.exit_code == 0, (command, result.stderr)
        outputs.append(result.stdout)
    loss = float(re.search(r"loss ([0-9.]+) nats/token", outputs[1]).group(1))
    vocab = json.loads(cli("info", "runs/mine-avg3", "--json").stdout)["vocab_size"]
    assert 0 < loss < math.log(vocab)  # below a uniform guess: the average kept what was learned
    assert len(outputs[2].strip()) > 0


def test_refusals_write_nothing(run: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine", encoding="utf-8")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    for args, code, message in [
        (("--last", "0", "--out", tmp_path / "a"), 2, "--last must be at least 1"),
        (("--last", "9", "--out", tmp_path / "a"), 2, "--last 9: "),
        (("--last", "2", "--out", taken), 2, "already exists"),
        (("--last", "2", "--out", run / "checkpoints" / "avg"), 2, "inside the run's checkpoints/"),
    ]:
        result = cli("average", run, *args)
        assert result.exit_code == code, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "a").exists()
    assert (taken / "keep.txt").read_text(encoding="utf-8") == "mine"
    assert list(taken.iterdir()) == [taken / "keep.txt"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    not_a_run = cli("average", tmp_path, "--last", "1", "--out", tmp_path / "b")
    assert not_a_run.exit_code == 1 and "not a charlm run directory" in not_a_run.stderr


def test_checkpoints_of_another_model_are_refused(run: Path, tmp_path: Path) -> None:
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(run, mixed)
    other = cli(
        "train",
        write_corpus(tmp_path),
        "--out",
        tmp_path / "wide",
        "-q",
        *TINY,
        "--set",
        "model.hidden_size=24",
        "--set",
        "train.max_steps=10",
    )
    assert other.exit_code == 0, other.stderr
    shutil.copytree(
        tmp_path / "wide/checkpoints/step-00000010", mixed / "checkpoints/step-00000050"
    )
    result = cli("average", mixed, "--last", "2", "--out", tmp_path / "c")
    assert result.exit_code == 1
    assert "cannot be averaged" in result.stderr and "model.hidden_size: 16 -> 24" in result.stderr
    assert not (tmp_path / "c").exists()
