"""Error types that the command line turns into one-line messages and exit codes."""

from __future__ import annotations


class CharlmError(Exception):
    """A failure the user can fix; its message names the file, key or value and the way out."""

    exit_code = 1


class UsageError(CharlmError):
    """Bad options, settings or arguments (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A config file or `--set` override that cannot be used as written."""


class DataError(CharlmError):
    """Input text or prepared data that cannot be read or used."""


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
