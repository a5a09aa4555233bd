"""One trainer per run directory: an OS-level lock that the kernel drops when its holder dies."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from charlm.errors import UsageError
from charlm.system.files import atomic_write_text

PID_FILE = "trainer.pid"  # the holder's pid, for the second trainer's message (advisory only)


class RunLock:
    """An exclusive `flock` on the run directory itself, held while `train` runs.

    The lock lives on the open directory, not in a lock file, so taking it writes nothing and a
    refused second trainer leaves every file as it was; the kernel releases it when the process
    ends in any way (kill -9 included), so a stale lock cannot exist. `trainer.pid` only names the
    holder in the refusal; it is rewritten by each trainer that gets the lock.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(
                f"{self.run_dir}: another trainer ({holder(self.run_dir)}) is training this run; "
                "wait for it to finish (or stop it), or train into another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        atomic_write_text(self.run_dir / PID_FILE, f"{os.getpid()}\n")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            (self.run_dir / PID_FILE).unlink(missing_ok=True)
            os.close(self._fd)  # closing the last descriptor releases the lock
            self._fd = None


def holder(run_dir: Path) -> str:
    """'pid N' of the trainer holding the run's lock, as far as its pid file tells."""
    try:
        pid = int((Path(run_dir) / PID_FILE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return "pid unknown"
    return f"pid {pid}"
