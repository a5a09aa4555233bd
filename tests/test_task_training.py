"""Task-aware training: the mask in loss and evaluation, lines, the curriculum, best_by."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, cli
from safetensors.torch import load_file

from charlm.config import build_config
from charlm.data.batching import IGNORE_INDEX, Cursor, LineBatcher, StreamBatcher
from charlm.data.prepare import PrepareSettings, load_prepared, prepare
from charlm.errors import DataError, UsageError
from charlm.rundir.records import read_metrics
from charlm.tasks.curriculum import TaskRun
from charlm.tasks.masks import groups, loss_mask, mask_path, read_mask, write_mask
from charlm.tasks.synth import write_task
from charlm.training.run import train


def overrides(*extra: str) -> list[str]:
    pairs = list(TINY) + [x for item in extra for x in ("--set", item)]
    return [pairs[i + 1] for i in range(0, len(pairs), 2)]


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


def staged(folder: Path, lags: str = "2,3,4", **options: object) -> Path:
    args = {"length": 600, "valid_length": 300, "keys": 3, "alphabet": 3, **options}
    write_task(folder, "lag", lags=[int(x) for x in lags.split(",")], heldout_lags=[6], **args)
    return folder


def test_synth_writes_a_mask_per_text_and_a_staged_task_in_blocks(tmp_path):
    task = staged(tmp_path / "t")
    truth = json.loads((task / "truth.json").read_text())
    assert truth["score"]["curriculum"] == ["lag2", "lag3", "lag4"]
    assert truth["score"]["heldout"] == ["lag6"]
    for name in ("train", "valid"):
        text = (task / f"{name}.txt").read_text()
        mask = read_mask(mask_path(task / f"{name}.txt"), len(text))
        scored = np.flatnonzero(loss_mask(mask))  # score=task: the loss counts the recalls only
        assert all(text[i - 1] == "=" for i in scored) and len(scored) == text.count("=")
        lines = text.split("\n")[:-1]  # whole lines, each group a block, in order
        assert text.endswith("\n") and all(line[0] == line[-1] for line in lines)
        by_group = [groups(mask)[i] for i in scored]
        assert by_group == sorted(by_group)
        lags = {len(line) - 3 for line in lines}
        assert lags == ({2, 3, 4} if name == "train" else {2, 3, 4, 6})
    every = write_task(tmp_path / "all", "lag", lag=3, score="all", length=300, valid_length=200)
    mask = np.fromfile(tmp_path / "all" / "train.mask", dtype=np.uint8)
    assert every["score"]["mode"] == "all" and loss_mask(mask).all() and groups(mask).max() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["markov", "--score", "task"], "no scored position"),
        (["brackets", "--lags", "3,4"], "apply to the lag and copy tasks"),
        (["lag", "--lags", "3,x"], "whole numbers"),
        (["lag", "--score", "some"], "must be one of"),
    ],
)
def test_synth_refuses_what_a_task_cannot_do_and_writes_nothing(tmp_path, args, message):
    result = cli("data", "synth", *args, "--out", tmp_path / "t")
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "t").exists()


def test_lines_are_examples_from_a_zero_state_and_the_mask_hides_targets():
    ids = np.array([1, 5, 6, 0, 2, 7, 0, 3, 0], dtype=np.uint16)  # 0 is the newline
    mask = np.array([0, 0, 1, 0, 0, 1, 0, 1, 0], dtype=np.uint8)
    batcher = LineBatcher(ids, 0, batch_size=3, shuffle=False, mask=mask)
    x, y, after = batcher.batch(Cursor())
    assert not batcher.carries_state and after == Cursor(1, 0)
    assert x.T.tolist() == [[1, 5, 6], [2, 7, 0], [3, 0, 0]]  # line by line, padded
    assert y.T.tolist() == [[-100, 6, -100], [7, -100, -100], [-100, -100, -100]]
    streams = StreamBatcher(ids, 1, 8, mask=mask)
    _, y, _ = streams.batch(Cursor())
    assert (y[:, 0] != IGNORE_INDEX).tolist() == [bool(b) for b in mask[1:]]


def _one_window_run(folder: Path, text: str, mask: np.ndarray) -> dict[str, torch.Tensor]:
    """One optimiser step on the whole text as a single window, from a fixed seed."""
    folder.mkdir()
    (folder / "t.txt").write_text(text)
    write_mask(folder / "t.mask", mask)
    (folder / "v.txt").write_text(text)
    write_mask(folder / "v.mask", mask)
    settings = ("train.batch_size=1", "train.seq_len=64", "train.max_steps=1")
    train(
        folder / "run",
        text=folder / "t.txt",
        val_file=folder / "v.txt",
        overrides=overrides(*settings),
        show_progress=False,
    )
    record = [r for r in read_metrics(folder / "run" / "metrics.jsonl") if r["kind"] == "val"][0]
    return {**weights(folder / "run", 1), "val_loss": torch.tensor(record["val_loss"])}


def test_the_mask_decides_what_training_and_validation_score(tmp_path):
    text = "Aab=A\nBba=B\nAbb=A\nBaa="  # the last character (a target, never an input) varies
    mask = np.zeros(len(text) + 1, dtype=np.uint8)
    mask[[4, 10, 16]] = 1 | (1 << 1)  # the recalls: scored, group 1
    unscored = mask.copy()  # the final character is no target of the loss
    base = _one_window_run(tmp_path / "a", text + "B", unscored)
    same = _one_window_run(tmp_path / "b", text + "A", unscored)
    assert all(torch.equal(base[k], same[k]) for k in base)  # weights and val_loss alike
    scored = mask.copy()
    scored[-1] = 1 | (1 << 1)
    one = _one_window_run(tmp_path / "c", text + "B", scored)
    other = _one_window_run(tmp_path / "d", text + "A", scored)
    assert not torch.equal(one["val_loss"], other["val_loss"])
    assert not torch.equal(one["decoder.weight"], other["decoder.weight"])


def _curriculum_run(run: Path, task: Path, *extra: str, resume: bool = False) -> None:
    settings = (
        "data.batching=lines",
        "train.eval_every=4",
        "train.checkpoint_every=4",
        "train.curriculum_metric=recall_loss",
        "train.curriculum_threshold=100",  # every evaluation passes: a stage per evaluation
        "model.dropout=0.2",
        *extra,
    )
    train(
        run,
        text=None if resume else task / "train.txt",
        val_file=None if resume else task / "valid.txt",
        overrides=overrides(*settings),
        resume=resume,
        show_progress=False,
    )


def test_curriculum_advances_and_resumes_exactly_across_a_stage_change(tmp_path):
    task = staged(tmp_path / "t")
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    _curriculum_run(straight, task, "train.max_steps=12")
    _curriculum_run(halves, task, "train.max_steps=8")  # stops right after the 2nd advance
    state = json.loads((halves / "checkpoints" / "step-00000008" / "state.json").read_text())
    assert state["task"]["stage"] == 2 and state["cursor"] == {"epoch": 0, "position": 0}
    _curriculum_run(halves, task, "train.max_steps=12", resume=True)
    a, b = weights(straight, 12), weights(halves, 12)
    assert all(torch.equal(a[k], b[k]) for k in a)
    val = [r for r in read_metrics(straight / "metrics.jsonl") if r["kind"] == "val"]
    assert [r["stage"] for r in val] == ["lag2", "lag3", "lag4"]
    assert [r.get("advanced_to") for r in val] == ["lag3", "lag4", None]
    text = (task / "valid.txt").read_text()
    counts = {f"lag{len(line) - 3}": 0 for line in text.split("\n")[:-1]}
    for line in text.split("\n")[:-1]:
        counts[f"lag{len(line) - 3}"] += 1
    record = val[-1]
    assert {name: g["positions"] for name, g in record["groups"].items()} == counts
    assert record["scored_tokens"] == sum(counts.values())  # the loss counts recalls only
    assert record["recall_loss"] == record["groups"]["lag4"]["recall_loss"]  # target: last stage
    for group in record["groups"].values():
        assert 0 <= group["recall_accuracy"] <= 1 and group["recall_loss"] > 0
    # evaluate scores a text, not a training stage: no "stage" (a fresh TaskRun said stage 0)
    scores = json.loads(cli("evaluate", straight, "--text", task / "valid.txt", "--json").stdout)
    assert "stage" not in scores and scores["recall_loss"] == pytest.approx(
        record["recall_loss"], rel=1e-6
    )


def test_curriculum_stays_until_its_threshold_passes(tmp_path):
    task = staged(tmp_path / "t", lags="2,3")
    run = tmp_path / "run"
    _curriculum_run(
        run,
        task,
        "train.max_steps=8",
        "train.curriculum_metric=recall_accuracy",
        "train.curriculum_threshold=1.0",
    )
    val = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "val"]
    for record in val:  # no advance without recall accuracy 1.0 on lag 2, and then one
        passed = record["groups"]["lag2"]["recall_accuracy"] >= 1.0
        assert record.get("advanced_to") == ("lag3" if passed else None)
    assert val[-1]["stage"] == ("lag3" if any(r.get("advanced_to") for r in val[:-1]) else "lag2")


def test_best_by_picks_the_checkpoint_with_the_best_metric(tmp_path):
    task = staged(tmp_path / "t", lags="3")
    run = tmp_path / "run"
    settings = ("data.batching=lines", "train.eval_every=3", "train.max_steps=15")
    train(
        run,
        text=task / "train.txt",
        val_file=task / "valid.txt",
        overrides=overrides(*settings, "train.best_by=recall_accuracy", "optim.lr=0.01"),
        show_progress=False,
    )
    val = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "val"]
    best = max(val, key=lambda r: (r["recall_accuracy"], -r["step"]))  # the first of the best
    pointer = json.loads((run / "checkpoints" / "best.json").read_text())
    assert pointer["step"] == best["step"]


def test_best_by_and_curriculum_the_data_cannot_provide_are_refused_before_writing(tmp_path):
    write_task(tmp_path / "m", "markov", length=400, valid_length=200)
    write_task(tmp_path / "one", "lag", lag=3, length=400, valid_length=200)  # a single stage
    for text, setting, message in (
        (tmp_path / "m", "train.best_by=recall_loss", "no task positions"),
        (tmp_path / "one", "train.curriculum_metric=recall_accuracy", "no curriculum stages"),
    ):
        args = ("train", text / "train.txt", "--val-file", text / "valid.txt", "-q")
        result = cli(*args, "--out", tmp_path / "run", "--set", setting)
        assert result.exit_code == 2 and message in result.output
        assert "Traceback" not in result.output and not (tmp_path / "run").exists()
    with pytest.raises(UsageError, match="train.best_by"):
        train(tmp_path / "run", text=tmp_path / "m" / "train.txt", overrides=["train.best_by=x"])
    assert not (tmp_path / "run").exists()


def test_evaluate_honours_the_mask_beside_its_text(tmp_path):
    task = staged(tmp_path / "t", lags="2")
    run = tmp_path / "run"
    settings = ("data.batching=lines", "train.max_steps=4")
    data = {"text": task / "train.txt", "val_file": task / "valid.txt", "show_progress": False}
    train(run, overrides=overrides(*settings), **data)
    result = cli("evaluate", run, "--text", task / "valid.txt", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    text = (task / "valid.txt").read_text()
    assert scores["tokens"] == scores["scored_tokens"] == text.count("=")
    assert set(scores["groups"]) == {"lag2", "lag6"}
    val = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "val"][-1]
    assert scores["loss"] == pytest.approx(val["val_loss"], rel=1e-6)
    unmasked = tmp_path / "plain.txt"
    unmasked.write_text(text)  # no plain.mask beside it: every character is scored
    whole = json.loads(cli("evaluate", run, "--text", unmasked, "--json").stdout)
    assert whole["tokens"] == len(text) - text.count("\n") and "groups" not in whole


def test_prepare_copies_the_mask_and_refuses_one_that_does_not_fit(tmp_path):
    task = staged(tmp_path / "t", lags="2")
    settings = PrepareSettings(level="char", val_file=task / "valid.txt")
    meta = prepare(task / "train.txt", tmp_path / "data", settings, show_progress=False)
    data = load_prepared(tmp_path / "data")
    assert meta["task"]["groups"] == {"1": "lag2", "2": "lag6"}
    assert data.train_mask.tobytes() == (task / "train.mask").read_bytes()
    plain = PrepareSettings(level="char", val_file=None)
    (tmp_path / "p.txt").write_text((task / "train.txt").read_text())
    prepare(tmp_path / "p.txt", tmp_path / "plain", plain, show_progress=False)
    assert load_prepared(tmp_path / "plain").train_mask is None  # no mask file: as before
    (task / "valid.mask").unlink()
    with pytest.raises(DataError, match="valid.mask: missing, but .*train.mask exists"):
        prepare(task / "train.txt", tmp_path / "d2", settings, show_progress=False)
    (task / "valid.mask").write_bytes(b"\x00" * 3)
    with pytest.raises(DataError, match="valid.mask: 3 bytes but its text has"):
        prepare(task / "train.txt", tmp_path / "d2", settings, show_progress=False)
    word = PrepareSettings(level="word", val_file=task / "valid.txt")
    with pytest.raises(UsageError, match="needs data.level=char"):
        prepare(task / "train.txt", tmp_path / "d2", word, show_progress=False)
    assert not (tmp_path / "d2").exists()


def test_each_stage_trains_on_its_own_block_of_lines(tmp_path):
    task = staged(tmp_path / "t")
    prepare(task / "train.txt", tmp_path / "d", PrepareSettings(val_file=task / "valid.txt"))
    data = load_prepared(tmp_path / "d")
    config = build_config(overrides=["train.curriculum_metric=recall_accuracy"])
    tasks = TaskRun(config, data.meta, data.tokenizer.token_to_id("\n"))
    chars = {i: c for c, i in data.tokenizer.get_vocab().items()}
    blocks = []
    for stage in range(3):
        tasks.stage = stage
        span = tasks.train_span(data.train_mask, data.train_ids)
        blocks.append("".join(chars[int(i)] for i in data.train_ids[span]))
    for block, lag in zip(blocks, (2, 3, 4), strict=True):
        assert block.endswith("\n") and {len(line) - 3 for line in block.split("\n")[:-1]} == {lag}
    assert "".join(blocks) == (task / "train.txt").read_text()  # the blocks tile the text
