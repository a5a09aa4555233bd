"""Real faults, not mocks: a full disk (a small tmpfs), an unwritable destination, kill -9.

Each writer meets the OS's own error (tests elsewhere inject an OSError; safetensors, tokenizers
and torch's zip writer raise their own types): the command says it in one line naming the path
(exit 1, no traceback), leaves no partial output, and works when run again once there is room.
A command killed mid-write leaves its output complete or absent, never a half, and what it left
beside the output never blocks, and is removed by, the next run.

The tmpfs tests need root (CI runs as root); elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import TINY, cli, pattern_text, write_corpus

from charlm.data.prepare import load_prepared
from charlm.rundir.checkpoint import load_checkpoint
from charlm.rundir.records import MetricsLog
from charlm.training.tensorboard_log import TensorBoardLog

PAGE = 4096
Mount = Callable[..., Path]


def _mount(folder: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs is not permitted here: not root")
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"mounting a tmpfs is not permitted here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """mount(folder, size, ro=False): a tmpfs of `size` bytes at `folder` (made if missing),
    unmounted after the test whatever happens."""
    mounted: list[Path] = []

    def mount(folder: Path, size: int, ro: bool = False) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        _mount(folder, f"size={size}" + (",ro" if ro else ""))
        mounted.append(folder)
        return folder

    try:
        yield mount
    finally:
        for folder in reversed(mounted):
            if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def resize(folder: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def used(folder: Path) -> int:
    stat = os.statvfs(folder)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte; remove the returned file to free it."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as file:
        for size in (1 << 16, PAGE, 1):
            try:
                while True:
                    file.write(b"x" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def assert_one_line(result: object, *words: str) -> str:
    """Exit 1 and one error line on stderr (after any progress) naming each of `words`, no
    traceback."""
    err = result.stderr
    assert result.exit_code == 1, err
    assert "internal error" not in err and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("charlm:")]
    assert len(lines) == 1 and err.strip().endswith(lines[0]), err
    for word in words:
        assert word in lines[0], err
    return lines[0]


def hidden(folder: Path) -> list[str]:
    """Names a writer may leave: temporaries, probes and other hidden entries."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def cli_process(*args: str | Path, hang: str | None = None, timeout: float = 120) -> object:
    """`charlm ARGS` in a new process (`hang`: see `spawn`), waited for; like `cli`'s result."""
    process = spawn(*args, hang=hang)
    out, err = process.communicate(timeout=timeout)

    class Result:
        exit_code, stdout, stderr = process.returncode, out, err

    return Result()


# `spawn(..., hang="module:Class.attr:N")`: the Nth call of that function writes the file
# $CHARLM_TEST_HUNG and sleeps, so a test can kill -9 the process at that very point.
_HANG = """
import importlib, os, sys, time
from pathlib import Path
module, attr, nth = os.environ["CHARLM_TEST_HANG"].split(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
real, calls = getattr(owner, name), []
def hanging(*args, **kwargs):
    calls.append(1)
    if len(calls) == int(nth):
        Path(os.environ["CHARLM_TEST_HUNG"]).write_text("hung")
        time.sleep(600)
    return real(*args, **kwargs)
setattr(owner, name, hanging)
from charlm.cli.app import main
main()
"""


