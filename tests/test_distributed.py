"""Data-parallel training: stream layout across ranks, grad_accum, 2-process gloo runs, resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from charlm.data.batching import Cursor, StreamBatcher
from charlm.errors import UsageError
from charlm.rundir.checkpoint import load_checkpoint
from charlm.system.distributed import setup_distributed
from charlm.training.run import train
from charlm.training.step import micro_batches
from tests.conftest import make_english
from tests.helpers import pattern_text

# Tiny runs; optim.eps=1 makes RMSProp's step nearly proportional to the gradient, so runs that
# differ only in rounding stay close instead of being amplified by early sign-like steps.
TINY = [
    "model.layers=1",
    "model.hidden_size=16",
    "model.embedding_dim=8",
    "train.seq_len=16",
    "train.threads=1",
    "train.log_every=1",
    "train.eval_every=4",
    "train.checkpoint_every=4",
    "train.dist_timeout_s=60",
    "optim.eps=1.0",
    "optim.lr=0.05",
]
LAUNCH_TIMEOUT_S = 240  # a hung collective fails the test instead of hanging the suite

WORKER = """
import json, os, shutil, sys
from pathlib import Path
from charlm.training.run import train

calls = json.loads(sys.argv[1])
for call in calls:
    os.environ["MASTER_PORT"] = str(call["port"])
    if call.get("copy") and os.environ["RANK"] == "0":
        shutil.copytree(call["copy"][0], call["copy"][1])
    train(
        Path(call["out"]),
        text=Path(call["text"]) if call.get("text") else None,
        overrides=call["overrides"],
        resume=call.get("resume", False),
        show_progress=False,
    )
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], tmp_path: Path, world_size: int = 2) -> list[subprocess.Popen]:
    """Start `world_size` processes as torchrun would: RANK, WORLD_SIZE, MASTER_* set."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        log = open(tmp_path / f"rank{rank}.log", "w")  # noqa: SIM115 - closed by finish()
        procs.append(
            subprocess.Popen(
                [sys.executable, *argv], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
            )
        )
    return procs


def finish(procs: list[subprocess.Popen], tmp_path: Path) -> tuple[list[int], list[str]]:
    """Wait for every process (killing all past the deadline); exit codes and logs."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.wait()
        pytest.fail("a distributed run hung past its deadline: " + _logs(procs, tmp_path)[0])
    codes = [proc.returncode for proc in procs]
    return codes, _logs(procs, tmp_path)


def _logs(procs: list[subprocess.Popen], tmp_path: Path) -> list[str]:
    return [(tmp_path / f"rank{r}.log").read_text() for r in range(len(procs))]


def weights(run_dir: Path, which: str = "latest") -> dict[str, torch.Tensor]:
    return load_file(str(load_checkpoint(run_dir, which).path / "model.safetensors"))


def assert_weights_close(a: Path, b: Path, exact: bool = False) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        if exact:
            assert torch.equal(wa[name], wb[name]), name
        else:
            torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=2e-5, msg=name)


def val_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["val_loss"] for r in map(json.loads, lines) if r["kind"] == "val"]


def sets(*items: str) -> list[str]:
    """TINY's overrides and then `items` (later ones win)."""
    return [*TINY, *items]


@pytest.mark.parametrize("world_size,grad_accum", [(2, 1), (1, 2), (2, 2)])
def test_ranks_and_micro_batches_read_the_streams_of_the_global_batch(
    world_size: int, grad_accum: int
) -> None:
    """Rank r, micro-batch m reads global streams [(r*A + m)*B, ...): disjoint, and together
    exactly the columns one process with the whole global batch reads."""
    ids = np.arange(1001)  # a token's id is its position
    batch, seq_len = 3, 7
    whole = StreamBatcher(ids, batch * grad_accum * world_size, seq_len)
    mine = [
        StreamBatcher(ids, batch * grad_accum, seq_len, r, world_size) for r in range(world_size)
    ]
    cursor = Cursor()
    for _ in range(whole.steps_per_epoch):
        x_all, _, after = whole.batch(cursor)
        parts = []
        for rank in range(world_size):
            x, y, rank_after = mine[rank].batch(cursor)
            assert rank_after == after
            for x_part, y_part, _ in micro_batches(x, y, grad_accum):
                assert x_part.shape[1] == batch
                np.testing.assert_array_equal(y_part, x_part + 1)
                parts.append(x_part)
        joined = np.concatenate(parts, axis=1)
        np.testing.assert_array_equal(joined, x_all)  # same streams, same order
        assert len(np.unique(joined)) == joined.size  # no token read twice in a step
        cursor = after


