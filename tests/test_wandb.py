"""Weights & Biases (train.wandb): the same scalars as TensorBoard under the same tags, the
settings as the W&B run's config, one W&B run across a SIGTERM and a resume, all in W&B's
offline mode (no network), read back with wandb's own reader (`wandb leet inspect --json`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charlm.config import build_config
from charlm.errors import ConfigError
from charlm.rundir.records import read_metrics
from charlm.training.tracking import scalars
from tests.helpers import TINY, cli, readme_blocks, write_corpus

ROOT = Path(__file__).resolve().parents[1]


def wandb_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Offline, every W&B folder under tmp_path, charlm from this tree."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    for name in ("CONFIG_DIR", "CACHE_DIR", "DATA_DIR", "ARTIFACT_DIR"):
        env[f"WANDB_{name}"] = str(tmp_path / "wandb-home" / name.lower())
    env.update(WANDB_MODE="offline", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    return env


def charlm_train(env: dict[str, str], *args: str | Path, background: bool = False, cwd=None):
    command = [sys.executable, "-m", "charlm", "train", *map(str, args), "-q", *TINY]
    if background:
        return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


def read_wandb(folder: Path, *options: str) -> list[dict] | dict:
    """What an offline W&B run folder holds, by wandb's own reader: every record, or with
    --summary its state, exit code and last values."""
    wandb = Path(sys.executable).parent / "wandb"
    done = subprocess.run(
        [str(wandb), "leet", "inspect", "--json", *options, str(folder)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    if options:
        return json.loads(done.stdout)
    return [json.loads(line) for line in done.stdout.splitlines()]


def history(folder: Path) -> dict[int, dict[str, float]]:
    rows = [r["history"] for r in read_wandb(folder) if r["type"] == "history"]  # type: ignore[index]
    return {
        r["step"]["num"]: {k: v for k, v in r["item"].items() if not k.startswith("_")}
        for r in rows
    }


def logged(run_dir: Path) -> dict[int, dict[str, float]]:
    """metrics.jsonl's scalars by step, tagged as TensorBoard's (tracking.py)."""
    steps: dict[int, dict[str, float]] = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):
        if record["kind"] in ("train", "val"):
            steps.setdefault(record["step"], {}).update(scalars(record))
    return steps


def offline_runs(wandb_dir: Path) -> list[Path]:
    return sorted(wandb_dir.glob("offline-run-*"))


@pytest.mark.slow
def test_an_offline_run_holds_the_scalars_and_settings_of_the_charlm_run(tmp_path: Path) -> None:
    """The README's command ("Weights & Biases"), as written, with a tiny model."""
    pytest.importorskip("wandb")
    (command,) = readme_blocks("### Weights & Biases")[0]
    assert command[:2] == ["charlm", "train"] and "train.wandb=true" in command
    write_corpus(tmp_path, name="input.txt")
    run = tmp_path / "runs" / "tracked"
    env = wandb_env(tmp_path, WANDB_DIR=str(tmp_path / "wb"))  # WANDB_DIR, not RUN_DIR/wandb
    done = charlm_train(env, *command[2:], "--set", "train.max_steps=20", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (folder,) = offline_runs(tmp_path / "wb" / "wandb")
    ids = json.loads((run / "wandb.json").read_text())
    assert folder.name.endswith(f"-{ids['id']}") and ids["project"] == "mine"
    assert not (run / "wandb").exists()
    rows = history(folder)
    assert rows == logged(run)  # every scalar at every step, the same floats
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/loss", "eval/bpc"} <= set(rows[20])
    (start,) = [r["run"] for r in read_wandb(folder) if r["type"] == "run"]  # type: ignore[index]
    config = start["config"]["update"]
    assert config["train"]["max_steps"] == 20 and config["model"]["hidden_size"] == 16
    assert (start["project"], start["display_name"]) == ("mine", "tracked")
    summary = read_wandb(folder, "--summary")
    assert summary["state"] == "finished" and summary["exit_code"] == 0  # type: ignore[index]


@pytest.mark.slow
def test_sigterm_finishes_the_wandb_run_and_a_resume_continues_it(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    corpus, run = write_corpus(tmp_path), tmp_path / "run"
    env = wandb_env(tmp_path)  # W&B's files in RUN_DIR/wandb
    long = ("--set", "train.max_steps=100000", "--set", "train.checkpoint_every=20")
    process = charlm_train(env, corpus, "--out", run, "--set", "train.wandb=true", *long,
                           background=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "latest.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    (first,) = offline_runs(run / "wandb")
    summary = read_wandb(first, "--summary")
    assert summary["exit_code"] == 143, summary  # type: ignore[index]  # finished, and how
    stopped = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    ids = json.loads((run / "wandb.json").read_text())
    resumed = charlm_train(env, "--out", run, "--resume", "--set", "train.wandb=true",
                           "--set", f"train.max_steps={stopped + 10}")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "wandb.json").read_text()) == ids  # the same W&B run
    first, second = offline_runs(run / "wandb")
    assert first.name.endswith(ids["id"]) and second.name.endswith(ids["id"])
    (start,) = [r["run"] for r in read_wandb(second) if r["type"] == "run"]  # type: ignore[index]
    assert start["run_id"] == ids["id"] and start["resume"] is True
    before, after = history(first), history(second)
    assert max(before) <= stopped < min(after) and max(after) == stopped + 10
    assert {**before, **after} == logged(run)
    assert read_wandb(second, "--summary")["exit_code"] == 0  # type: ignore[index]


def test_wandb_without_the_extra_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    corpus = write_corpus(tmp_path)
    result = cli("train", corpus, "--out", tmp_path / "run", "--set", "train.wandb=true")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "charlm: error: train.wandb=true needs the wandb package: "
        "pip install 'charlm-rnn[wandb]' (or --set train.wandb=false)"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_with_wandb_off_training_never_imports_it(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    program = (
        "import sys, charlm\n"
        f"charlm.train({str(corpus)!r}, out={str(tmp_path / 'run')!r}, progress=False,\n"
        "             overrides={'train.max_steps': 2, 'model.hidden_size': 8})\n"
        "print('wandb' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_wandb_project_name_is_checked_with_the_other_settings() -> None:
    with pytest.raises(ConfigError, match="train.wandb_project must be a W&B project name"):
        build_config(overrides=["train.wandb_project=a/b"])
    assert build_config(overrides=["train.wandb=true"]).train.wandb_project == "charlm"