def spawn(*args: str | Path, hang: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "charlm"]
    if hang is not None:
        env["CHARLM_TEST_HANG"] = hang
        command = [sys.executable, "-c", _HANG]
    return subprocess.Popen(
        [*command, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def kill_when_hung(tmp_path: Path, *args: str | Path, hang: str) -> None:
    """Run `charlm ARGS` until it hangs where `hang` says, then kill -9 it."""
    marker = tmp_path / "hung"
    marker.unlink(missing_ok=True)
    os.environ["CHARLM_TEST_HUNG"] = str(marker)
    try:
        process = spawn(*args, hang=hang)
        try:
            deadline = time.time() + 120
            while not marker.exists():
                assert process.poll() is None, process.communicate()[1]
                assert time.time() < deadline, "the command never reached the write"
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=30)
    finally:
        del os.environ["CHARLM_TEST_HUNG"]


@pytest.fixture(scope="module")
def run_with_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run keeping checkpoints at steps 10 and 20 (read, never written, by the tests)."""
    folder = tmp_path_factory.mktemp("run-with-two")
    run = folder / "run"
    result = train(write_corpus(folder), run, steps=20)
    assert result.exit_code == 0, result.stderr
    return run


# -- a full disk -------------------------------------------------------------------------------


def train(
    corpus: Path | None, run: Path, *settings: str, steps: int, resume: bool = False
) -> object:
    """`charlm train` of the TINY model, `settings` (--set ...) after TINY's, in-process."""
    text = () if corpus is None else (corpus,)
    resuming = ("--resume",) if resume else ()
    steps_set = ("--set", f"train.max_steps={steps}")
    return cli("train", *text, "--out", run, *resuming, "-q", *TINY, *settings, *steps_set)


def _checkpoint_usage(folder: Path, name: str = "*") -> int:
    """Bytes that the files `name` of `folder` take on a tmpfs (whole pages)."""
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in folder.glob(name))


@pytest.mark.slow
@pytest.mark.parametrize("fits", ["nothing", "half"])
def test_training_on_a_full_disk_says_so_and_resumes(
    tmp_path: Path, tmpfs: Mount, fits: str
) -> None:
    """Room for the run up to its first checkpoint and, of a second one, not even the weights
    (safetensors fails: its own error type) or about half (a later file fails)."""
    corpus = write_corpus(tmp_path)
    disk = tmpfs(tmp_path / "disk", 8 << 20)
    run = disk / "r"
    assert train(corpus, run, steps=10).exit_code == 0
    first = run / "checkpoints" / "step-00000010"
    weights = _checkpoint_usage(first, "model.safetensors")
    checkpoint = _checkpoint_usage(first)
    assert checkpoint >= 8 * PAGE  # so that half a checkpoint is several pages
    room = used(disk) + (weights - PAGE if fits == "nothing" else checkpoint // 2)
    subprocess.run(["rm", "-rf", str(run)], check=True)
    resize(disk, room)
    result = train(corpus, run, steps=30)
    assert_one_line(result, str(run / "checkpoints"), "disk full while saving step 20")
    assert hidden(run / "checkpoints") == []
    latest = load_checkpoint(run, "latest")
    assert latest.step == 10
    latest.build_model()
    latest.optimizer_state()
    latest.train_tensors()
    resize(disk, 8 << 20)  # space freed
    resumed = train(None, run, steps=30, resume=True)
    assert resumed.exit_code == 0, resumed.stderr
    assert load_checkpoint(run, "latest").step == 30


@pytest.mark.slow
def test_tensorboard_events_on_a_full_disk(tmp_path: Path, tmpfs: Mount) -> None:
    corpus = write_corpus(tmp_path)
    run = tmp_path / "run"
    events = tmpfs(run / "tensorboard", 2 * PAGE)  # fills after a few steps of events
    board = ("--set", "train.tensorboard=true", "--set", "train.log_every=1")
    result = train(corpus, run, *board, "--set", "train.checkpoint_every=5", steps=300)
    assert_one_line(result, f"{events}: no space left on the device")
    step = load_checkpoint(run, "latest").step
    assert step >= 5
    resize(events, 1 << 20)
    resumed = train(None, run, *board, steps=step + 5, resume=True)
    assert resumed.exit_code == 0, resumed.stderr
    assert len(list(events.glob("events.out.tfevents.*"))) == 2


def test_metrics_and_events_name_their_file_when_the_disk_is_full(
    tmp_path: Path, tmpfs: Mount, capfd: pytest.CaptureFixture
) -> None:
    disk = tmpfs(tmp_path / "disk", 16 * PAGE)
    log = MetricsLog(disk / "metrics.jsonl")
    board = TensorBoardLog(disk / "tensorboard")
    board.write({"kind": "train", "step": 0, "loss": 1.0})
    fill(disk)
    for writer, path in ((log, disk / "metrics.jsonl"), (board, disk / "tensorboard")):
        with pytest.raises(OSError) as raised:
            for step in range(1, 10_000):
                writer.write({"kind": "train", "step": step, "loss": 1.0, "note": "x" * 200})
        assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(path))
        writer.close()  # what did not fit is not reported a second time
    assert "Traceback" not in capfd.readouterr().err  # nor by TensorBoard's writer thread


