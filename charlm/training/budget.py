"""The run's budget: where training ends (train.max_steps or epochs as a step count,
train.max_time as seconds of training time, whichever comes first) and how far along it is.

Training time is the loop's wall time, the periodic evaluations, samples and checkpoints
included, continued across resumes from the checkpoint's elapsed_s (what metrics.jsonl's
elapsed_s counts); the evaluation and save at the end come after it, so a command takes about
the budget plus its start-up and that last evaluation.

Exact resume: the clock is read once per step, after the step and before its log, evaluation and
save (`tick`). That reading decides whether the run ends there, is the fraction of train.max_time
that the next step's learning rate follows, and is the elapsed_s a checkpoint saved at that step
records. A resumed run starts from it, so its first step follows the fraction the uninterrupted
run's did, bit for bit, and the time left is the budget less that reading. Later steps follow
the time they take: two runs with one max_time differ in their steps, and a resumed one in the
time the interrupted step's evaluation and save took (not counted). With the clock replaced by
one that advances per step (as tests/test_time_budget.py sets `clock`), a time-budgeted run and its resume give the
same weights bit for bit. Under torchrun every process takes rank 0's reading, so that all
agree on the rate and the step the run ends at.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from charlm.system.console import clock as hms
from charlm.system.distributed import DistContext

Clock = Callable[[], float]
clock: Clock = time.perf_counter  # what measures training time; a test may set its own


class Budget:
    """Steps (`total_steps`, 0: no step limit) and seconds (`max_time`, 0: none) of one run;
    `elapsed` is the training time at the last tick, starting from `elapsed_before` (resume)."""

    def __init__(
        self,
        total_steps: int,
        max_time: float,
        elapsed_before: float = 0.0,
        agree: Callable[[float], float] | None = None,
        read: Clock | None = None,
    ) -> None:
        self.total_steps, self.max_time = total_steps, max_time
        self.elapsed = self._last = elapsed_before
        self.followed = self.time_fraction()  # what the last step's learning rate followed
        self._agree = agree
        self._read = read or clock
        self._origin = self._read() - elapsed_before

    def start(self) -> None:
        """The loop begins: training time goes on from `elapsed` (the time before is not counted)."""
        self._origin = self._read() - self.elapsed

    def now(self) -> float:
        """Training time at this moment (for records; decisions use the ticks)."""
        return self._read() - self._origin

    def tick(self, step: int) -> bool:
        """After `step` steps: read the training time (rank 0's); True when the run ends here."""
        reading = self.now()
        self._last, self.elapsed = self.elapsed, self._agree(reading) if self._agree else reading
        return self.ended(step)

    def ended(self, step: int) -> bool:
        return 0 < self.total_steps <= step or self.time_is_up()

    def time_is_up(self) -> bool:
        return 0 < self.max_time <= self.elapsed

    def time_fraction(self) -> float:
        """The fraction of train.max_time used at the last tick (0 without a time budget)."""
        return min(1.0, self.elapsed / self.max_time) if self.max_time else 0.0

    def follow(self) -> float:
        """The fraction the next step's learning rate follows (recorded as time_fraction)."""
        self.followed = self.time_fraction()
        return self.followed

    def may_end(self, step: int) -> bool:
        """Whether the run may end after `step` steps: the step count, or a time budget that
        the last step's pace would spend by then."""
        pace = self.elapsed - self._last
        return 0 < self.total_steps <= step or 0 < self.max_time <= self.elapsed + 2 * pace

    def expected_steps(self, step: int, pace: float | None) -> int | None:
        """The steps the run will have: the step count, or with a time budget `step` plus the
        steps the rest of it holds at `pace` seconds a step (None before a pace is known)."""
        if not self.max_time:
            return self.total_steps
        if pace is None or pace <= 0:
            return self.total_steps or None
        estimate = step + round(max(0.0, self.max_time - self.elapsed) / pace)
        return min(estimate, self.total_steps) if self.total_steps else estimate

    def seconds_left(self, step: int, pace: float | None) -> float | None:
        """Seconds until the end: the time budget's rest, or the steps left at `pace` seconds
        a step (this process's), whichever is sooner; None when neither is known."""
        left = [max(0.0, self.max_time - self.elapsed)] if self.max_time else []
        if self.total_steps and pace is not None:
            left.append(pace * max(0, self.total_steps - step))
        return min(left) if left else None

    def record(self) -> dict[str, float]:
        """A train record's budget field: the fraction of train.max_time its step followed."""
        return {"time_fraction": self.followed} if self.max_time else {}

    def describe(self) -> str:
        """The header's "2,000 steps", "0:10:00 of training" or both, whichever comes first."""
        parts = [f"{self.total_steps:,} steps"] if self.total_steps else []
        if self.max_time:
            used = f" ({hms(self.elapsed)} used)" if self.elapsed else ""
            parts.append(f"{hms(self.max_time)} of training{used}")
        return " or ".join(parts) + (", whichever comes first," if len(parts) > 1 else "")

    def end_note(self, step: int) -> str | None:
        """The line that says the time budget ended the run (None: it did not)."""
        if not self.time_is_up() or 0 < self.total_steps <= step:
            return None
        return f"step {step}: train.max_time reached ({hms(self.elapsed)} of training)"


def rank0_reading(dist: DistContext, max_time: float) -> Callable[[float], float] | None:
    """Under torchrun with a time budget: every process takes rank 0's clock reading."""
    if not dist.is_distributed or not max_time:
        return None

    def agree(reading: float) -> float:
        return float(dist.all_gather(torch.tensor([reading], dtype=torch.float64))[0, 0])

    return agree