def test_grad_accum_gives_the_update_of_the_doubled_batch(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(pattern_text(8000), encoding="utf-8")
    common = sets("train.max_steps=6", "model.cell=lstm")
    train(
        tmp_path / "big",
        text=corpus,
        overrides=[*common, "train.batch_size=8"],
        show_progress=False,
    )
    train(
        tmp_path / "accum",
        text=corpus,
        overrides=[*common, "train.batch_size=4", "train.grad_accum=2"],
        show_progress=False,
    )
    assert_weights_close(tmp_path / "big", tmp_path / "accum")
    np.testing.assert_allclose(
        val_losses(tmp_path / "big"), val_losses(tmp_path / "accum"), rtol=1e-5
    )
    state = load_file(
        str(load_checkpoint(tmp_path / "accum", "latest").path / "train_state.safetensors")
    )
    assert state["state_h"].shape[1] == 8  # the carried state of all 8 streams


def test_grad_accum_weighs_sentences_by_their_tokens(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_english(300, seed=3), encoding="utf-8")
    common = sets("train.max_steps=4", "data.level=word", "data.batching=sentence")
    train(
        tmp_path / "big",
        text=corpus,
        overrides=[*common, "train.batch_size=6"],
        show_progress=False,
    )
    train(
        tmp_path / "accum",
        text=corpus,
        overrides=[*common, "train.batch_size=2", "train.grad_accum=3"],
        show_progress=False,
    )
    assert_weights_close(tmp_path / "big", tmp_path / "accum")


def test_resume_refuses_another_global_batch(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(pattern_text(4000), encoding="utf-8")
    common = sets("train.max_steps=2", "train.batch_size=4")
    train(tmp_path / "run", text=corpus, overrides=common, show_progress=False)
    with pytest.raises(UsageError, match="global batch is 4 .* makes it 8.*grad_accum=1"):
        train(
            tmp_path / "run",
            overrides=["train.max_steps=4", "train.grad_accum=2"],
            resume=True,
            show_progress=False,
        )


def test_world_size_without_rank_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(UsageError, match="torchrun"):
        setup_distributed("cpu")


@pytest.mark.slow
def test_two_processes_match_one_and_resume_on_two_or_one(tmp_path: Path) -> None:
    """One 2-process gloo job runs four trainings in turn; the checks compare them with
    single-process runs of the same global batch."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(pattern_text(8000), encoding="utf-8")
    words = tmp_path / "words.txt"
    words.write_text(make_english(295, seed=4), encoding="utf-8")  # 13 validation sentences
    stream = sets("model.cell=lstm", "train.batch_size=4")
    sentence = sets("data.level=word", "data.batching=sentence", "train.batch_size=3")
    calls = [
        # straight: 8 steps
        {"out": "two", "text": str(corpus), "overrides": [*stream, "train.max_steps=8"]},
        # stopped at 4, resumed to 8 (a copy at step 4 is resumed on one process below)
        {"out": "split", "text": str(corpus), "overrides": [*stream, "train.max_steps=4"]},
        {
            "out": "split",
            "overrides": ["train.max_steps=8"],
            "resume": True,
            "copy": [str(tmp_path / "split"), str(tmp_path / "split-at-4")],
        },
        {"out": "sentences", "text": str(words), "overrides": [*sentence, "train.max_steps=4"]},
    ]
    for call in calls:
        call["port"] = free_port()
    codes, logs = finish(launch(["-c", WORKER, json.dumps(calls)], tmp_path), tmp_path)
    assert codes == [0, 0], logs

    # One process with the same global batch (8 streams) gives the same training.
    train(
        tmp_path / "one",
        text=corpus,
        overrides=[*stream, "train.max_steps=8", "train.batch_size=8"],
        show_progress=False,
    )
    assert_weights_close(tmp_path / "two", tmp_path / "one")
    np.testing.assert_allclose(
        val_losses(tmp_path / "two"), val_losses(tmp_path / "one"), rtol=1e-5
    )

    # Resumed on two processes: identical to the straight run.
    assert_weights_close(tmp_path / "two", tmp_path / "split", exact=True)
    saved = load_checkpoint(tmp_path / "split", "latest")
    assert saved.info["world_size"] == 2 and saved.info["global_batch"] == 8
    assert saved.train_tensors()["state_h"].shape[1] == 8  # both ranks' streams, gathered

    # Resumed on one process with grad_accum=2 (the same 8 streams): close to the straight run.
    train(
        tmp_path / "split-at-4",
        overrides=["train.max_steps=8", "train.grad_accum=2"],
        resume=True,
        show_progress=False,
    )
    assert_weights_close(tmp_path / "two", tmp_path / "split-at-4")

    # Sentences: token-weighted loss across ranks; 13 validation sentences shared 7 + 6.
    train(
        tmp_path / "sentences-one",
        text=words,
        overrides=[*sentence, "train.max_steps=4", "train.batch_size=6"],
        show_progress=False,
    )
    assert_weights_close(tmp_path / "sentences", tmp_path / "sentences-one")
    np.testing.assert_allclose(
        val_losses(tmp_path / "sentences"), val_losses(tmp_path / "sentences-one"), rtol=1e-5
    )
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").open()]
    # One train, one val and one sample record: only rank 0 writes.
    assert [r["kind"] for r in records if r["step"] == 8] == ["train", "val", "sample"]


def _training_logged(run_dir: Path) -> bool:
    """A train record exists: both ranks have passed steps together, so both are inside the
    loop with their signal handlers installed (the start record alone came too early)."""
    path = run_dir / "metrics.jsonl"
    return path.exists() and '"kind": "train"' in path.read_text(encoding="utf-8")


def _wait_for_training(run_dir: Path, procs: list[subprocess.Popen], tmp_path: Path) -> None:
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not _training_logged(run_dir):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for proc in procs:
                proc.kill()
            pytest.fail("training did not start: " + " | ".join(_logs(procs, tmp_path)))
        time.sleep(0.1)


def _endless_run(tmp_path: Path) -> tuple[Path, list[subprocess.Popen]]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(pattern_text(20000), encoding="utf-8")
    settings = sets("train.batch_size=4", "train.max_steps=1000000", "train.eval_every=1000000")
    argv = ["-m", "charlm", "train", str(corpus), "--out", "run", "-q"]
    procs = launch([*argv, *(f"--set={o}" for o in settings)], tmp_path)
    _wait_for_training(tmp_path / "run", procs, tmp_path)
    return tmp_path / "run", procs


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_all_at_the_same_step(tmp_path: Path) -> None:
    run_dir, procs = _endless_run(tmp_path)
    procs[1].send_signal(signal.SIGTERM)  # only rank 1 is told; rank 0 must hear it too
    codes, logs = finish(procs, tmp_path)
    assert codes == [143, 143], logs
    # Both ranks exit 143 together (a rank stopping at another step would break the next
    # collective); only rank 0 reports it.
    stopped = [line for log in logs for line in log.splitlines() if "SIGTERM at step" in line]
    assert len(stopped) == 1 and "SIGTERM at step" in logs[0], logs
    step = int(stopped[0].split("SIGTERM at step ")[1].split(":")[0])
    assert load_checkpoint(run_dir, "latest").step == step  # saved by rank 0


@pytest.mark.slow
def test_a_dead_rank_ends_the_others_with_a_clear_error(tmp_path: Path) -> None:
    _, procs = _endless_run(tmp_path)
    procs[1].kill()
    codes, logs = finish(procs, tmp_path)
    assert codes[0] == 1, logs
    assert "rank 0 of 2: lost contact with the other processes" in logs[0]