def test_prepare_on_a_full_disk_keeps_the_old_data(tmp_path: Path, tmpfs: Mount) -> None:
    disk = tmpfs(tmp_path / "disk", 32 * PAGE)
    small = write_corpus(tmp_path, pattern_text(3000), "small.txt")
    large = write_corpus(tmp_path, pattern_text(100_000), "large.txt")  # 200 KB of uint16 ids
    data = disk / "data"
    assert cli("prepare", small, "--out", data).exit_code == 0
    before = load_prepared(data).meta
    assert_one_line(cli("prepare", large, "--out", data), str(data), "no space left")
    assert load_prepared(data).meta == before and hidden(data) == []
    fresh = disk / "fresh"
    assert_one_line(cli("prepare", large, "--out", fresh), str(fresh), "no space left")
    assert not fresh.exists() and hidden(disk) == []
    resize(disk, 4 << 20)
    assert cli("prepare", large, "--out", fresh).exit_code == 0
    assert load_prepared(fresh).meta["train_chars"] > 90_000


@pytest.mark.slow
def test_export_average_and_plot_on_a_full_disk(
    tmp_path: Path, tmpfs: Mount, run_with_two: Path
) -> None:
    disk = tmpfs(tmp_path / "disk", 64 * PAGE)
    filler = fill(disk)
    commands = {
        "m.pt": ("export", run_with_two, "-f", "torchscript", "--out"),
        "avg": ("average", run_with_two, "--last", "2", "--out"),
        "curves.png": ("plot", run_with_two, "--out"),
    }
    for name, args in commands.items():
        # export in a process of its own: torch's file writer used to abort it on a full disk
        result = cli_process(*args, disk / name) if name == "m.pt" else cli(*args, disk / name)
        assert_one_line(result, f"{disk / name}: no space left on the device")
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    filler.unlink()
    for name, args in commands.items():
        result = cli(*args, disk / name)
        assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in disk.iterdir()) == sorted(commands)


def test_foreign_write_errors_are_the_oserror_behind_them(tmp_path: Path) -> None:
    from safetensors import SafetensorError

    from charlm.system.files import as_os_error

    out = tmp_path / "m.pt"
    full = "No space left on device (os error 28)"  # Rust's words, in safetensors' and tokenizers'
    torch_open = "[enforce fail at inline_container.cc:747] . open file failed with strerror: "
    cases = [
        (SafetensorError(f"Error while serializing: I/O error: {full}"), errno.ENOSPC),
        (Exception(full), errno.ENOSPC),
        (RuntimeError(torch_open + "No such file or directory"), errno.ENOENT),
        (OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".m.pt.tmp-1")), errno.EROFS),
        (OSError("100 requested and 0 written"), None),  # no errno (numpy): not the OS's
        (ValueError("a bug"), None),
    ]
    for exc, code in cases:
        found = as_os_error(exc, out)
        assert (found and (found.errno, found.filename)) == (code and (code, str(out))), exc
    kept = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "data" / "train.bin"))
    assert as_os_error(kept, tmp_path / "data").filename == kept.filename  # not a temporary


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    from charlm.system.files import remove_stale_temporaries

    out = tmp_path / "kavg"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    names = [f".kavg.tmp-{int(dead.stdout)}", f".kavg.probe-{int(dead.stdout)}"]
    names += [f".kavg.tmp-{os.getpid()}", ".kavg.backup-1", ".other.tmp-1"]  # kept
    for name in names:
        (tmp_path / name).mkdir()
    remove_stale_temporaries(out)
    assert hidden(tmp_path) == sorted(names[2:])


