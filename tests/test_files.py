"""Durable writes (charlm/system/files.py): whole content, nothing torn or left behind, fsyncs,
and no writer in the package that renames files by itself."""

from __future__ import annotations

import ast
import errno
import functools
import os
from pathlib import Path
from typing import IO

import pytest

from charlm.system import files
from charlm.system.files import (
    atomic_write_bytes,
    atomic_write_text,
    replace_durably,
    temporary_sibling,
)

PACKAGE = Path(__file__).resolve().parents[1] / "charlm"


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The inodes of everything os.fsync is called on, in order."""
    inodes: list[int] = []
    real = os.fsync

    def record(fd: int) -> None:
        inodes.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return inodes


def test_the_content_arrives_whole(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    atomic_write_bytes(path, b"\x00\x01" * 100_000)
    assert path.read_bytes() == b"\x00\x01" * 100_000
    atomic_write_bytes(path, b"short")  # a shorter rewrite leaves no tail of the old
    assert path.read_bytes() == b"short"
    text = tmp_path / "a.txt"
    atomic_write_text(text, "line\nü\n")
    assert text.read_text(encoding="utf-8") == "line\nü\n"
    atomic_write_text(text, "a\nb", newline="")
    assert text.read_bytes() == b"a\nb"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "data.bin"]


def test_the_temporary_is_a_hidden_sibling_named_by_the_process(tmp_path: Path) -> None:
    temp = temporary_sibling(tmp_path / "latest.json")
    assert temp.parent == tmp_path
    assert temp.name.startswith(".latest.json.") and str(os.getpid()) in temp.name


def _disk_full(*args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


class _TornFile:
    """A file whose write stores a few bytes, then finds the disk full."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file

    def __enter__(self) -> _TornFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def write(self, data: bytes) -> None:
        self.file.write(data[:10])
        _disk_full()


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "best.json"
    path.write_bytes(b'{"name": "step-00000010"}')
    before = path.read_bytes()
    if failing == "write":
        torn = functools.partial(lambda real, *a, **k: _TornFile(real(*a, **k)), open)
        monkeypatch.setattr(files, "open", torn, raising=False)  # the module's `open`
    else:
        monkeypatch.setattr(os, failing, _disk_full)
    with pytest.raises(OSError) as raised:
        atomic_write_bytes(path, b"x" * 100)
    assert raised.value.errno == errno.ENOSPC  # the OSError as raised: callers word it
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.json"]


def test_text_that_cannot_be_encoded_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old", encoding="utf-8")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "ü", encoding="ascii")
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_the_file_and_its_folder_are_fsynced(tmp_path: Path, synced: list[int]) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n", encoding="utf-8")
    atomic_write_text(path, "new\n")
    file_inode, folder_inode = path.stat().st_ino, tmp_path.stat().st_ino
    assert synced == [file_inode, folder_inode]  # the data first, then the rename


def test_a_file_written_aside_is_replaced_durably(tmp_path: Path, synced: list[int]) -> None:
    temp, final = tmp_path / ".train.bin.tmp", tmp_path / "train.bin"
    temp.write_bytes(b"ids")
    final.write_bytes(b"old ids")
    replace_durably(temp, final)
    assert final.read_bytes() == b"ids" and not temp.exists()
    assert synced == [final.stat().st_ino, tmp_path.stat().st_ino]


def test_a_folder_is_replaced_durably(tmp_path: Path, synced: list[int]) -> None:
    root = tmp_path / "checkpoints"
    temp = root / ".tmp-step-00000010-1"
    temp.mkdir(parents=True)
    (temp / "model.safetensors").write_bytes(b"weights")
    replace_durably(temp, root / "step-00000010")
    final = root / "step-00000010"
    assert (final / "model.safetensors").read_bytes() == b"weights"
    assert [p.name for p in root.iterdir()] == ["step-00000010"]
    # The folder itself (its files are the caller's), then the folder that holds it.
    assert synced == [final.stat().st_ino, root.stat().st_ino]


def _renames(source: str) -> list[str]:
    """Calls in a module that rename files: os.replace/rename/renames, shutil.move, and
    Path.replace/rename (one positional argument, unlike str.replace(old, new))."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "shutil"):
            names = {a.name for a in node.names} & {"replace", "rename", "renames", "move"}
            found += [f"from {node.module} import {name}" for name in sorted(names)]
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        attr, owner = node.func.attr, node.func.value
        owner_name = owner.id if isinstance(owner, ast.Name) else None
        if owner_name in ("os", "shutil") and attr in ("replace", "rename", "renames", "move"):
            found.append(f"line {node.lineno}: {owner_name}.{attr}")
        elif attr == "rename" or (
            attr == "replace"
            and len(node.args) == 1
            and not node.keywords
            and owner_name != "dataclasses"
        ):
            found.append(f"line {node.lineno}: .{attr}(...)")
    return found


def test_no_module_but_files_renames_files_by_itself() -> None:
    """A writer that renames by itself may skip the fsyncs: every rename goes through
    charlm.system.files (replace_durably, atomic_write_bytes, atomic_write_text)."""
    helper = PACKAGE / "system" / "files.py"
    assert _renames(helper.read_text(encoding="utf-8")), "the check misses the helper's rename"
    offenders = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != helper and (found := _renames(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


def test_the_rename_check_sees_each_way_to_rename() -> None:
    source = (
        "import os, shutil\nfrom os import replace\n"
        "os.replace(a, b)\nos.rename(a, b)\nshutil.move(a, b)\np.rename(q)\np.replace(q)\n"
        "s.replace('a', 'b')\ndataclasses.replace(x)\nt.replace(tzinfo=None)\n"
    )
    assert len(_renames(source)) == 6
