"""train.max_time: the setting's forms, the schedule on the budget's fraction, the end of a
time-budgeted run, its exact resume, the display's total and ETA, and torchrun's agreement."""

from __future__ import annotations

import io
import math
import signal
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

import charlm.training.budget as budget_module
import charlm.training.trainer as trainer_module
from charlm.config import OptimConfig, build_config, config_to_dict
from charlm.errors import ConfigError, TrainingStopped
from charlm.rundir.checkpoint import load_checkpoint
from charlm.rundir.records import read_metrics
from charlm.training.budget import Budget
from charlm.training.display import TrainingDisplay
from charlm.training.run import train
from charlm.training.schedules import learning_rate
from tests.helpers import TINY, cli, pattern_text, write_corpus

STATUS = "loss 1.234  12,345 tok/s  |g| 0.52  clipped 3%"


def overrides(*extra: str) -> list[str]:
    pairs = list(TINY) + [x for item in extra for x in ("--set", item)]
    return [pairs[i + 1] for i in range(0, len(pairs), 2)]


def of_kind(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == kind]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(load_checkpoint(run_dir, "latest").path / "model.safetensors"))


# -- the setting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given,seconds",
    [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), ("600", 600),
     ("45.5", 45.5), ("2m30s", 150)],
)  # fmt: skip
def test_max_time_takes_seconds_or_a_duration(given: str, seconds: float) -> None:
    assert build_config(overrides=[f"train.max_time={given}"]).train.max_time == seconds


def test_a_yaml_file_may_give_max_time_as_a_number_or_a_duration(tmp_path: Path) -> None:
    path = tmp_path / "budget.yaml"
    path.write_text("train:\n  max_time: 10m\n", encoding="utf-8")
    assert build_config(config_file=path).train.max_time == 600
    path.write_text("train:\n  max_time: 90\n", encoding="utf-8")
    assert build_config(config_file=path).train.max_time == 90


