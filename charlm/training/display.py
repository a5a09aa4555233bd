"""The training display: a rich bar on a terminal, plain time-stamped lines elsewhere."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

from charlm.system.console import clock, stderr
from charlm.training.budget import Budget


class _StatusColumn(ProgressColumn):
    """The last logged status on one line, cut with "…" when the terminal is narrow: it gives
    way first, so the step count, elapsed time and ETA stay whole at 80 columns."""

    def render(self, task: Task) -> Text:
        return Text(task.fields.get("status", ""), no_wrap=True, overflow="ellipsis")


class TrainingDisplay:
    """A rich progress bar on a terminal; a plain line every `log_every` steps elsewhere.

    Rich prints only the final bar when stderr is not a terminal, so CI logs would show nothing.
    The bar keeps the last logged status (loss, speed) until the next log step; the plain lines
    carry elapsed time and ETA as the bar does. `console`: where the bar goes (stderr).
    With a time `budget` (budget.py) the total is the step the budget reaches at this pace, and
    the ETA the budget's rest.
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        enabled: bool = True,
        console: Console | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.enabled = enabled
        self.console = console or stderr
        self.is_terminal = self.console.is_terminal
        self.total, self.start_step = total_steps, start_step
        self.budget = budget or Budget(total_steps, 0.0)
        self.started = time.perf_counter()
        self._progress: Progress | None = None
        if enabled and self.is_terminal:
            fixed = Column(no_wrap=True)
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(bar_width=16),
                MofNCompleteColumn(table_column=fixed),
                _StatusColumn(),
                TimeElapsedColumn(table_column=fixed),
                TextColumn("eta", table_column=fixed),
                TimeRemainingColumn(table_column=fixed),
                console=self.console,
            )
            self._task = self._progress.add_task(
                "train", total=self._total(start_step), completed=start_step, status=""
            )
            self._progress.start()

    def update(self, step: int, status: str | None, is_log_step: bool) -> None:
        """Move to `step`; a new `status` replaces the shown one, None keeps it."""
        if not self.enabled:
            return
        if self._progress is not None:
            fields = {} if status is None else {"status": status}
            self._progress.update(self._task, completed=step, total=self._total(step), **fields)
        elif is_log_step:
            total = self._total(step)
            shown = "?" if total is None else f"~{total}" if self.budget.max_time else total
            line = f"step {step}/{shown} {status or ''}  {self.timing(step)}"
            print(line, file=sys.stderr, flush=True)

    def timing(self, step: int) -> str:
        """ "elapsed 0:01:05  eta 0:10:30": this process's time so far, and the rest at its pace
        (or the time budget's rest, if sooner)."""
        elapsed = time.perf_counter() - self.started
        left = self.budget.seconds_left(step, self._pace(step))
        eta = clock(left) if left is not None else "-:--:--"
        return f"elapsed {clock(elapsed)}  eta {eta}"

    def _pace(self, step: int) -> float | None:
        """Seconds a step in this process so far."""
        done = step - self.start_step
        return (time.perf_counter() - self.started) / done if done > 0 else None

    def _total(self, step: int) -> int | None:
        """The run's steps (budget.py: an estimate with a time budget; None: not yet known)."""
        return self.budget.expected_steps(step, self._pace(step))

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:  # markup off: a sample's "[...]" is text
            self._progress.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class Throughput:
    """Tokens per second over the steps since the last reading."""

    def __init__(self) -> None:
        self._t = time.perf_counter()
        self._tokens = 0

    def add(self, tokens: int) -> None:
        self._tokens += tokens

    def read(self) -> float:
        now = time.perf_counter()
        rate = self._tokens / max(now - self._t, 1e-9)
        self._t, self._tokens = now, 0
        return rate
