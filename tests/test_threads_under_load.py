"""A run interrupted and resumed on a busy machine equals the uninterrupted run bit for bit, at
default settings: the thread count (which changes the last bits of some reductions) must not
follow the machine's load (issue 19).

The model is large enough (a time step over 2^20 multiply-adds) that charlm trains it on every
core by default, so a choice that followed the load would pick another count here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from charlm.rundir.checkpoint import load_checkpoint
from tests.helpers import write_corpus

ROOT = Path(__file__).resolve().parents[1]
STEPS = 60
# 1x128 GRU, batch 32: 3*128*(16+128) + 128*vocab multiply-adds per stream and step, ~1.9M for
# the whole batch: over SMALL_STEP_MACS, so `train.threads=0` may use both cores.
MODEL = [
    "model.layers=1",
    "model.hidden_size=128",
    "model.embedding_dim=16",
    "train.batch_size=32",
    "train.seq_len=32",
    "train.log_every=5",
    "train.eval_every=1000",
    "train.checkpoint_every=1000",
    "train.sample_every_eval=false",
    f"train.max_steps={STEPS}",
]


def _train(corpus: Path, run: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "MKL_"))}
    sets = [arg for item in MODEL for arg in ("--set", item)]
    return subprocess.Popen(
        [sys.executable, "-m", "charlm", "train", str(corpus), "--out", str(run), *sets, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _busy_loop() -> subprocess.Popen:
    """One core's worth of pure-Python work: the competitor a shared machine has."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _wait_for_train_record(run: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    log = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.communicate()[1])
        if log.is_file() and any(
            json.loads(line).get("kind") == "train"
            for line in log.read_text().splitlines()
            if line.strip()
        ):
            return
        time.sleep(0.05)
    raise AssertionError("no train record in time")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(load_checkpoint(run, "latest").path / "model.safetensors"))


@pytest.mark.slow
def test_a_resume_under_load_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    straight = tmp_path / "straight"
    done = _train(corpus, straight, "-q")
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err

    competitor = _busy_loop()
    try:
        run = tmp_path / "interrupted"
        first = _train(corpus, run)
        _wait_for_train_record(run, first)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
        assert first.returncode == 143, err
        stopped_at = load_checkpoint(run, "latest").step
        assert stopped_at < STEPS, "the run finished before the signal: nothing was resumed"
        resumed = _train(corpus, run, "--resume", "-q")
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
    finally:
        competitor.kill()
        competitor.wait()

    expected, got = _weights(straight), _weights(run)
    assert load_checkpoint(run, "latest").step == STEPS
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), (key, f"resumed at step {stopped_at}")
