"""The `charlm` app itself: its groups, --version and --debug, error handling, `say`, `main`."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from charlm._version import __version__
from charlm.errors import CharlmError, PeerFailure, TrainingStopped, environment_error

app = typer.Typer(
    name="charlm",
    help="Train, sample and evaluate character- and word-level recurrent language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # charlm --install-completion (bash, zsh, fish, PowerShell)
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Public corpora and synthetic tasks.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect settings without running anything.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")

_debug = {"on": False}
F = TypeVar("F", bound=Callable[..., Any])


def say(message: str) -> None:
    """A message for people: stderr, so stdout stays clean for results."""
    print(message, file=sys.stderr, flush=True)


def is_main_process() -> bool:
    """Under torchrun only rank 0 speaks for the job; alone, this process is rank 0."""
    return os.environ.get("RANK", "0") == "0"


def _leave(code: int) -> None:
    """End this process now with `code`, without the interpreter's teardown.

    Under torchrun, gloo's threads sometimes abort the process at exit ("terminate called
    without an active exception", exit -6) after a run that ended cleanly (1 in ~25 runs of the
    signal test here), and always may after a peer died. Everything charlm writes is closed and
    synced by then; only the standard streams need flushing.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def handle_errors(func: F) -> F:
    """Known errors become one line and their exit code; tracebacks only with --debug.

    Under torchrun the process then ends at once with that code (see `_leave`)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "RANK" not in os.environ:
            return _handled(*args, **kwargs)
        try:
            _handled(*args, **kwargs)
        except typer.Exit as exit_:
            _leave(exit_.exit_code)
        _leave(0)

    @functools.wraps(func)
    def _handled(*args: Any, **kwargs: Any) -> Any:
        try:
            result = func(*args, **kwargs)
            sys.stdout.flush()  # here, so that a closed pipe is answered below, not at exit
            return result
        except CharlmError as exc:
            if _debug["on"]:
                traceback.print_exc()
            if isinstance(exc, TrainingStopped) and not is_main_process():
                raise typer.Exit(exc.exit_code) from None  # every rank stops; rank 0 says why
            lines = str(exc).splitlines() or [type(exc).__name__]
            kind = "stopped" if isinstance(exc, TrainingStopped) else "error"
            for line in lines:
                say(f"charlm: {kind}: {line}")
            if isinstance(exc, PeerFailure):
                _leave(exc.exit_code)  # skip the broken process group's teardown (it aborts)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            say("charlm: interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:  # `charlm sample ... | head`: the reader has all it wanted
            _silence_stdout()
            raise typer.Exit(0) from None
        except OSError as exc:  # disk full, read-only, permissions: the machine, not a bug
            found = environment_error(exc)
            if found is None:
                raise _internal_error(exc) from None
            if _debug["on"]:
                traceback.print_exc()
            say(f"charlm: error: {found}")
            raise typer.Exit(found.exit_code) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug, or an environment problem we did not foresee
            raise _internal_error(exc) from None

    return wrapper  # type: ignore[return-value]


def _internal_error(exc: Exception) -> typer.Exit:
    if _debug["on"]:
        traceback.print_exception(exc)
    first = str(exc).splitlines()[0] if str(exc) else ""
    say(f"charlm: internal error: {type(exc).__name__}: {first} (rerun with --debug for details)")
    return typer.Exit(1)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush into the closed pipe is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (an in-process test runner)
        pass


def _flag_type(self: Any, ctx: Any) -> str | None:
    """Boolean flags take no value, so their help shows none (typer would show `<bool>`, which
    reads as if `--resume true` were the way to write it)."""
    if getattr(self, "is_flag", False):
        return None
    return _typer_type(self, ctx)


# The hook is typer's since it vendors click (0.26+); an older typer keeps its own display.
_typer_type = getattr(typer.core.TyperOption, "display_type_rich", None)
if _typer_type is not None:
    typer.core.TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


def _version(value: bool) -> None:
    if value:
        print(f"charlm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    # Set on every invocation: an in-process caller (tests, scripts) may run several commands.
    _debug["on"] = debug or os.environ.get("CHARLM_DEBUG", "") not in ("", "0")


def main() -> None:
    """The `charlm` console script (and `python -m charlm`)."""
    app(prog_name="charlm")
