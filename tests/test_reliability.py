"""Nothing lost, ever: refusals before writes, one trainer per run, no NaN saved as progress,
and every environment failure a one-line answer (issue 12)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import typer
from helpers import TINY, cli, pattern_text, train_tiny, wait_for, write_corpus

from charlm.cli import app
from charlm.config import all_keys
from charlm.rundir.checkpoint import load_checkpoint, resolve_checkpoint
from charlm.rundir.records import read_metrics
from charlm.system.device import cpu_bf16_features


def tree_hash(folder: Path) -> dict[str, str]:
    """Every file under `folder` (names included) with its sha256: equal means untouched."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(folder.rglob("*"))
    }


def command_options(name: str) -> set[str]:
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def assert_points_somewhere_real(command: str, message: str) -> None:
    """Each --flag a message suggests is an option of `command`, each setting a real key."""
    for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", message):
        assert flag in command_options(command), f"{command} has no {flag}: {message}"
    keys = set(all_keys())
    for key in re.findall(r"(?<![\w/.-])(?:data|model|optim|train)\.[a-z_]+\b", message):
        assert key in keys, f"no setting {key}: {message}"


def assert_one_line_refusal(result: object, command: str, code: int) -> str:
    err = result.stderr.strip()
    assert result.exit_code == code, (result.exit_code, err)
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("charlm:")]  # not progress
    assert len(lines) == 1 and lines[0].startswith("charlm: error: "), err
    assert_points_somewhere_real(command, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run (20 steps, checkpoints at 10 and 20) that the refused commands must leave be."""
    folder = tmp_path_factory.mktemp("trained")
    corpus = write_corpus(folder)
    result = train_tiny(corpus, "--out", folder / "run", steps=20)
    assert result.exit_code == 0, result.stderr
    (folder / "other.txt").write_text(pattern_text(seed=5), encoding="utf-8")
    (folder / "two.csv").write_text("id,text\n1,abc abd\n2,xyz abc\n", encoding="utf-8")
    return folder


REFUSED = [  # (command line after the run directory is substituted for RUN, exit code)
    (["train", "OTHER", "--out", "RUN", "--resume"], 2),  # not the data it trained on
    (["train", "--out", "RUN"], 2),  # already a run
    (["train", "--out", "RUN", "--resume", "--set", "model.hidden_size=32"], 2),
    (["train", "--out", "RUN", "--resume", "--set", "optim.lr=nan"], 2),
    (["train", "--out", "RUN", "--resume", "--set", "optim.lr=inf"], 2),
    (["train", "--out", "RUN", "--resume", "--set", "optim.lr=1e39"], 2),
    (["train", "--out", "RUN", "--resume", "--set", "train.seed=-1"], 2),
    (["train", "--out", "RUN", "--resume", "--set", "train.batch_size=8"], 2),
    (["train", "--out", "RUN", "--force", "--set", "model.hidden_size=1000000"], 2),
    (["train", "true", "--out", "RUN", "--resume"], 2),
    (["train", "CSV", "--out", "RUN", "--force", "--csv-column", "body"], 2),
    (["sample", "RUN", "--temperature", "nan"], 2),
    (["sample", "RUN", "--temperature", "inf"], 2),
    (["sample", "RUN", "--seed", "99999999999999999999999"], 2),
    (["sample", "RUN", "--num-samples", "1000000000000"], 2),
    (["evaluate", "RUN", "--text", "CSV", "--csv-column", "body"], 2),
]
if not torch.cuda.is_available() and not cpu_bf16_features():  # else bf16 trains (or a test
    # in test_speed_paths.py refuses it with the CPU's bf16 hidden, byte-identical as here)
    REFUSED += [(["train", "--out", "RUN", "--resume", "--set", "train.precision=bf16"], 2)]
if not torch.cuda.is_available():
    REFUSED += [
        (["sample", "RUN", "--device", "cuda"], 2),
        (["evaluate", "RUN", "--text", "OTHER", "--device", "cuda"], 2),
        (["train", "--out", "RUN", "--resume", "--set", "train.device=cuda"], 2),
    ]


@pytest.mark.parametrize(("args", "code"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_a_refused_command_leaves_every_file_byte_identical(
    trained: Path, args: list[str], code: int
) -> None:
    names = {"RUN": trained / "run", "OTHER": trained / "other.txt", "CSV": trained / "two.csv"}
    before = tree_hash(trained)
    extra = {"train": ["-q"], "sample": ["--length", "1"]}.get(args[0], [])
    result = cli(*[names.get(a, a) for a in args], *extra)
    assert_one_line_refusal(result, args[0], code)
    assert tree_hash(trained) == before


def test_a_refused_resume_still_resumes_after(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    other = write_corpus(tmp_path, pattern_text(seed=3), "other.txt")
    assert train_tiny(corpus, "--out", tmp_path / "run", steps=10).exit_code == 0
    refused = train_tiny(other, "--out", tmp_path / "run", "--resume", steps=20)
    assert refused.exit_code == 2 and "not the data the run was trained on" in refused.stderr
    resumed = train_tiny("--out", tmp_path / "run", "--resume", steps=20)  # no text: RUN/data
    assert resumed.exit_code == 0, resumed.stderr
    assert load_checkpoint(tmp_path / "run", "latest").step == 20


def test_out_naming_a_file_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me", encoding="utf-8")
    result = train_tiny("--out", target, steps=2)
    assert "names a file" in assert_one_line_refusal(result, "train", 2)
    assert target.read_text(encoding="utf-8") == "keep me"


@pytest.mark.parametrize("read_only", [True, False])
def test_an_unwritable_out_is_refused_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_only: bool
) -> None:
    import charlm.training.preflight as preflight

    real_statvfs = os.statvfs

    class ReadOnly:
        def __init__(self, path: object) -> None:
            self.f_flag = real_statvfs(path).f_flag | (os.ST_RDONLY if read_only else 0)

    monkeypatch.setattr(preflight.os, "access", lambda *args: False)  # as if not root
    monkeypatch.setattr(preflight.os, "statvfs", ReadOnly)
    result = train_tiny("--out", tmp_path / "run", steps=2)
    err = assert_one_line_refusal(result, "train", 2)
    assert ("read-only file system" if read_only else "permission denied") in err
    assert not (tmp_path / "run").exists()


def test_an_os_error_from_the_machine_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import charlm.data.prepare as prepare

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "data" / "train.bin"))

    monkeypatch.setattr(prepare, "_write_ids", read_only)
    result = cli("prepare", write_corpus(tmp_path), "--out", tmp_path / "data")
    err = assert_one_line_refusal(result, "prepare", 1)
    assert "train.bin: read-only file system" in err


def test_disk_full_while_saving_says_how_much_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import charlm.rundir.checkpoint as checkpoint

    real, calls = checkpoint.save_file, {"n": 0}

    def full_on_second_save(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] > 1:  # one call per checkpoint (train_state): the second one fails
            raise OSError(errno.ENOSPC, "No space left on device")
        real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full_on_second_save)
    run = tmp_path / "run"
    result = train_tiny(write_corpus(tmp_path), "--out", run, steps=20)
    err = assert_one_line_refusal(result, "train", 1)
    assert "disk full while saving step 20" in err and "free)" in err and "needs about" in err
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert load_checkpoint(run, "latest").step == 10
    monkeypatch.setattr(checkpoint, "save_file", real)
    resumed = train_tiny("--out", run, "--resume", steps=20)
    assert resumed.exit_code == 0, resumed.stderr


def test_the_next_save_removes_a_failed_writes_temp_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train_tiny(write_corpus(tmp_path), "--out", run, steps=10).exit_code == 0
    stale = run / "checkpoints" / ".tmp-step-00000020-999999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    assert train_tiny("--out", run, "--resume", steps=11).exit_code == 0
    assert not stale.exists()


def poison_weights_after(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """From optimiser step `step` on, every step leaves the weights NaN (as lr=inf would)."""
    real, calls = torch.optim.RMSprop.step, {"n": 0}

    def step_then_poison(self: torch.optim.Optimizer, *args: object, **kwargs: object) -> object:
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= step:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.RMSprop, "step", step_then_poison)


def test_non_finite_weights_are_never_saved_and_resume_with_a_lower_rate_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    poison_weights_after(monkeypatch, 25)
    result = train_tiny(write_corpus(tmp_path), "--out", run, steps=40)
    err = result.stderr
    assert result.exit_code == 1 and "Traceback" not in err, err
    assert "step 30: the weights are no longer finite, so they were not saved" in err
    last = run / "checkpoints" / "step-00000020"
    assert f"the last finite checkpoint is {last}" in err
    assert_points_somewhere_real("train", err)
    assert not (run / "checkpoints" / "step-00000030").exists()
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["name"] == "step-00000020" and best["val_loss"] == best["val_loss"]  # not NaN
    assert resolve_checkpoint(run, "latest") == last
    monkeypatch.undo()
    resumed = train_tiny("--out", run, "--resume", "--set", "optim.lr=0.0001", steps=40)
    assert resumed.exit_code == 0, resumed.stderr
    val = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "val"]
    assert [r["step"] for r in val] == [10, 20, 30, 40]
    assert all(r["val_loss"] is not None for r in val)


def test_a_nan_validation_loss_is_never_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import charlm.training.trainer as train_module

    real = train_module.make_result
    calls = {"n": 0}

    def nan_second(nll: float, *args: object) -> object:
        calls["n"] += 1
        return real(float("nan") if calls["n"] == 2 else nll, *args)

    monkeypatch.setattr(train_module, "make_result", nan_second)
    run = tmp_path / "run"
    assert train_tiny(write_corpus(tmp_path), "--out", run, steps=20).exit_code == 0
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["name"] == "step-00000010" and best["val_loss"] == best["val_loss"]


def test_an_exploding_loss_is_warned_about_in_the_log_and_metrics(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = cli(
        "train", write_corpus(tmp_path), "--out", run, *TINY,
        "--set", "train.max_steps=10", "--set", "optim.lr=1e30", "--set", "optim.clip_norm=0",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "the training loss exploded" in result.stderr
    warned = [r for r in read_metrics(run / "metrics.jsonl") if r.get("warning")]
    assert len(warned) == 1 and "lower optim.lr" in warned[0]["warning"]


def _spawn(*args: str | Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "charlm", *map(str, args)]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.slow
def test_a_second_trainer_is_refused_with_the_holders_pid_and_kill_9_frees_the_run(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    first = _spawn(
        "train", write_corpus(tmp_path), "--out", run, "-q", *TINY,
        "--set", "train.max_steps=100000", "--set", "train.checkpoint_every=5",
    )  # fmt: skip
    try:
        wait_for(run / "checkpoints" / "latest.json")
        second = _spawn("train", "--out", run, "--resume", "-q")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert f"another trainer (pid {first.pid}) is training this run" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert_points_somewhere_real("train", err)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    step = load_checkpoint(run, "latest").step
    resumed = train_tiny(
        "--out", run, "--resume", "--set", "train.checkpoint_every=5", steps=step + 5
    )
    assert resumed.exit_code == 0, resumed.stderr
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    assert len(steps) == len(set(steps))  # one trainer's records, no duplicates


@pytest.mark.slow
def test_a_closed_output_pipe_exits_quietly(trained: Path) -> None:
    for args in (
        ["sample", trained / "run", "--length", "200000", "--seed", "1"],
        ["info", trained / "run"],
    ):
        process = _spawn(*args)
        if args[0] == "sample":
            process.stdout.read(10)  # type: ignore[union-attr]
        process.stdout.close()  # type: ignore[union-attr]
        err = process.stderr.read()  # type: ignore[union-attr]
        assert process.wait(timeout=120) == 0, err
        assert "error" not in err and "Traceback" not in err, err


def test_piped_input_is_read_once_for_prepare_train_and_evaluate(
    tmp_path: Path, trained: Path
) -> None:
    text = pattern_text()
    corpus = write_corpus(tmp_path, text)
    assert cli("prepare", corpus, "--out", tmp_path / "file").exit_code == 0
    piped = subprocess.run(
        [sys.executable, "-m", "charlm", "prepare", "/dev/stdin", "--out", tmp_path / "pipe"],
        input=text, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    meta = [json.loads((tmp_path / d / "meta.json").read_text()) for d in ("file", "pipe")]
    assert meta[0]["cache_key"] == meta[1]["cache_key"] and meta[1]["train_tokens"] > 1000
    dashed = CliRunnerInput(text)(
        "train", "-", "--out", tmp_path / "run", "-q", *TINY, "--set", "train.max_steps=2"
    )
    assert dashed.exit_code == 0, dashed.stderr
    trained_on = json.loads((tmp_path / "run" / "data" / "meta.json").read_text())
    assert trained_on["sha256"] == meta[0]["sha256"]
    fifo = tmp_path / "held-out.txt"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(text, encoding="utf-8"))
    writer.start()
    through_fifo = cli("evaluate", trained / "run", "--text", fifo, "--json")
    writer.join(timeout=30)
    direct = cli("evaluate", trained / "run", "--text", corpus, "--json")
    assert through_fifo.exit_code == 0, through_fifo.stderr
    assert json.loads(through_fifo.stdout) == json.loads(direct.stdout)


def CliRunnerInput(text: str):  # noqa: N802 (a CLI runner with standard input)
    from typer.testing import CliRunner

    return lambda *args: CliRunner().invoke(app, [str(a) for a in args], input=text)


def test_train_and_evaluate_take_the_flags_their_messages_suggest(
    tmp_path: Path, trained: Path
) -> None:
    tiny = write_corpus(tmp_path, "ab\n", "tiny.txt")
    refused = train_tiny(tiny, "--out", tmp_path / "tiny", steps=2)
    assert "--val-fraction" in assert_one_line_refusal(refused, "train", 1)
    half = train_tiny(
        write_corpus(tmp_path), "--out", tmp_path / "half", "--val-fraction", "0.5", steps=2
    )
    assert half.exit_code == 0, half.stderr
    meta = json.loads((tmp_path / "half" / "data" / "meta.json").read_text())
    assert abs(meta["val_chars"] - meta["train_chars"]) < 20
    csv = trained / "two.csv"
    assert (
        train_tiny(csv, "--out", tmp_path / "csv", "--csv-column", "text", steps=2).exit_code == 0
    )
    scored = cli("evaluate", tmp_path / "csv", "--text", csv, "--csv-column", "text", "--json")
    assert scored.exit_code == 0 and json.loads(scored.stdout)["tokens"] > 5, scored.stderr


def test_a_raw_pickle_optimizer_state_is_refused_by_name_and_nothing_runs(
    tmp_path: Path, trained: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    folder = resolve_checkpoint(run, "latest")
    (folder / "optimizer.pt").write_bytes(pickle.dumps({"state": Evil()}))
    result = train_tiny("--out", run, "--resume", steps=30)
    err = assert_one_line_refusal(result, "train", 1)
    assert "it asks to call posix.system; nothing was run" in err and "may be malicious" in err
    assert "weights_only" not in err and not marker.exists()


def test_a_swapped_tokenizer_of_the_same_size_is_caught_by_its_hash(
    tmp_path: Path, trained: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    folder = resolve_checkpoint(run)
    path = folder / "tokenizer.json"
    original = path.read_text(encoding="utf-8")
    path.write_text(
        original.replace('"a"', '"\\u0000"').replace('"b"', '"a"').replace('"\\u0000"', '"b"'),
        encoding="utf-8",
    )
    assert len(path.read_bytes()) == len(original.encode())
    err = assert_one_line_refusal(cli("sample", run, "--length", "5"), "sample", 1)
    assert "not the vocabulary the model was trained with" in err
    path.write_text(original, encoding="utf-8")
    state = json.loads((folder / "state.json").read_text())
    del state["tokenizer_sha256"]  # a checkpoint from before the hash still loads
    (folder / "state.json").write_text(json.dumps(state))
    assert cli("sample", run, "--length", "5", "--seed", "1").exit_code == 0


def test_flags_show_no_value_and_a_drawn_seed_is_printed(trained: Path) -> None:
    assert "<bool>" not in cli("train", "--help").stdout
    drawn = cli("sample", trained / "run", "--length", "40")
    seed = re.search(r"seed (\d+) \(pass --seed \1", drawn.stderr)
    assert drawn.exit_code == 0 and seed, drawn.stderr
    again = cli("sample", trained / "run", "--length", "40", "--seed", seed.group(1))
    assert again.stdout == drawn.stdout
    start = [r for r in read_metrics(trained / "run" / "metrics.jsonl") if r["kind"] == "start"]
    assert start and start[0]["seed"] == 1
