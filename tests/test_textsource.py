"""Tests for charlm.data.reading: streamed reading gives the text, splits and errors of a whole read."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from charlm.data import prepare as prepare_module
from charlm.data import reading as textsource
from charlm.data.prepare import PrepareSettings, load_prepared, prepare
from charlm.data.reading import TextSource, find_split, split_chunks
from charlm.data.tokenizer import iter_chunks
from charlm.errors import DataError

# Text that exercises every boundary: line ends of three kinds, multi-byte characters (2, 3 and
# 4 bytes in UTF-8), spaces, empty lines.
PIECES = st.lists(
    st.sampled_from(["a", "bc ", "é", "€", "😀", "\n", "\r\n", "\r", " ", "\n\n", "xyz. "]),
    max_size=60,
)


def _pieces_of(text: str, sizes: list[int]) -> list[str]:
    """`text` cut at the given piece sizes (cycled), as a stream would hand it over."""
    pieces, start, index = [], 0, 0
    while start < len(text):
        size = max(1, sizes[index % len(sizes)]) if sizes else len(text)
        pieces.append(text[start : start + size])
        start, index = start + size, index + 1
    return pieces


@settings(max_examples=150, deadline=None)
@given(PIECES, st.integers(1, 12))
def test_file_text_decodes_as_a_whole_read_does(
    tmp_path_factory: pytest.TempPathFactory, parts: list[str], read_bytes: int
) -> None:
    text = "".join(parts)
    path = tmp_path_factory.mktemp("t") / "x.txt"
    path.write_bytes(text.encode("utf-8"))
    old = textsource.READ_BYTES
    textsource.READ_BYTES = read_bytes  # every multi-byte character and "\r\n" gets split
    try:
        got = "".join(textsource._file_text(path, "strict"))
    finally:
        textsource.READ_BYTES = old
    assert got == text.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize("read_bytes", [3, 4, 5, 1 << 20])
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"hello\xffworld", "invalid UTF-8 at byte offset 5"),
        (b"\xef\xbb\xbfabc\xe2\x82", "invalid UTF-8 at byte offset 6"),  # truncated at the end
        (b"abcd\xe2\x82xyz", "invalid UTF-8 at byte offset 4"),
        (b"text then \x00 binary", "NUL byte at byte offset 10"),
    ],
)
def test_errors_name_the_byte_offset_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_bytes: int, raw: bytes, expected: str
) -> None:
    monkeypatch.setattr(textsource, "READ_BYTES", read_bytes)
    path = tmp_path / "bad.txt"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=expected):
        TextSource(path).scan()


def test_replace_mode_matches_a_whole_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = b"ab\xffc\xe2\x82\xacd\xe2\x82" * 5
    path = tmp_path / "x.txt"
    path.write_bytes(raw)
    monkeypatch.setattr(textsource, "READ_BYTES", 4)
    assert TextSource(path, errors="replace").read() == raw.decode("utf-8", "replace")


def split_point(text: str, val_fraction: float) -> int:
    """The split rule on the whole text at once: the reference `find_split` must agree with."""
    target = int(len(text) * (1.0 - val_fraction))
    after = text.find("\n", target)
    before = text.rfind("\n", 0, target)
    candidates = [i + 1 for i in (after, before) if 0 <= i < len(text) - 1]
    return min(candidates, key=lambda i: abs(i - target)) if candidates else target


@settings(max_examples=200, deadline=None)
@given(
    PIECES.map("".join),
    st.floats(0.01, 0.99),
    st.lists(st.integers(1, 9), min_size=1, max_size=4),
)
def test_find_split_agrees_with_split_point(text: str, fraction: float, sizes: list[int]) -> None:
    text = text.replace("\r", "")
    assert find_split(_pieces_of(text, sizes), len(text), fraction) == split_point(text, fraction)


@settings(max_examples=200, deadline=None)
@given(
    PIECES.map("".join),
    st.integers(1, 10),
    st.lists(st.integers(0, 200), max_size=3),
    st.lists(st.integers(1, 9), min_size=1, max_size=4),
)
def test_split_chunks_are_iter_chunks_of_each_part(
    text: str, size: int, inner: list[int], sizes: list[int]
) -> None:
    # (A line of 7 x size or more is cut early on purpose: the next test.)
    assume(max(len(line) for line in text.split("\n")) < 7 * size)
    bounds = [0, *sorted(min(b, len(text)) for b in inner), len(text)]
    got = list(split_chunks(_pieces_of(text, sizes), bounds, size))
    expected = [
        (part, chunk)
        for part in range(len(bounds) - 1)
        for chunk in iter_chunks(text, size, bounds[part], bounds[part + 1])
    ]
    assert got == expected


def test_a_line_far_longer_than_a_chunk_is_cut_at_spaces() -> None:
    text = ("word " * 1000).strip()  # 4,999 characters, no line break
    chunks = [chunk for _, chunk in split_chunks(_pieces_of(text, [64]), [0, len(text)], 50)]
    assert "".join(chunks) == text
    assert max(len(c) for c in chunks) <= 8 * 50 + 64 and len(chunks) > 5
    assert all(c.endswith(" ") for c in chunks[:-1])


def test_folder_hash_and_text_match_the_documented_rule(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "b.txt").write_bytes(b"second\r\n")
    (folder / "a.txt").write_bytes(b"\xef\xbb\xbffirst")
    (folder / "skip.md").write_text("not read")
    digest = hashlib.sha256()
    for name, raw in (("a.txt", b"\xef\xbb\xbffirst"), ("b.txt", b"second\r\n")):
        digest.update(f"{name}\0{len(raw)}\0".encode() + raw)
    source = TextSource(folder)
    scan = source.scan()
    assert source.read() == "first\nsecond\n"
    assert (scan.sha256, scan.chars, scan.first_text, scan.last_text) == (
        digest.hexdigest(),
        13,
        0,
        11,
    )


def test_an_empty_file_in_a_folder_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("text\n")
    (folder / "b.txt").write_text(" \n\n")
    with pytest.raises(DataError, match=r"b\.txt: empty"):
        TextSource(folder).scan()


def test_a_file_changed_between_reads_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("some text\n")
    source = TextSource(path)
    source.scan()
    path.write_text("other, longer text\n")
    with pytest.raises(DataError, match="changed while being read"):
        source.read()


def test_csv_documents_stream_across_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(textsource, "READ_BYTES", 5)
    monkeypatch.setattr(textsource, "CSV_PIECE_CHARS", 8)
    path = tmp_path / "c.csv"
    path.write_text(
        'id,body\r\n1,"first, with a\r\nline break"\r\n2,  \r\n3,third\r\n4,"a ""quote"""\r\n',
        encoding="utf-8",
    )
    text = TextSource(path, csv_column="body").read()
    assert text == 'first, with a\nline break\nthird\na "quote"'


