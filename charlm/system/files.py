"""Durable file writes: a temporary sibling, fsync, rename into place, fsync the folder.

One helper for every writer: each file or folder that charlm puts in place is first written
under another name in the same folder, fsynced, then renamed over the final name with
`os.replace` (atomic on POSIX), and the folder is fsynced so that the rename itself survives a
power cut: a reader, or a run killed at any moment, sees the old content or the new, never a
mixture. No other module calls `os.replace` or `os.rename` (tests/test_files.py checks it).
Errors are the OSErrors the OS raised: callers turn disk-full and permission errors into
one-line messages (charlm.errors).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name beside `path` that this process may write it under: `.NAME.TAG-PID`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def fsync_file(path: Path) -> None:
    """Flush a file's (or a folder's own) data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (the names created, renamed or removed in it) to the disk."""
    fsync_file(path)


def replace_durably(temp: Path, final: Path) -> None:
    """Fsync `temp`, rename it to `final` (replacing a file there), fsync `final`'s folder.

    `temp` is a file or a folder; for a folder only the folder itself is fsynced here, its
    files are the caller's to fsync (`fsync_file`) before. Both must be in one file system."""
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
    temporary is removed and `path` is left as it was."""
    temp = temporary_sibling(path)
    try:
        with open(temp, mode, **options) as file:
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