@pytest.mark.parametrize("given", ["ten", "10 minutes", "m", "-5m", "true", "1d"])
def test_a_bad_max_time_is_one_line_naming_the_key_and_the_forms(given: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(overrides=[f"train.max_time={given}"])
    message = str(caught.value)
    assert "\n" not in message and "train.max_time" in message and "1h30m" in message, message


def test_a_negative_max_time_is_refused() -> None:
    with pytest.raises(ConfigError, match="train.max_time must not be negative"):
        build_config(overrides=["train.max_time=-5"])


def test_the_command_line_refuses_a_bad_max_time_in_one_line() -> None:
    result = cli("config", "show", "--set", "train.max_time=soon")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "train.max_time" in result.stderr
    assert "Traceback" not in result.stderr


def test_max_time_alone_lifts_the_default_step_limit() -> None:
    assert build_config().train.max_steps == 2000  # unchanged without a time budget
    alone = build_config(overrides=["train.max_time=10m"]).train
    assert (alone.max_time, alone.max_steps) == (600, 0)
    both = build_config(overrides=["train.max_time=10m", "train.max_steps=2000"]).train
    assert (both.max_time, both.max_steps) == (600, 2000)  # given: whichever comes first


def test_a_max_steps_from_a_file_or_a_saved_run_still_counts(tmp_path: Path) -> None:
    path = tmp_path / "steps.yaml"
    path.write_text("train:\n  max_steps: 500\n", encoding="utf-8")
    assert build_config(config_file=path, overrides=["train.max_time=1m"]).train.max_steps == 500
    saved = config_to_dict(build_config())  # a resumed run's config holds its max_steps
    resumed = build_config(base=saved, overrides=["train.max_time=1m"]).train
    assert (resumed.max_steps, resumed.max_time) == (2000, 60)


def test_no_limit_at_all_is_refused_naming_max_time() -> None:
    with pytest.raises(ConfigError, match="train.max_time"):
        build_config(overrides=["train.max_steps=0"])


def test_config_show_prints_the_budget_in_seconds() -> None:
    result = cli("config", "show", "--set", "train.max_time=1h30m")
    assert result.exit_code == 0, result.stderr
    assert "max_time: 5400.0" in result.stdout and "max_steps: 0" in result.stdout


# -- the schedule ------------------------------------------------------------------------------


def test_cosine_follows_the_time_fraction_after_a_warm_up_in_steps() -> None:
    optim = OptimConfig(schedule="cosine", lr=1.0, warmup_steps=10)
    assert learning_rate(optim, 4, 0) == 0.5  # the warm-up counts steps
    # A budget that ends within the warm-up (a slow machine) still ends the rate at lr/10.
    assert learning_rate(optim, 4, 0, time_fraction=0.5) == pytest.approx(0.5 * 0.55)
    assert learning_rate(optim, 4, 0, time_fraction=1.0) == pytest.approx(0.05)
    rates = [learning_rate(optim, 50, 0, time_fraction=f / 20) for f in range(21)]
    assert rates[0] == 1.0 and rates[-1] == pytest.approx(0.1)
    assert rates[10] == pytest.approx(0.55)  # halfway: the mean of lr and lr/10
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert learning_rate(optim, 50, 0, time_fraction=1.7) == pytest.approx(0.1)  # past: floor


def test_a_step_run_keeps_its_cosine_to_the_last_bit() -> None:
    optim = OptimConfig(schedule="cosine", lr=1e-3, warmup_steps=10)
    floor = optim.lr * 0.1  # the formula before time budgets: old runs resume bit-exactly
    for step in (10, 37, 55, 99, 140):
        progress = min(1.0, (step - 10) / 90)
        old = floor + 0.5 * (optim.lr - floor) * (1 + math.cos(math.pi * progress))
        assert learning_rate(optim, step, 100) == old
    assert learning_rate(optim, 3, 100) == optim.lr * 4 / 10


def test_with_both_limits_cosine_follows_whichever_is_further() -> None:
    optim = OptimConfig(schedule="cosine", lr=1.0)
    by_steps = learning_rate(optim, 50, 100)  # halfway by steps
    assert learning_rate(optim, 50, 100, time_fraction=0.2) == by_steps
    assert learning_rate(optim, 50, 100, time_fraction=0.9) == learning_rate(
        optim, 0, 0, time_fraction=0.9
    )
    assert learning_rate(optim, 50, 0) == 1.0  # neither limit: no progress


def test_other_schedules_ignore_the_time_fraction() -> None:
    for schedule in ("constant", "decay", "plateau"):
        optim = OptimConfig(schedule=schedule, lr=0.5)
        assert learning_rate(optim, 7, 0, time_fraction=0.8) == learning_rate(optim, 7, 100)


# -- the budget --------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_ends_at_the_first_tick_past_max_time() -> None:
    clock = FakeClock()
    budget = Budget(0, 10.0, read=clock)
    budget.start()
    ends = []
    for step in range(1, 6):
        clock.now += 2.0
        ends.append(budget.tick(step))
        assert budget.end_note(step) is None or step == 5
    assert ends == [False, False, False, False, True]  # 10 s after step 5
    assert (
        budget.ended(5)
        and budget.end_note(5) == "step 5: train.max_time reached (0:00:10 of training)"
    )


def test_the_budget_with_steps_ends_at_whichever_comes_first() -> None:
    clock = FakeClock()
    steps_first, time_first = Budget(3, 100.0, read=clock), Budget(100, 3.0, read=clock)
    for budget in (steps_first, time_first):
        budget.start()
    for step in range(1, 4):
        clock.now += 1.0
        assert [steps_first.tick(step), time_first.tick(step)] == [step == 3, step == 3]
    assert steps_first.end_note(3) is None  # the steps ended it, not the time
    assert time_first.end_note(3) is not None


def test_a_resumed_budget_goes_on_from_the_recorded_time() -> None:
    clock = FakeClock()
    first = Budget(0, 10.0, read=clock)
    first.start()
    for step in range(1, 5):
        clock.now += 1.5
        first.tick(step)
    recorded = first.elapsed  # what the checkpoint keeps as elapsed_s
    clock.now += 1000.0  # the time between the two processes is not training
    resumed = Budget(0, 10.0, elapsed_before=recorded, read=clock)
    resumed.start()
    assert resumed.follow() == first.follow() == recorded / 10.0  # the same fraction, exactly
    clock.now += 1.5
    resumed.tick(5)
    assert resumed.elapsed == pytest.approx(recorded + 1.5)


def test_seconds_left_and_expected_steps_follow_the_budget() -> None:
    clock = FakeClock()
    budget = Budget(0, 60.0, elapsed_before=20.0, read=clock)
    assert budget.seconds_left(40, pace=0.5) == 40.0  # the time budget's rest
    assert budget.expected_steps(40, pace=0.5) == 120  # 40 + 40 s at 0.5 s a step
    assert budget.expected_steps(40, pace=None) is None  # no pace yet
    both = Budget(100, 60.0, elapsed_before=20.0, read=clock)
    assert both.expected_steps(40, pace=0.5) == 100  # the step limit comes first
    assert both.seconds_left(40, pace=0.5) == 30.0
    steps = Budget(100, 0.0, read=clock)
    assert steps.expected_steps(40, pace=0.5) == 100 and steps.seconds_left(40, 0.5) == 30.0


def test_the_header_says_which_limits_hold() -> None:
    assert Budget(2000, 0.0).describe() == "2,000 steps"
    assert Budget(0, 600.0).describe() == "0:10:00 of training"
    both = Budget(2000, 600.0, elapsed_before=65.0).describe()
    assert both == "2,000 steps or 0:10:00 of training (0:01:05 used), whichever comes first,"


# -- the display -------------------------------------------------------------------------------


@pytest.fixture
def frozen_display_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The display's clock stands still, so that a busy machine cannot move its estimate."""
    import charlm.training.display as display_module

    now = time.perf_counter()
    monkeypatch.setattr(display_module.time, "perf_counter", lambda: now)


def test_plain_lines_show_the_budgets_step_estimate_and_its_rest(
    capsys: pytest.CaptureFixture, frozen_display_clock: None
) -> None:
    plain = Console(file=io.StringIO(), width=80)  # not a terminal
    budget = Budget(0, 100.0, elapsed_before=40.0, read=FakeClock())
    display = TrainingDisplay(0, 20, console=plain, budget=budget)
    display.started -= 8.0  # 30 steps in 8 s, 60 s of the budget left: about 225 steps more
    display.update(50, STATUS, is_log_step=True)
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"step 50/~275 {STATUS}"), line
    assert line.endswith(" 0:00:08 eta 0:01:00"), line  # the budget's rest


