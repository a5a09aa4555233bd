"""Bad input never crashes with a traceback; signals and kill -9 never lose a run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import TINY, cli, wait_for, write_corpus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlm.config import all_keys
from charlm.rundir.checkpoint import load_checkpoint

CLEAN_EXITS = {0, 1, 2}


def assert_clean(result: object) -> None:
    assert result.exit_code in CLEAN_EXITS, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(min_size=0, max_size=3000))
def test_random_bytes_train_cleanly_or_fail_cleanly(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / f"in-{random.random()}.txt"
    path.write_bytes(data)
    result = cli(
        "train",
        path,
        "--out",
        tmp_path / f"run-{random.random()}",
        "-q",
        *TINY,
        "--set",
        "train.max_steps=2",
    )
    assert_clean(result)


values = st.one_of(
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["gru", "lstm", "char", "word", "cosine", "1e-3", "off"]),
    st.lists(st.integers(), max_size=2),
)
keys = st.sampled_from(all_keys() + ["model.hiden_size", "train", "x.y", "data.level.extra"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@pytest.mark.slow
@given(entries=st.dictionaries(keys, values, max_size=5))
def test_random_configs_load_or_fail_cleanly(tmp_path: Path, entries: dict) -> None:
    nested: dict = {}
    for key, value in entries.items():
        section, _, name = key.partition(".")
        if name:
            nested.setdefault(section, {})
            if isinstance(nested[section], dict):
                nested[section][name] = value
        else:
            nested[section] = value
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(nested))
    result = cli("config", "show", "--config", path)
    assert result.exit_code in (0, 2), result.stderr
    assert_clean(result)


def _spawn_training(corpus: Path, run: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charlm",
            "train",
            str(corpus),
            "--out",
            str(run),
            "-q",
            *TINY,
            "--set",
            "train.max_steps=100000",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_sigint_and_sigterm_save_and_say_how_to_resume(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        run = tmp_path / f"run-{code}"
        process = _spawn_training(corpus, run)
        wait_for(run / "checkpoints" / "latest.json")
        process.send_signal(sig)
        _, err = process.communicate(timeout=60)
        assert process.returncode == code, err
        assert "checkpoint saved" in err and "--resume" in err and "Traceback" not in err
        step = load_checkpoint(run, "latest").step
        resumed = cli(
            "train", "--out", run, "--resume", "-q", *TINY, "--set", f"train.max_steps={step + 3}"
        )
        assert resumed.exit_code == 0, resumed.stderr


@pytest.mark.slow
def test_kill_9_never_leaves_the_run_unloadable(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    rng = random.Random(0)
    for attempt in range(3):
        run = tmp_path / f"run-{attempt}"
        # Checkpoint every step, so the kill is likely to land during a write.
        process = _spawn_training(
            corpus, run, "--set", "train.checkpoint_every=1", "--set", "train.keep_checkpoints=2"
        )
        wait_for(run / "checkpoints" / "latest.json")
        time.sleep(rng.uniform(0.0, 1.0))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        loaded = load_checkpoint(run, "latest")
        loaded.build_model()
        loaded.optimizer_state()
        loaded.train_tensors()
        resumed = cli(
            "train",
            "--out",
            run,
            "--resume",
            "-q",
            *TINY,
            "--set",
            f"train.max_steps={loaded.step + 2}",
        )
        assert resumed.exit_code == 0, resumed.stderr
