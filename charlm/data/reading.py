"""Corpora read as a stream of decoded text pieces, so preparing one takes bounded memory."""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from charlm.errors import DataError, InputTooLarge, UsageError, environment_error, human_bytes

READ_BYTES = 4 << 20  # raw bytes read from a file at a time
CSV_PIECE_CHARS = 1 << 20  # CSV documents are handed on in pieces of about this size
CSV_FIELD_CHARS = 64 << 20  # the longest CSV line or field read (a document, not a corpus)
SPOOL_SHARE = 0.5  # a stream may fill at most this share of the temporary folder's free space
_UTF8_BOM = b"\xef\xbb\xbf"
_NON_SPACE = re.compile(r"\S")


@dataclass(frozen=True)
class Scan:
    """What one full read of a source found: the input's sha256, its length in code points, and
    where its first and last non-whitespace characters are (-1: there are none)."""

    sha256: str
    chars: int
    first_text: int
    last_text: int


def _no_bytes(_: bytes) -> None:
    pass


def _file_text(
    path: Path, errors: str, hash_raw: Callable[[bytes], None] = _no_bytes
) -> Iterator[str]:
    """The text of one file, decoded and with line ends made "\\n", piece by piece.

    The same text as decoding the whole file at once (a leading BOM dropped, "\\r\\n" and "\\r"
    read as "\\n"), and the same errors: a NUL byte (a binary file) or invalid UTF-8 names the
    byte offset from the start of the file.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    offset, held_cr = 0, ""
    try:
        file = open(path, "rb")  # noqa: SIM115 (closed below; a generator holds it open)
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror}); check the path") from None
    with file:
        while True:
            try:
                raw = file.read(max(READ_BYTES, len(_UTF8_BOM)))
            except OSError as error:
                raise DataError(f"{path}: cannot read it ({error.strerror})") from None
            hash_raw(raw)
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise DataError(
                    f"{path}: looks binary (NUL byte at byte offset {offset + nul}); give a "
                    "UTF-8 text file (UTF-16 files must be converted to UTF-8 first)"
                )
            data = memoryview(raw)
            if offset == 0 and raw.startswith(_UTF8_BOM):
                data, offset = data[len(_UTF8_BOM) :], len(_UTF8_BOM)
            buffered = len(decoder.getstate()[0])
            final = not raw
            try:
                text = decoder.decode(data, final)
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}: invalid UTF-8 at byte offset {offset - buffered + error.start}; "
                    "fix the file or pass --errors replace"
                ) from None
            offset += len(data)
            text = held_cr + text
            held_cr = ""
            if not final and text.endswith("\r"):  # its "\n" may start the next piece
                text, held_cr = text[:-1], "\r"
            yield text.replace("\r\n", "\n").replace("\r", "\n")
            if final:
                return


def _lines(pieces: Iterable[str], name: str) -> Iterator[str]:
    """The text of `pieces` as lines, each with its "\\n" (the last one may lack it); a line
    longer than CSV_FIELD_CHARS is refused rather than held."""
    rest = ""
    for piece in pieces:
        text = rest + piece
        end = text.rfind("\n") + 1
        if not end:
            rest = text
            if len(rest) > CSV_FIELD_CHARS:
                raise _too_long(name, "a line")
            continue
        rest = text[end:]
        lines = text[:end].split("\n")
        lines.pop()  # "" after the last "\n"
        for line in lines:
            yield line + "\n"
    if rest:
        yield rest


def _csv_text(pieces: Iterable[str], name: str, column: str | None) -> Iterator[str]:
    """The non-blank `column` fields of a CSV text, one document per row, joined by "\\n"."""
    if column is None:
        raise UsageError(
            f"{name}: a CSV input needs its text column named: --csv-column NAME (charlm "
            "prepare) or --set data.csv_column=NAME (charlm train)"
        )
    reader = csv.reader(_lines(pieces, name))
    rows = _limited_rows(reader)
    try:
        header = next(rows, None)
        if header is None:
            raise DataError(f"{name}: the CSV file has no header row; add one naming the columns")
        if column not in header:
            raise UsageError(
                f"{name}: no column {column!r}; the columns are: {', '.join(header)}; "
                "pass one of them as --csv-column"
            )
        index = header.index(column)
        batch: list[str] = []
        size, first = 0, True
        for row in rows:
            if len(row) > index and row[index].strip():
                batch.append(row[index] if first else "\n" + row[index])
                size += len(batch[-1])
                first = False
                if size >= CSV_PIECE_CHARS:
                    yield "".join(batch)
                    batch, size = [], 0
        if batch:
            yield "".join(batch)
    except csv.Error as error:
        if "field larger than field limit" in str(error):
            raise _too_long(name, f"the field at line {reader.line_num}") from None
        raise DataError(f"{name}: unreadable CSV at line {reader.line_num} ({error})") from None


def _limited_rows(reader: Iterator[list[str]]) -> Iterator[list[str]]:
    """The rows of `reader`, each parsed under a field limit of CSV_FIELD_CHARS: comments can be
    far longer than the csv module's default 128 KiB. The limit is the whole process's, so it is
    raised only while a row is parsed and the caller's value is back before the row is handed
    on (and on any error): other CSV readers, and the caller between rows, never see it."""
    while True:
        saved = csv.field_size_limit(CSV_FIELD_CHARS)
        try:
            row = next(reader, None)
        finally:
            csv.field_size_limit(saved)
        if row is None:
            return
        yield row


def _too_long(name: str, what: str) -> InputTooLarge:
    return InputTooLarge(
        f"{name}: {what} is longer than {CSV_FIELD_CHARS:,} characters, the most a CSV line "
        "or field may be (an unclosed quote?); fix the CSV or give the text as a .txt file"
    )


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror}); check the path") from None
    return stat.st_size, stat.st_mtime_ns


class TextSource:
    """A corpus that can be read several times, piece by piece, never whole.

    A .txt file (any extension but .csv), a .csv file's `csv_column`, a folder of .txt files
    (sorted by name, joined by "\\n"), or a string already in memory. `pieces()` yields the same
    text as reading the input whole; `scan()` checks it (UTF-8, not binary, not empty) and
    measures it. A file that changes between two reads is refused rather than mixed.
    """

    def __init__(
        self,
        path: Path | None = None,
        errors: str = "strict",
        csv_column: str | None = None,
        text: str | None = None,
    ) -> None:
        self.errors = errors
        self.csv_column = csv_column
        self._text = text
        self.name = "builtin" if path is None else str(path)
        self.files: list[Path] = []
        self.is_folder = False
        if path is None:
            if text is None:
                raise ValueError("a TextSource needs a path or a text")
            return
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: no such file or folder; check the path")
        self.is_folder = path.is_dir()
        if self.is_folder:
            self.files = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".txt"
            )
            if not self.files:
                raise DataError(
                    f"{path}: the folder has no .txt files; put the corpus in *.txt files"
                )
        else:
            self.files = [path]
        self._stamps = {file: _stamp(file) for file in self.files}

    @property
    def raw_bytes(self) -> int:
        """How many bytes one read of the input takes (for progress)."""
        if self._text is not None:
            return len(self._text)
        return sum(size for size, _ in self._stamps.values())

    def _one_file(self, file: Path, hash_raw: Callable[[bytes], None]) -> Iterator[str]:
        if _stamp(file) != self._stamps[file]:
            raise DataError(f"{file}: changed while being read; run the command again")
        pieces = _file_text(file, self.errors, hash_raw)
        if file.suffix.lower() == ".csv" and not self.is_folder:
            return _csv_text(pieces, str(file), self.csv_column)
        return pieces

    def _file_pieces(
        self, hash_raw: Callable[[bytes], None] = _no_bytes
    ) -> Iterator[tuple[Path | None, Iterator[str]]]:
        """(file, its text's pieces) for each file in order; (None, ...) for a string."""
        if self._text is not None:
            hash_raw(self._text.encode("utf-8"))
            yield None, iter((self._text,))
            return
        for file in self.files:
            if self.is_folder:  # name and length first, so moving text between files counts
                hash_raw(f"{file.name}\0{self._stamps[file][0]}\0".encode())
            yield file, self._one_file(file, hash_raw)

    def pieces(self) -> Iterator[str]:
        """The whole text, in pieces of a few MB (files of a folder joined by "\\n")."""
        for index, (_, pieces) in enumerate(self._file_pieces()):
            if index:
                yield "\n"
            yield from pieces

    def scan(self, advance: Callable[[int], None] = lambda n: None) -> Scan:
        """Read everything once: check every file, hash the raw bytes, count and locate text.

        `advance` is told how many raw bytes were read, for a progress bar.
        """
        digest = hashlib.sha256()

        def hash_and_count(raw: bytes) -> None:
            digest.update(raw)
            advance(len(raw))

        chars, first_text, last_text = 0, -1, -1
        for index, (file, pieces) in enumerate(self._file_pieces(hash_and_count)):
            if index:
                chars += 1  # the "\n" between two files
            file_has_text = False
            for piece in pieces:
                if not file_has_text and _NON_SPACE.search(piece):
                    file_has_text = True
                    if first_text < 0:
                        first_text = chars + _NON_SPACE.search(piece).start()
                stripped = len(piece.rstrip())
                if stripped:
                    last_text = chars + stripped - 1
                chars += len(piece)
            if not file_has_text:
                raise DataError(
                    f"{file or self.name}: empty (no text, or only whitespace); "
                    "give a corpus with text"
                )
        return Scan(digest.hexdigest(), chars, first_text, last_text)

    def read(self) -> str:
        """The whole text as one string, checked as `scan` checks it (for small inputs)."""
        self.scan()
        return "".join(self.pieces())


def find_split(pieces: Iterable[str], chars: int, val_fraction: float) -> int:
    """Where the last `val_fraction` of a text of `chars` code points begins, moved to the
    nearest line break (deterministic; a line is split only in a text without line breaks).
    Reads the pieces only up to the first line break at or after the target."""
    target = int(chars * (1.0 - val_fraction))
    before = after = -1
    position = 0
    for piece in pieces:
        if position < target:
            found = piece.rfind("\n", 0, target - position)
            if found >= 0:
                before = position + found
        found = piece.find("\n", max(0, target - position))
        if found >= 0:
            after = position + found
            break
        position += len(piece)
    candidates = [i + 1 for i in (after, before) if 0 <= i < chars - 1]
    return min(candidates, key=lambda i: abs(i - target)) if candidates else target


def split_chunks(pieces: Iterable[str], bounds: list[int], size: int) -> Iterator[tuple[int, str]]:
    """(part, chunk) for every part text[bounds[p]:bounds[p + 1]] of the text of `pieces`,
    each part cut into chunks of about `size` characters ending at a line break.

    The chunks are the ones `iter_chunks(text, size, start, end)` gives for each part, without
    holding the text: only the current chunk is in memory. A line far longer than `size` (no
    line break in 8 x `size` characters) is cut at a space, or anywhere if it has none.
    """
    limit = 8 * size
    part, buf_start, buf = 0, bounds[0], ""
    position = 0  # where the next piece starts in the text
    pending = iter(pieces)
    exhausted = False
    while part < len(bounds) - 1:
        end = bounds[part + 1] - buf_start  # the part's end, relative to buf
        cut = buf.find("\n", size, min(len(buf), end))
        if cut >= 0:
            cut += 1
        elif end <= len(buf):
            cut = end
        elif exhausted:
            cut = len(buf)  # the text ended before bounds[-1]
        elif len(buf) >= limit:
            space = buf.rfind(" ", size, len(buf))
            cut = space + 1 if space >= 0 else len(buf)
        else:
            piece = next(pending, None)
            if piece is None:
                exhausted = True
                continue
            skip = max(0, bounds[0] - position)  # text before the first part is dropped
            position += len(piece)
            buf += piece[skip:] if skip else piece
            continue
        if cut:
            yield part, buf[:cut]
        buf, buf_start = buf[cut:], buf_start + cut
        if buf_start >= bounds[part + 1] or (exhausted and not buf):
            part += 1
            if exhausted and not buf:
                return


def is_stream(path: Path) -> bool:
    """Whether `path` can be read only once: "-" (standard input), a pipe or FIFO
    (/dev/stdin from `cat f |`, `<(...)`), a socket or a character device."""
    if str(path) == "-":
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def spool_limit(folder: Path) -> int:
    """The most a stream may copy into `folder`: SPOOL_SHARE of the free space there, so that
    an endless one (`yes |`) stops with room left for what is made from it."""
    return int(shutil.disk_usage(folder).free * SPOOL_SHARE)


def _refuse_device(path: Path, source: BinaryIO) -> None:
    """A character device other than a terminal (/dev/urandom, /dev/zero, /dev/null) is no
    text, and most never end: refused, as the path or as standard input (`- < /dev/zero`)."""
    try:
        fileno = source.fileno()
        mode = os.fstat(fileno).st_mode
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return  # not a file descriptor (a test's stand-in for stdin)
    if stat.S_ISCHR(mode) and not os.isatty(fileno):
        what = "standard input is a device" if str(path) == "-" else "a device"
        raise DataError(
            f"{path}: {what} (like /dev/urandom, which never ends), not a text; give a text "
            "file or a pipe"
        )


def _copy_stream(path: Path, source: BinaryIO, copy: Path) -> None:
    """Copy `source` into `copy` up to `spool_limit`; past it, refuse (the copy is removed)."""
    limit = spool_limit(copy.parent)
    written = 0
    with open(copy, "wb") as target:
        while block := source.read(READ_BYTES):
            written += len(block)
            if written > limit:
                raise InputTooLarge(
                    f"{path}: the stream is longer than {human_bytes(limit)}, the most it is "
                    f"copied to ({SPOOL_SHARE:.0%} of the free space in {copy.parent.parent}); "
                    "save it to a file and give that, or set TMPDIR to a folder with more room"
                )
            target.write(block)


@contextlib.contextmanager
def spooled(path: Path | None) -> Iterator[Path | None]:
    """`path` itself, or for a stream (`is_stream`) a temporary copy read from it once.

    Preparing and evaluating read their input several times (a scan, the split, the
    tokenizer, the encoding); a stream would be empty from the second read on. The copy keeps
    the stream's file name (so a FIFO named *.csv is read as CSV), is removed afterwards, and
    is bounded (`spool_limit`); a device such as /dev/urandom is refused.
    """
    if path is None or not is_stream(Path(path)):
        yield path
        return
    name = "stdin" if str(path) in ("-", "/dev/stdin") else Path(path).name
    with tempfile.TemporaryDirectory(prefix="charlm-spool-") as folder:
        copy = Path(folder) / name
        try:
            with contextlib.ExitStack() as stack:
                source = (
                    sys.stdin.buffer if str(path) == "-" else stack.enter_context(open(path, "rb"))  # noqa: SIM115
                )
                _refuse_device(Path(path), source)
                _copy_stream(Path(path), source, copy)
        except OSError as error:  # a full disk under the copy is named as such
            found = environment_error(error)
            raise found or DataError(f"{path}: cannot read it ({error.strerror})") from None
        yield copy