def test_the_bar_total_follows_the_time_budget(frozen_display_clock: None) -> None:
    terminal = Console(file=io.StringIO(), width=80, force_terminal=True)
    budget = Budget(0, 100.0, elapsed_before=40.0, read=FakeClock())
    display = TrainingDisplay(0, 20, console=terminal, budget=budget)
    try:
        display.started -= 8.0
        display.update(50, STATUS, is_log_step=True)
        task = display._progress.tasks[0]  # type: ignore[union-attr]
        assert (task.completed, task.total) == (50, 275)
    finally:
        display.close()


# -- a time-budgeted run -----------------------------------------------------------------------


def test_a_run_stops_at_its_time_saves_validates_and_records_elapsed(tmp_path: Path) -> None:
    corpus, run = write_corpus(tmp_path), tmp_path / "run"
    settings = overrides(
        "train.max_time=2s", "train.log_every=1", "train.eval_every=100000",
        "train.checkpoint_every=100000", "train.sample_every_eval=false", "optim.schedule=cosine",
    )  # fmt: skip
    started = time.perf_counter()
    result = train(run, text=corpus, overrides=settings, show_progress=False)
    assert time.perf_counter() - started < 60  # it stopped (2 s of training, loaded machine)
    records = of_kind(run, "train")
    assert result.steps == records[-1]["step"] > 1
    # Every tick before the last was inside the budget; the last one passed it.
    assert all(r["elapsed_s"] < 2.0 for r in records[:-1]) and records[-1]["elapsed_s"] >= 2.0
    saved = load_checkpoint(run, "latest")
    assert saved.step == result.steps and saved.info["elapsed_s"] == records[-1]["elapsed_s"]
    assert [r["step"] for r in of_kind(run, "val")] == [result.steps]  # validated at the end
    assert result.best_val_loss == of_kind(run, "val")[0]["val_loss"]
    # The rate of each step is the cosine at the fraction of the budget it followed.
    optim = build_config(overrides=["optim.schedule=cosine"]).optim
    for r in records:
        assert r["lr"] == learning_rate(optim, r["step"] - 1, 0, time_fraction=r["time_fraction"])
    fractions = [r["time_fraction"] for r in records]
    assert fractions == sorted(fractions) and fractions[-1] > 0.5
    assert records[-1]["lr"] < 0.5 * optim.lr


