"""Error types that the command line turns into one-line messages and exit codes."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class CharlmError(Exception):
    """A failure the user can fix; its message names the file, key or value and the way out."""

    exit_code = 1


class UsageError(CharlmError):
    """Bad options, settings or arguments (exit code 2)."""

    exit_code = 2


class ArgumentError(UsageError, ValueError):
    """An argument with a value it cannot take (also a ValueError): the message names the
    Python argument from the API (`length must be at least 1 (got -3)`), the option from the
    command line (`--length must be at least 1 (got -3)`)."""


class ArgumentTypeError(UsageError, TypeError):
    """A Python API argument of a type it cannot take (also a TypeError); the message names the
    function and the argument (`score() takes text as a str, got int`)."""


class ConfigError(UsageError):
    """A config file or `--set` override that cannot be used as written."""


class DataError(CharlmError):
    """Input text or prepared data that cannot be read or used."""


class InputTooLarge(DataError):
    """An input past the size charlm reads it to (a prime, a stream copied to disk, a CSV line,
    a text scored in memory); the message names the input, the limit and the way out."""


class CheckpointError(CharlmError):
    """A run directory or checkpoint that is missing, damaged or of another format."""


class PeerFailure(CharlmError):
    """Another process of a data-parallel job died or hung; this one must leave at once.

    The process group is broken, so the interpreter's normal teardown (the backend's threads
    and destructors) can abort with a C++ "terminate called" instead of the exit code: the
    command line reports it and then ends the process without that teardown.
    """


class TrainingStopped(CharlmError):
    """Training ended early on purpose (a signal, too many bad steps); the run can be resumed."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_type(
    value: object, kinds: type | tuple[type, ...], what: str, name: str, caller: str
) -> None:
    """Refuse `value` unless it is an instance of `kinds` (a bool counts as a number only where
    `kinds` names bool): ArgumentTypeError "CALLER() takes NAME as WHAT, got TYPE"."""
    allowed = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool)):
        return
    raise ArgumentTypeError(f"{caller}() takes {name} as {what}, got {type(value).__name__}")


# What an OSError from the environment means for the user, by errno: (problem, fix).
_ENVIRONMENT = {
    errno.ENOSPC: ("no space left on the device", "free some space, then run the command again"),
    errno.EDQUOT: ("disk quota exceeded", "free some space, then run the command again"),
    errno.EROFS: ("read-only file system", "write to a writable folder"),
    errno.EACCES: ("permission denied", "fix the permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "fix the permissions or choose another path"),
}


def human_bytes(count: float) -> str:
    """1234567 -> '1.2 MB' (decimal units)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000:
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1000
    return f"{count:,.1f} TB"


def free_space(path: Path | str | None) -> str:
    """'N MB free' on the file system holding `path` (or its nearest existing parent)."""
    folder = Path(path or ".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f"{human_bytes(shutil.disk_usage(folder).free)} free"
    except OSError:
        return "free space unknown"


def environment_error(exc: OSError) -> CharlmError | None:
    """An OSError that the machine caused (disk full, read-only, permissions) as a one-line
    CharlmError naming the file and the fix; None for any other OSError."""
    if exc.errno not in _ENVIRONMENT:
        return None
    problem, fix = _ENVIRONMENT[exc.errno]
    where = exc.filename or "a file"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        problem += f" ({free_space(exc.filename)})"
    return CharlmError(f"{where}: {problem}; {fix}")
