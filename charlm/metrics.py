"""Training records (`RUN_DIR/metrics.jsonl`, one JSON object per line) and the progress display."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr = Console(stderr=True)


class MetricsLog:
    """Append-only JSONL; each record is flushed so a crash loses at most the line being written.

    Training records: kind="train", step, loss, lr, grad_norm (before clipping), clipped_fraction,
    tokens_per_s, elapsed_s, and `warning` when the loss exploded. Validation records:
    kind="val", step, val_loss, val_perplexity, val_bits_per_char. Each start (and resume) of
    training: kind="start", step, seed, resumed. Records past `truncate_after` (a resumed run's checkpoint step) are dropped
    first, so a resumed run's log reads as if it had never stopped.
    """

    def __init__(self, path: Path, truncate_after: int | None = None, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
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
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()


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


class TrainingDisplay:
    """A rich progress bar on a terminal; a plain line every `log_every` steps elsewhere.

    Rich prints only the final bar when stderr is not a terminal, so CI logs would show nothing.
    """

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.is_terminal = stderr.is_terminal
        self.total = total_steps
        self._progress: Progress | None = None
        if enabled and self.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=stderr,
            )
            self._task = self._progress.add_task(
                "train", total=total_steps, completed=start_step, status=""
            )
            self._progress.start()

    def update(self, step: int, status: str, is_log_step: bool) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=step, status=status)
        elif is_log_step:
            print(f"step {step}/{self.total} {status}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
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