def _prepare_peak(tmp_path: Path, name: str, lines: int) -> tuple[int, int]:
    """(corpus bytes, peak Python memory) of preparing a char corpus of so many lines."""
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"])
    corpus = tmp_path / f"{name}.txt"
    corpus.write_text(
        "".join(" ".join(rng.choice(words, 12)) + "\n" for _ in range(lines)), encoding="utf-8"
    )
    tracemalloc.start()
    try:
        prepare(corpus, tmp_path / name, PrepareSettings(level="char"), show_progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    data = load_prepared(tmp_path / name)
    size = corpus.stat().st_size
    assert data.meta["train_chars"] + data.meta["val_chars"] == size
    assert len(data.train_ids) + len(data.val_ids) == size  # one id per (ASCII) character
    return size, peak


@pytest.mark.slow
def test_prepare_memory_does_not_grow_with_the_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(textsource, "READ_BYTES", 1 << 16)
    monkeypatch.setattr(prepare_module, "CHUNK_CHARS", 1 << 16)
    small_size, small_peak = _prepare_peak(tmp_path, "small", 20_000)
    big_size, big_peak = _prepare_peak(tmp_path, "big", 100_000)
    # Reading whole, the peak held the file's bytes and text: 2 x the corpus, 5x more for 5x.
    assert big_size > 6_000_000 and big_size > 4.9 * small_size
    assert big_peak < 1.3 * small_peak + 100_000, (small_peak, big_peak)
    assert big_peak < big_size / 3, (big_peak, big_size)
