"""Training: it learns, resumes bit-exactly, refuses unsafe changes, and survives bad steps."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import TINY, pattern_text, write_corpus
from safetensors.torch import load_file

from charlm.errors import TrainingStopped, UsageError
from charlm.inference.sample import SampleOptions, Sampler
from charlm.rundir.checkpoint import step_dirs
from charlm.rundir.records import read_metrics
from charlm.training.run import train


def overrides(*extra: str) -> list[str]:
    pairs = list(TINY) + [x for item in extra for x in ("--set", item)]
    return [pairs[i + 1] for i in range(0, len(pairs), 2)]


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


def poison_loss(
    monkeypatch: pytest.MonkeyPatch, is_bad: Callable[[int], bool], value: float = float("nan")
) -> dict[str, int]:
    """Make the n-th training loss (validation runs under no_grad and is not counted)
    non-finite where `is_bad(n)`; returns the counter, to reset between runs."""
    import charlm.training.step as train_module

    real = train_module.F.cross_entropy
    calls = {"n": 0}

    def poisoned(*args: object, **kwargs: object) -> torch.Tensor:
        loss = real(*args, **kwargs)
        if not torch.is_grad_enabled():
            return loss
        calls["n"] += 1
        return loss * value if is_bad(calls["n"]) else loss

    monkeypatch.setattr(train_module.F, "cross_entropy", poisoned)
    return calls


def test_tiny_model_learns_the_pattern(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    result = train(
        tmp_path / "run",
        text=corpus,
        overrides=overrides("train.max_steps=120", "optim.lr=0.01"),
        show_progress=False,
    )
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    val = [r for r in records if r["kind"] == "val"]
    assert val[-1]["val_loss"] < 0.6 * val[0]["val_loss"]
    assert result.best_val_loss == min(r["val_loss"] for r in val)
    first = next(r for r in records if r["kind"] == "train")
    assert {
        "step",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "elapsed_s",
        "clipped_fraction",
    } <= set(first)
    assert {"step", "val_loss", "val_bits_per_char"} <= set(val[0])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_resume_is_bit_exact(tmp_path: Path, cell: str) -> None:
    corpus = write_corpus(tmp_path)
    common = ("model.dropout=0.3", "model.layers=2", f"model.cell={cell}")
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train(
        straight,
        text=corpus,
        overrides=overrides(*common, "train.max_steps=30"),
        show_progress=False,
    )
    train(
        halves, text=corpus, overrides=overrides(*common, "train.max_steps=15"), show_progress=False
    )
    train(
        halves, overrides=overrides(*common, "train.max_steps=30"), resume=True, show_progress=False
    )
    a, b = weights(straight, 30), weights(halves, 30)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    val = [
        {
            r["step"]: r["val_loss"]
            for r in read_metrics(run / "metrics.jsonl")
            if r["kind"] == "val"
        }
        for run in (straight, halves)
    ]
    assert val[0] == {step: val[1][step] for step in val[0]}  # the halves run also scored step 15
    texts = [
        Sampler(run).generate(SampleOptions(length=40, seed=7), lambda i, s: None)
        for run in (straight, halves)
    ]
    assert texts[0] == texts[1]


def test_resume_refuses_model_changes_and_allows_safe_ones(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    run = tmp_path / "run"
    train(run, text=corpus, overrides=overrides("train.max_steps=10"), show_progress=False)
    with pytest.raises(UsageError, match=r"model.hidden_size: 16 -> 32.*train.seed: 1 -> 2"):
        train(
            run,
            overrides=overrides("train.max_steps=20", "model.hidden_size=32", "train.seed=2"),
            resume=True,
            show_progress=False,
        )
    result = train(
        run,
        overrides=overrides("train.max_steps=20", "optim.lr=0.002"),
        resume=True,
        show_progress=False,
    )
    assert result.steps == 20


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    run = tmp_path / "run"
    train(run, text=corpus, overrides=overrides("train.max_steps=10"), show_progress=False)
    before = (run / "checkpoints" / "latest.json").read_text()
    with pytest.raises(UsageError, match="already holds a run; pass --resume"):
        train(run, text=corpus, overrides=overrides("train.max_steps=10"), show_progress=False)
    assert (run / "checkpoints" / "latest.json").read_text() == before
    train(
        run,
        text=corpus,
        overrides=overrides("train.max_steps=5", "train.checkpoint_every=5"),
        force=True,
        show_progress=False,
    )
    assert [p.name for p in step_dirs(run / "checkpoints")] == ["step-00000005"]


def test_retention_keeps_last_k_and_the_best(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    run = tmp_path / "run"
    train(
        run,
        text=corpus,
        overrides=overrides("train.max_steps=60", "train.keep_checkpoints=2", "optim.lr=0.01"),
        show_progress=False,
    )
    names = [p.name for p in step_dirs(run / "checkpoints")]
    best = json.loads((run / "checkpoints" / "best.json").read_text())["name"]
    assert names[-2:] == ["step-00000050", "step-00000060"]
    assert best in names and len(names) <= 3


@pytest.mark.parametrize("guard", ["host", "device"])
def test_non_finite_steps_never_reach_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guard: str
) -> None:
    corpus = write_corpus(tmp_path)
    run = tmp_path / "run"
    settings = ("train.max_steps=10", f"train.step_guard={guard}")
    train(run, text=corpus, overrides=overrides(*settings), show_progress=False)
    good = weights(run, 10)
    poison_loss(monkeypatch, lambda n: n > 2)
    with pytest.raises(TrainingStopped, match="3 non-finite steps in a row"):
        train(
            run,
            overrides=overrides(
                "train.max_steps=40", "train.max_bad_steps=3", f"train.step_guard={guard}"
            ),
            resume=True,
            show_progress=False,
        )
    # Two good steps happened, then three bad ones were skipped: nothing non-finite was saved,
    # and the last checkpoint is the one from before.
    assert [p.name for p in step_dirs(run / "checkpoints")][-1] == "step-00000010"
    assert all(torch.equal(good[k], weights(run, 10)[k]) for k in good)


def test_a_few_bad_steps_are_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_loss(monkeypatch, lambda n: n in (3, 4), float("inf"))
    run = tmp_path / "run"
    train(
        run,
        text=write_corpus(tmp_path),
        overrides=overrides("train.max_steps=10"),
        show_progress=False,
    )
    final = load_file(str(run / "checkpoints" / "step-00000010" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in final.values())
    last = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"][-1]
    assert last["bad_steps"] == 2


@pytest.mark.parametrize(
    ("cell", "optimiser"),
    # RMSProp leaves a weight alone on a zeroed gradient but decays its average; AdamW's
    # momentum and weight decay move the weight itself: both must be undone.
    [("lstm", "optim.name=rmsprop"), ("gru", "optim.name=adamw")],
)
def test_device_step_guard_gives_the_host_guards_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cell: str, optimiser: str
) -> None:
    calls = poison_loss(monkeypatch, lambda n: n in (4, 5, 9))  # steps 4, 5 and 9 are bad
    from charlm.training.step import DeviceStepGuard

    guarded = {"steps": 0}
    real_step = DeviceStepGuard.step

    def counted(self: DeviceStepGuard, *args: object) -> object:
        guarded["steps"] += 1
        return real_step(self, *args)

    monkeypatch.setattr(DeviceStepGuard, "step", counted)
    corpus = write_corpus(tmp_path)
    for guard in ("host", "device"):
        calls["n"] = 0
        train(
            tmp_path / guard,
            text=corpus,
            overrides=overrides(
                "train.max_steps=12",
                f"model.cell={cell}",
                optimiser,
                "optim.weight_decay=0.1",
                f"train.step_guard={guard}",
            ),
            show_progress=False,
        )
    assert guarded["steps"] == 11  # every step of the device run but the first
    host, device = (weights(tmp_path / g, 12) for g in ("host", "device"))
    assert all(torch.equal(host[k], device[k]) for k in host)  # bit for bit, bad steps undone
    host_log, device_log = (
        [
            {k: r[k] for k in ("step", "loss", "bad_steps", "grad_norm", "clipped_fraction")}
            for r in read_metrics(tmp_path / g / "metrics.jsonl")
            if r["kind"] == "train"
        ]
        for g in ("host", "device")
    )
    # The interval's mean loss is summed in another precision: equal to float32 rounding.
    for h, d in zip(host_log, device_log, strict=True):
        assert d.pop("loss") == pytest.approx(h.pop("loss"), rel=1e-6)
    assert host_log == device_log and host_log[-1]["bad_steps"] == 3
    optimizer = [
        torch.load(tmp_path / g / "checkpoints/step-00000012/optimizer.pt", weights_only=True)
        for g in ("host", "device")
    ]
    for a, b in zip(optimizer[0]["state"].values(), optimizer[1]["state"].values(), strict=True):
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)


def test_epochs_bound_the_run(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path, pattern_text(2000))
    result = train(
        tmp_path / "run",
        text=corpus,
        overrides=overrides("train.max_steps=0", "train.epochs=2"),
        show_progress=False,
    )
    # 2000 chars, 5% held out, 4 streams of ~474 tokens, windows of 16: 30 steps an epoch.
    assert result.steps == 60


def test_unigram_bias_starts_training_from_the_unigram_model(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    first_val = {}
    for scale in ("0", "1"):
        run = tmp_path / f"bias-{scale}"
        settings = ("train.max_steps=1", "train.eval_every=1", "optim.lr=1e-9")
        train(
            run,
            text=corpus,
            overrides=overrides(*settings, f"model.unigram_bias={scale}"),
            show_progress=False,
        )
        records = read_metrics(run / "metrics.jsonl")
        first_val[scale] = next(r["val_loss"] for r in records if r["kind"] == "val")
    text = pattern_text()
    counts = torch.tensor([text.count(c) for c in sorted(set(text))], dtype=torch.float64)
    unigram_entropy = float(-(counts / counts.sum() * torch.log(counts / counts.sum())).sum())
    # Zero bias starts near log(vocabulary); the unigram bias near the unigram entropy.
    assert first_val["0"] > unigram_entropy + 0.1
    assert abs(first_val["1"] - unigram_entropy) < 0.05, (first_val, unigram_entropy)
