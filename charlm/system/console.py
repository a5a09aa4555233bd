"""Messages and progress on stderr: one-line messages, transient bars, time stamps."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

from rich.console import Console
from rich.progress import (
    DownloadColumn,
    Progress,
    TransferSpeedColumn,
)

stderr = Console(stderr=True)


def print_line(text: str) -> None:
    """A message on stderr: wrapped at the width of a terminal, one unbroken line elsewhere
    (rich would hard-wrap at 80 columns in a log file or CI output)."""
    stderr.print(
        text, highlight=False, markup=False, emoji=False, soft_wrap=not stderr.is_terminal
    )  # a path's "[x]" or ":x:" is text


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