# -- a destination that takes no file ----------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("export", "-f", "torchscript", "--out"),
        ("average", "--last", "2", "--out"),
        ("plot", "--out"),
    ],
    ids=["export", "average", "plot"],
)
def test_an_unwritable_destination_is_one_line(
    tmp_path: Path, tmpfs: Mount, run_with_two: Path, command: tuple[str, ...]
) -> None:
    name, *options = command
    out = Path("/proc/charlm-test.png" if name == "plot" else "/proc/charlm-test.pt")
    line = assert_one_line(cli(name, run_with_two, *options, out), str(out), "choose another")
    assert "No such file or directory" in line
    readonly = tmpfs(tmp_path / "ro", 16 * PAGE, ro=True)
    out = readonly / out.name
    assert_one_line(cli(name, run_with_two, *options, out), f"{out}: read-only file system")


# -- kill -9 mid-write -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ("average", "--last", "2", "--out", "kavg"),
        ("export", "-f", "torchscript", "--out", "k.pt"),
        ("plot", "--out", "k.png"),
    ],
    ids=["average", "export", "plot"],
)
def test_a_killed_writer_leaves_no_output_and_its_rerun_cleans_up(
    tmp_path: Path, run_with_two: Path, command: tuple[str, ...]
) -> None:
    name, *options, out = command
    where = tmp_path / "out"
    where.mkdir()
    args = (name, run_with_two, *options, where / out)
    # Killed at the fsync before the rename that puts the output in place: all written.
    kill_when_hung(tmp_path, *args, hang="charlm.system.files:fsync_file:1")
    assert not (where / out).exists()
    assert hidden(where) != []  # the killed writer's temporary
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in where.iterdir()) == [out]  # its leftovers are gone


@pytest.mark.slow
def test_a_killed_prepare_leaves_the_old_data_or_nothing(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path, pattern_text(20_000))
    other = write_corpus(tmp_path, pattern_text(20_000, seed=1), "other.txt")
    data = tmp_path / "data"
    assert cli("prepare", corpus, "--out", data).exit_code == 0
    before = load_prepared(data).meta
    encode = "charlm.data.tokenizer:Encoder.encode:1"  # mid-way through the new ids
    kill_when_hung(tmp_path, "prepare", other, "--out", data, hang=encode)
    assert load_prepared(data).meta == before
    fresh = tmp_path / "fresh"
    kill_when_hung(tmp_path, "prepare", other, "--out", fresh, hang=encode)
    assert not fresh.exists()
    assert cli("prepare", other, "--out", fresh).exit_code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fresh")]


@pytest.mark.slow
def test_a_killed_synth_leaves_the_old_task_or_nothing(tmp_path: Path) -> None:
    task = tmp_path / "task"
    synth = ("data", "synth", "lag", "--length", "3000", "--valid-length", "500")
    assert cli(*synth, "--out", task).exit_code == 0
    before = {p.name: p.read_bytes() for p in task.iterdir()}
    # The third fsync: two of the files are written, the others not yet.
    kill_when_hung(tmp_path, *synth, "--lag", "5", "--out", task, hang="os:fsync:3")
    assert {p.name: p.read_bytes() for p in task.iterdir() if p.name[0] != "."} == before
    fresh = tmp_path / "fresh"
    kill_when_hung(tmp_path, *synth, "--out", fresh, hang="os:fsync:3")
    assert not fresh.exists()
    assert cli(*synth, "--out", fresh).exit_code == 0
    assert {p.name: p.read_bytes() for p in fresh.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fresh")]
