"""Training records (`RUN_DIR/metrics.jsonl`, one JSON object per line) and the progress display."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column
from rich.text import Text

stderr = Console(stderr=True)


def print_line(text: str) -> None:
    """A message on stderr: wrapped at the width of a terminal, one unbroken line elsewhere
    (rich would hard-wrap at 80 columns in a log file or CI output)."""
    stderr.print(text, highlight=False, soft_wrap=not stderr.is_terminal)


def utc_now() -> str:
    """The wall-clock time as ISO 8601 UTC to the millisecond, e.g. 2026-12-01T12:30:05.123+00:00
    (`datetime.fromisoformat` reads it back, on Python 3.10 too)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def clock(seconds: float) -> str:
    """h:mm:ss, as rich's progress bar shows elapsed time and ETA."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@contextlib.contextmanager
def progress_bar(
    description: str,
    total: int | None,
    *,
    enabled: bool = True,
    unit: str = "characters",
    transfer: bool = False,
    plain_line: bool = True,
) -> Iterator[Callable[[int], None]]:
    """A transient rich bar on stderr in a terminal, yielding `advance(n)`; off a terminal a
    plain line saying what starts (when `plain_line`) and a no-op. `transfer`: show bytes and
    speed (downloads). Training's own bar is `TrainingDisplay`."""
    if not enabled:
        yield lambda n: None
        return
    if not sys.stderr.isatty():
        if plain_line:
            print(f"{description} ({total:,} {unit})", file=sys.stderr, flush=True)
        yield lambda n: None
        return
    columns = (*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
    with Progress(
        *(columns if transfer else ()), console=Console(stderr=True), transient=True
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def train_record(
    step: int,
    epoch: int,
    loss: float,
    lr: float,
    grad_norm: float,
    clipped_fraction: float,
    bad_steps: int,
    tokens_per_s: float,
    elapsed_s: float,
    threads: int,
    tokens: int | None = None,
) -> dict[str, Any]:
    """A "train" record, every train.log_every steps: the mean training loss (nats per token)
    since the last record, the learning rate, the last good step's gradient norm before
    clipping, the fraction of steps since the last record that were clipped, the non-finite
    steps skipped so far, tokens per second since the last record, seconds of training so far
    (continued across resumes: the checkpoint keeps it), the CPU threads it trained with
    (train.threads, charlm/threads.py), and the training targets read so far (every process,
    continued across resumes; null after resuming a checkpoint from before charlm 0.2)."""
    return {
        "kind": "train",
        "step": step,
        "epoch": epoch,
        "loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "clipped_fraction": clipped_fraction,
        "bad_steps": bad_steps,
        "tokens_per_s": tokens_per_s,
        "elapsed_s": elapsed_s,
        "threads": threads,
        "tokens": tokens,
    }


def val_record(
    step: int,
    val_loss: float,
    val_perplexity: float,
    val_bits_per_char: float,
    grad_norm_layers: list[float | None],
    elapsed_s: float,
    tokens: int | None = None,
) -> dict[str, Any]:
    """A "val" record, every train.eval_every steps and at the end: the validation loss (nats
    per token), its perplexity and bits per character, and each recurrent layer's gradient norm
    (before clipping, null if not finite) at the step just before; elapsed_s and tokens as in
    `train_record`."""
    return {
        "kind": "val",
        "step": step,
        "val_loss": val_loss,
        "val_perplexity": val_perplexity,
        "val_bits_per_char": val_bits_per_char,
        "grad_norm_layers": grad_norm_layers,
        "elapsed_s": elapsed_s,
        "tokens": tokens,
    }


class MetricsLog:
    """Append-only JSONL; each record is flushed so a crash loses at most the line being written.

    The records are `train_record`'s and `val_record`'s (non-finite numbers are written as
    null; a train record carries `warning` when the loss exploded), kind="sample" records (the
    text generated at an evaluation, evalsample.py), and at each start or resume of training one
    kind="start" record (step, seed, resumed). Every record gets `time`, the wall clock when it
    was written (`utc_now`). Records past `truncate_after` (a resumed run's checkpoint step) are
    dropped first, so a resumed run's log reads as if it had never stopped. `mirror` (an object
    with `write(record)` and `close()`, such as tblog.TensorBoardLog) gets every record too.
    """

    def __init__(
        self,
        path: Path,
        truncate_after: int | None = None,
        enabled: bool = True,
        mirror: Any = None,
    ) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.mirror = mirror
        if not enabled:
            return
        if truncate_after is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= truncate_after]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        clean.setdefault("time", utc_now())
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self.mirror is not None:
            self.mirror.write(clean)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
        if self.mirror is not None:
            self.mirror.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics file; a torn last line (killed writer) is skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


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
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        enabled: bool = True,
        console: Console | None = None,
    ) -> None:
        self.enabled = enabled
        self.console = console or stderr
        self.is_terminal = self.console.is_terminal
        self.total, self.start_step = total_steps, start_step
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
                "train", total=total_steps, completed=start_step, status=""
            )
            self._progress.start()

    def update(self, step: int, status: str | None, is_log_step: bool) -> None:
        """Move to `step`; a new `status` replaces the shown one, None keeps it."""
        if not self.enabled:
            return
        if self._progress is not None:
            fields = {} if status is None else {"status": status}
            self._progress.update(self._task, completed=step, **fields)
        elif is_log_step:
            line = f"step {step}/{self.total} {status or ''}  {self.timing(step)}"
            print(line, file=sys.stderr, flush=True)

    def timing(self, step: int) -> str:
        """ "elapsed 0:01:05  eta 0:10:30": this process's time so far, and the rest at its pace."""
        elapsed = time.perf_counter() - self.started
        done = step - self.start_step
        eta = clock(elapsed / done * (self.total - step)) if done > 0 else "-:--:--"
        return f"elapsed {clock(elapsed)}  eta {eta}"

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
