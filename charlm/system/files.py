"""Durable file writes: a temporary sibling, fsync, rename into place, fsync the folder.

One helper for every writer: each file or folder that charlm puts in place is first written
under another name in the same folder, fsynced, then renamed over the final name with
`os.replace` (atomic on POSIX), and the folder is fsynced so that the rename itself survives a
power cut: a reader, or a run killed at any moment, sees the old content or the new, never a
mixture. No other module calls `os.replace` or `os.rename` (tests/test_files.py checks it).
Errors are the OSErrors the OS raised, named by the file the caller asked for: callers turn
disk-full and permission errors into one-line messages (charlm.errors). Libraries that word the
OS's error their own way (safetensors, tokenizers, torch's zip writer) are turned back into that
OSError by `writing`; `check_destination` refuses a folder no file can be created in before any
work, and `remove_stale_temporaries` clears what a killed writer left beside its output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from charlm.errors import CharlmError, environment_error

# Rust's wording of an OS error (safetensors' SafetensorError, tokenizers' bare Exception):
# "... I/O error: No space left on device (os error 28)".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_WORDED = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT)
_TAGS = ("tmp", "probe")  # the temporaries' tags that remove_stale_temporaries may remove


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name beside `path` that this process may write it under: `.NAME.TAG-PID`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


# Windows flushes a file only through a handle that may write to it (FlushFileBuffers).
_FSYNC_FLAGS = os.O_RDWR if os.name == "nt" else os.O_RDONLY


def fsync_file(path: Path) -> None:
    """Flush a file's data and metadata to the disk."""
    fd = os.open(path, _FSYNC_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (the names created, renamed or removed in it) to the disk.

    Only where a folder can be opened (os.O_DIRECTORY: Linux, macOS, the BSDs); elsewhere
    (Windows) there is no such call, and the file system's own journal keeps the rename."""
    directory = getattr(os, "O_DIRECTORY", None)
    if directory is None:
        return
    fd = os.open(path, os.O_RDONLY | directory)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(temp: Path, final: Path) -> None:
    """Fsync `temp`, rename it to `final` (replacing a file there), fsync `final`'s folder.

    `temp` is a file or a folder; for a folder only the folder itself is fsynced here, its
    files are the caller's to fsync (`fsync_file`) before. Both must be in one file system."""
    if Path(temp).is_dir():
        fsync_dir(temp)
    else:
        fsync_file(temp)
    _rename_into_place(temp, final)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` whole so that readers see the old or the new content, never a mixture."""
    _write_via_temporary(Path(path), "wb", data)


def atomic_write_text(
    path: Path, text: str, encoding: str = "utf-8", newline: str | None = None
) -> None:
    """`atomic_write_bytes` for text; `encoding` and `newline` as for `Path.write_text`."""
    _write_via_temporary(Path(path), "w", text, encoding=encoding, newline=newline)


def _write_via_temporary(path: Path, mode: str, data: Any, **options: Any) -> None:
    """Write `data` to a temporary sibling, fsync it, rename it to `path`; on any failure the
    temporary is removed and `path` is left as it was (an OSError names `path`)."""
    temp = temporary_sibling(path)
    try:
        with writing(path), open(temp, mode, **options) as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        _rename_into_place(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _rename_into_place(temp: Path, final: Path) -> None:
    os.replace(temp, final)
    fsync_dir(Path(final).parent)


def write_together(folder: Path, contents: dict[str, bytes], remove: tuple[str, ...] = ()) -> None:
    """Put files that belong together into `folder` so that a kill at any moment leaves the
    old set or the new one: a new `folder` is written as a temporary sibling and renamed; in
    an existing one every file is written and fsynced under a temporary name first, then the
    names in `remove` go and the new files are renamed over the old, the last key last."""
    folder = Path(folder)
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        building = temporary_sibling(folder)
        shutil.rmtree(building, ignore_errors=True)
        try:
            with writing(folder):
                building.mkdir()
                _write_set(building, contents, ())
                replace_durably(building, folder)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        return
    with writing(folder):
        _write_set(folder, contents, remove)


def _write_set(folder: Path, contents: dict[str, bytes], remove: tuple[str, ...]) -> None:
    temps = {name: temporary_sibling(folder / name) for name in contents}
    try:
        for name, data in contents.items():
            remove_stale_temporaries(folder / name)
            with open(temps[name], "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        for name in remove:
            (folder / name).unlink(missing_ok=True)
        for name in contents:
            os.replace(temps[name], folder / name)
        fsync_dir(folder)
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)


def as_os_error(exc: BaseException, path: Path | str) -> OSError | None:
    """The OS's error behind a failed write of `path`, as an OSError naming `path`; None when
    `exc` is no such error.

    safetensors and tokenizers word it as Rust does ("... (os error 28)"), torch's zip writer
    with the OS's own words ("open file failed with strerror: No such file or directory"); an
    OSError that lacks an errno (numpy's tofile) is not the OS's. An OSError that names a file
    keeps that name unless it is a temporary (`_shown_name`)."""
    if isinstance(exc, OSError):
        if not exc.errno:
            return None
        return OSError(exc.errno, exc.strerror, _shown_name(exc.filename, Path(path)))
    text = str(exc)
    found = _RUST_OS_ERROR.search(text)
    code = int(found.group(1)) if found else None
    if code is None:
        code = next((c for c in _WORDED if os.strerror(c).lower() in text.lower()), None)
    return OSError(code, os.strerror(code), str(path)) if code else None


def _shown_name(filename: Any, path: Path) -> str:
    """`filename` when the user knows it; `path` when there is none, or when it is a hidden
    temporary (it, or a folder it is in, starts with "." beside or below `path`)."""
    if not isinstance(filename, str):
        return str(path)
    inside = os.path.relpath(os.path.abspath(filename), os.path.abspath(path.parent))
    parts = Path(inside).parts
    if parts and parts[0] != os.pardir and any(part.startswith(".") for part in parts):
        return str(path)
    return filename


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Inside, a failure to write is raised as the OSError the OS gave (`as_os_error`), naming
    the file the user knows (`path` for a temporary's); any other exception passes unchanged."""
    try:
        yield
    except Exception as exc:
        found = as_os_error(exc, path)
        if found is None:
            raise
        raise found from exc


@contextlib.contextmanager
def refusing(path: Path | str, fix: str) -> Iterator[None]:
    """`writing`, then any OSError as `write_refusal`'s one-line CharlmError (for writers of a
    file the user named, whose every failure is the user's to fix)."""
    try:
        with writing(path):
            yield
    except OSError as exc:
        raise write_refusal(exc, fix) from exc


def write_refusal(exc: OSError, fix: str) -> CharlmError:
    """A one-line error for an OSError met writing `exc.filename`: charlm.errors' wording for
    disk full, read-only and permissions, else the OS's reason and `fix`. Said once the partial
    output is gone, so a full disk's free space is what that removal gave back."""
    found = environment_error(exc)
    if found is not None and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CharlmError(
            str(found).replace(" free)", " free once the partial output was removed)")
        )
    if found is not None:
        return found
    where = Path(exc.filename or "the file")
    reason = exc.strerror or type(exc).__name__
    return CharlmError(f"{where}: cannot be written in {where.parent} ({reason}); {fix}")


def check_destination(path: Path, fix: str) -> None:
    """Refuse, before any work, a `path` whose folder (or nearest existing ancestor, for a
    folder still to be made) takes no new file: a file is created there and removed again."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CharlmError(f"{path}: {folder} is not a folder; {fix}")
    probe = temporary_sibling(folder / path.name, "probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        pass
    except OSError as exc:
        raise write_refusal(OSError(exc.errno, exc.strerror, str(path)), fix) from None
    probe.unlink(missing_ok=True)


def remove_stale_temporaries(path: Path) -> None:
    """Remove what killed writers left beside `path`: its `temporary_sibling`s (and
    `check_destination`'s probes) named by a process that is gone. A live process's stay."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    prefix = f".{path.name}."
    for entry in path.parent.iterdir():
        tag, _, pid = entry.name[len(prefix) :].rpartition("-")
        if not entry.name.startswith(prefix) or tag not in _TAGS or not pid.isdigit():
            continue
        if _alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name != "posix":  # Windows' os.kill(pid, 0) sends Ctrl-C: no probe, keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or we may not ask: treat it as alive
        return True
    return True