def test_the_cli_trains_for_a_time_and_reports_the_best(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    result = cli("train", corpus, "--out", tmp_path / "run", *TINY, "--set", "train.max_time=1s")
    assert result.exit_code == 0, result.stderr
    assert "0:00:01 of training on cpu" in result.stderr
    assert "train.max_time reached" in result.stderr
    assert "done:" in result.stdout + result.stderr and "best validation loss" in (
        result.stdout + result.stderr
    )


def test_train_help_says_how_max_time_and_max_steps_combine() -> None:
    result = cli("train", "--help")
    text = " ".join(result.stdout.split())
    assert "train.max_time" in text and "whichever comes first" in text, text


# -- exact resume --------------------------------------------------------------------------------


@pytest.fixture
def step_clock(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Training time that advances one second a training step and stands still otherwise;
    `stop_at`: raise SIGTERM in that step (the run stops, saved, after the next one)."""
    clock: dict = {"now": 0.0, "stop_at": None, "real": False}
    original = trainer_module.TrainStep

    class TimedStep(original):  # type: ignore[misc, valid-type]
        def __call__(self, *args: object, **kwargs: object) -> object:
            clock["now"] += 1.0
            if clock["stop_at"] == clock["now"]:
                signal.raise_signal(signal.SIGTERM)
            return super().__call__(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "TrainStep", TimedStep)
    real = budget_module.clock
    monkeypatch.setattr(budget_module, "clock", lambda: real() if clock["real"] else clock["now"])
    return clock


BUDGETED = ("train.max_time=30", "train.log_every=1", "optim.schedule=cosine",
            "model.dropout=0.3", "model.layers=2", "optim.warmup_steps=3")  # fmt: skip


def test_a_time_budgeted_resume_is_bit_exact_under_a_step_clock(
    tmp_path: Path, step_clock: dict
) -> None:
    corpus, straight, halves = write_corpus(tmp_path), tmp_path / "straight", tmp_path / "halves"
    assert (
        train(straight, text=corpus, overrides=overrides(*BUDGETED), show_progress=False).steps
        == 30
    )
    step_clock.update(now=0.0, stop_at=13.0)
    with pytest.raises(TrainingStopped) as stopped:
        train(halves, text=corpus, overrides=overrides(*BUDGETED), show_progress=False)
    assert stopped.value.exit_code == 143
    assert load_checkpoint(halves, "latest").info["elapsed_s"] == 14.0  # saved after step 14
    step_clock["stop_at"] = None
    resumed = train(halves, overrides=overrides(*BUDGETED), resume=True, show_progress=False)
    assert resumed.steps == 30
    a, b = weights(straight), weights(halves)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rates = [[(r["step"], r["lr"]) for r in of_kind(run, "train")] for run in (straight, halves)]
    assert rates[0] == rates[1] and len(rates[0]) == 30
    assert [r["val_loss"] for r in of_kind(straight, "val")] == [
        r["val_loss"] for r in of_kind(halves, "val") if r["step"] != 14
    ]


def test_a_resume_on_the_real_clock_continues_from_the_recorded_fraction(
    tmp_path: Path, step_clock: dict
) -> None:
    corpus, run = write_corpus(tmp_path), tmp_path / "run"
    settings = overrides(
        "train.max_time=3s", "train.log_every=1", "train.eval_every=100000",
        "train.sample_every_eval=false", "optim.schedule=cosine",
    )  # fmt: skip
    step_clock.update(real=True, stop_at=20.0)  # the stop by step count, the time real
    with pytest.raises(TrainingStopped):
        train(run, text=corpus, overrides=settings, show_progress=False)
    saved = load_checkpoint(run, "latest").info["elapsed_s"]
    step_clock["stop_at"] = None
    train(run, overrides=settings, resume=True, show_progress=False)
    records = of_kind(run, "train")
    first = next(r for r in records if r["step"] == 22)  # the resumed run's first step
    assert first["time_fraction"] == saved / 3.0  # exactly the recorded fraction
    rates = [r["lr"] for r in records]
    assert rates == sorted(rates, reverse=True)  # one cosine across the resume
    assert records[-1]["elapsed_s"] >= 3.0 and rates[-1] < 0.5 * rates[0]


# -- torchrun ------------------------------------------------------------------------------------

SKEWED_WORKER = """
import os, sys, time
import charlm.training.budget as budget
if os.environ["RANK"] == "1":  # rank 1's clock runs 5x fast: without agreement it ends first
    budget.clock = lambda: 5 * time.perf_counter()
from charlm.cli import app
sys.argv = ["charlm", *sys.argv[1:]]
app()
"""


@pytest.mark.slow
def test_processes_agree_on_rank_0s_clock(tmp_path: Path) -> None:
    from tests.test_distributed import TINY as DIST_TINY
    from tests.test_distributed import finish, launch

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(pattern_text(8000), encoding="utf-8")
    settings = [f"--set={item}" for item in [*DIST_TINY, "train.batch_size=4", "train.max_time=2"]]
    argv = ["-c", SKEWED_WORKER, "train", str(corpus), "--out", "run", "-q", *settings]
    codes, logs = finish(launch(argv, tmp_path), tmp_path)
    assert codes == [0, 0], logs
    records = of_kind(tmp_path / "run", "train")
    assert records[-1]["elapsed_s"] >= 2.0 > records[-2]["elapsed_s"]  # rank 0's time ended it
    assert math.isclose(records[-1]["time_fraction"], records[-2]["elapsed_s"] / 2.0)
