"""One trainer per run directory: an OS file lock that the system drops when its holder dies."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any

from charlm.errors import UsageError
from charlm.system.files import atomic_write_text

LOCK_FILE = "trainer.lock"  # what the lock is taken on; it stays (empty) once a run has trained
PID_FILE = "trainer.pid"  # the holder's pid, for the second trainer's message (advisory only)


class RunLock:
    """An exclusive OS lock on `RUN/trainer.lock`, held while `train` runs.

    Taken through filelock, which locks the way each system does: `flock` on Linux and macOS,
    `msvcrt.locking` on Windows. The OS releases the lock when the process ends in any way
    (kill -9 included), so a stale lock cannot exist. The lock file is empty and stays in the
    run directory, so a refused second trainer leaves every file as it was. `trainer.pid` only
    names the holder in the refusal (Windows lets no other process read a locked file); it is
    rewritten by each trainer that gets the lock.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._lock: Any = None

    def __enter__(self) -> RunLock:
        # Imported here: only `train` locks, so sampling, evaluation and `charlm.load` never
        # import it.
        from filelock import FileLock, Timeout

        lock = FileLock(self.run_dir / LOCK_FILE, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise UsageError(
                f"{self.run_dir}: another trainer ({holder(self.run_dir)}) is training this run; "
                "wait for it to finish (or stop it), or train into another --out"
            ) from None
        self._lock = lock
        try:
            atomic_write_text(self.run_dir / PID_FILE, f"{os.getpid()}\n")
        except BaseException:
            lock.release()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._lock is not None:
            (self.run_dir / PID_FILE).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None


def holder(run_dir: Path) -> str:
    """'pid N' of the trainer holding the run's lock, as far as its pid file tells."""
    try:
        pid = int((Path(run_dir) / PID_FILE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return "pid unknown"
    return f"pid {pid}"
