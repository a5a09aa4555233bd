"""charlm off Linux: no POSIX-only call on its paths (fcntl, os.O_DIRECTORY, os.statvfs,
os.sysconf), so train, resume, sample and `charlm.load` run where they are missing, as on
Windows; the run lock (filelock) still keeps one trainer per run (issue 26)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, write_corpus

from charlm.rundir import lock as run_lock
from charlm.rundir.lock import LOCK_FILE, PID_FILE, RunLock
from charlm.system import device as device_module
from charlm.system import files

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = ("O_DIRECTORY", "statvfs", "sysconf")  # the os names Windows' Python lacks that charlm met

# Run first in each process: Python as on Windows, as far as charlm's calls go. filelock then
# falls back to its soft lock and warns once that it does (Windows gets its msvcrt lock instead).
WITHOUT_POSIX = (
    "import os, sys, warnings\n"
    "sys.modules['fcntl'] = None\n"
    f"for name in {HIDDEN!r}:\n"
    "    delattr(os, name)\n"
    "warnings.filterwarnings('ignore', 'only soft file lock is available')\n"
)
CHECK_HIDDEN = (
    "assert sys.modules['fcntl'] is None\n"
    f"assert not any(hasattr(os, name) for name in {HIDDEN!r})\n"
)


def run_without_posix(code: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_POSIX + code + CHECK_HIDDEN, *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )  # fmt: skip


def charlm_without_posix(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """`charlm ARGS` (the CLI's main, as the console script calls it) with POSIX calls hidden."""
    code = (
        "sys.argv[0] = 'charlm'\n"
        "from charlm.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit_:\n"
        "    if exit_.code:\n"
        "        raise\n"
    )
    return run_without_posix(code, *args, cwd=cwd)


@pytest.mark.slow
def test_train_resume_sample_and_load_run_without_posix_calls(tmp_path: Path) -> None:
    corpus, run = write_corpus(tmp_path), tmp_path / "run"
    first = charlm_without_posix(
        "train", corpus, "--out", run, "-q", *TINY, "--set", "train.max_steps=10", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Traceback" not in first.stderr and "Warning" not in first.stderr, first.stderr
    resumed = charlm_without_posix(
        "train", "--out", run, "--resume", "-q", "--set", "train.max_steps=20", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    latest = json.loads((run / "checkpoints" / "latest.json").read_text(encoding="utf-8"))
    assert latest["name"] == "step-00000020"
    assert not (run / PID_FILE).exists()  # the lock was given back
    sampled = charlm_without_posix(
        "sample", run, "--length", "40", "--seed", "1", "--device", "cpu", cwd=tmp_path
    )
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert len(sampled.stdout) >= 40
    loaded = run_without_posix(
        "import charlm\n"
        "print(charlm.load(sys.argv[1], device='cpu').generate(length=40, seed=1), end='')\n",
        run,
        cwd=tmp_path,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    same = loaded.stdout.rstrip("\n") == sampled.stdout.rstrip("\n")  # the CLI ends the line
    assert same  # the same model, the same seed: the same text


def test_the_durable_writes_skip_the_folder_fsync_where_there_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "O_DIRECTORY")
    opened: list[str] = []
    real_open = os.open

    def recording_open(path: object, flags: int, *args: object) -> int:
        opened.append(str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(files.os, "open", recording_open)
    files.write_together(tmp_path / "set", {"a.txt": b"a", "b.txt": b"b"})
    files.atomic_write_text(tmp_path / "set" / "c.txt", "c")
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["a.txt", "b.txt", "c.txt"]
    assert (tmp_path / "set" / "c.txt").read_text(encoding="utf-8") == "c"
    assert not [p for p in opened if Path(p).is_dir()]  # no folder was opened to be fsynced


def test_free_memory_without_proc_or_sysconf_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_proc(*args: object, **kwargs: object) -> object:
        raise FileNotFoundError("/proc/meminfo")

    monkeypatch.setattr("builtins.open", no_proc)
    monkeypatch.delattr(os, "sysconf")
    assert device_module.available_memory(torch.device("cpu")) is None


def test_a_second_lock_on_a_run_is_refused_and_leaves_the_files_as_they_were(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        assert (run / PID_FILE).read_text(encoding="utf-8") == f"{os.getpid()}\n"
        before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()}
        with pytest.raises(run_lock.UsageError) as refused:
            RunLock(run).__enter__()
        message = str(refused.value)
        assert message == (
            f"{run}: another trainer (pid {os.getpid()}) is training this run; "
            "wait for it to finish (or stop it), or train into another --out"
        )
        after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()}
        assert after == before
    assert not (run / PID_FILE).exists() and (run / LOCK_FILE).exists()
    with RunLock(run):  # given back: the next trainer takes it
        pass
