"""Tests for charlm.data.corpora: the built-in corpus and checked downloads from a local server."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from charlm.data import corpora
from charlm.data.corpora import (
    DATASETS,
    Dataset,
    RemoteFile,
    builtin_corpus_text,
    cache_dir,
    download,
)
from charlm.errors import DataError, UsageError

if TYPE_CHECKING:
    from conftest import LocalServer  # the http_server fixture's value


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.slow
def test_builtin_corpus_is_large_prose_and_deterministic(isolated_cache: Path) -> None:
    text = builtin_corpus_text()
    assert len(text.encode("utf-8")) > 500_000
    assert builtin_corpus_text() is text  # cached in-process
    assert corpora._collect_builtin_text() == text
    words = text.split()
    assert words.count("the") > 5_000
    assert sum(c.isascii() for c in text) / len(text) > 0.99
    # Sentences only: no doctests, code, tables or rules for a model to imitate.
    lines = text.splitlines()
    assert not any(line.startswith((">>>", "    ", "|", "+-", "==")) for line in lines)
    assert text.count("|") / len(text) < 0.0005
    assert text.count(" " * 3) == 0


def test_prose_filter_keeps_sentences_and_drops_code_tables_and_doctests() -> None:
    doc = (
        "Return the number of items in the queue, counted when this call was made.\n\n"
        ">>> q.qsize()\n3\n\n"
        "+-----+-----+\n| a   | b   |\n+-----+-----+\n\n"
        "    for item in q:\n        print(item)\n\n"
        "The count is only a hint: another thread may\nchange it at any moment after."
    )
    assert corpora._prose(doc) == (
        "Return the number of items in the queue, counted when this call was made.\n"
        "The count is only a hint: another thread may change it at any moment after."
    )


@pytest.mark.slow
def test_builtin_corpus_is_the_same_in_another_process() -> None:
    # Libraries patch stdlib functions at import time (typing_extensions, torch); the corpus must
    # not depend on what was imported before it.
    code = (
        "import hashlib, numpy, typing_extensions\n"
        "from charlm.data.corpora import builtin_corpus_text\n"
        "print(hashlib.sha256(builtin_corpus_text().encode()).hexdigest())\n"
    )
    expected = _sha(builtin_corpus_text())
    for _ in range(2):  # the first run builds and caches the text on disk, the second reads it
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        assert result.stdout.strip() == expected
    assert len(list((cache_dir() / "builtin").iterdir())) == 1


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHARLM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CHARLM_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)  # platformdirs follows it on Linux
    assert cache_dir() == Path.home() / ".cache" / "charlm"


def test_known_datasets() -> None:
    assert set(DATASETS) == {"tinyshakespeare", "wikitext-2", "reddit"}
    shakespeare = DATASETS["tinyshakespeare"].files[0]
    assert shakespeare.sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert [f.filename for f in DATASETS["wikitext-2"].files] == [
        "train.txt",
        "valid.txt",
        "test.txt",
    ]
    assert DATASETS["reddit"].files[0].sha256 is None  # trust on first use


@pytest.fixture
def toy_dataset(monkeypatch: pytest.MonkeyPatch, http_server: LocalServer) -> dict[str, str]:
    """A two-file dataset 'toy' whose files the local server holds; returns name -> content."""
    contents = {"a.txt": "alpha text\n" * 100, "b.txt": "beta text\n" * 50}
    for name, text in contents.items():
        (http_server.root / name).write_text(text)
    files = tuple(
        RemoteFile(f"https://example.invalid/data/{name}", name, _sha(text), len(text))
        for name, text in contents.items()
    )
    monkeypatch.setitem(DATASETS, "toy", Dataset(files=files, description="test data"))
    return contents


def test_download_checks_hash_and_reuses_cache(
    toy_dataset: dict[str, str], http_server: LocalServer, isolated_cache: Path
) -> None:
    paths = download("toy", base_url=http_server.url, show_progress=False)
    assert paths == [isolated_cache / "toy" / "a.txt", isolated_cache / "toy" / "b.txt"]
    assert [p.read_text() for p in paths] == list(toy_dataset.values())
    assert http_server.requests == ["/a.txt", "/b.txt"]

    assert download("toy", base_url=http_server.url, show_progress=False) == paths
    assert http_server.requests == ["/a.txt", "/b.txt"]  # nothing fetched again


def test_download_to_dest_via_environment(
    toy_dataset: dict[str, str],
    http_server: LocalServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHARLM_DOWNLOAD_URL", http_server.url + "/")
    paths = download("toy", dest=tmp_path / "here", show_progress=False)
    assert paths == [tmp_path / "here" / "a.txt", tmp_path / "here" / "b.txt"]


def test_download_rejects_a_wrong_hash(
    toy_dataset: dict[str, str], http_server: LocalServer, tmp_path: Path
) -> None:
    (http_server.root / "b.txt").write_text("tampered\n")
    dest = tmp_path / "dl"
    with pytest.raises(DataError) as info:
        download("toy", dest=dest, base_url=http_server.url, show_progress=False)
    message = str(info.value)
    assert "b.txt: sha256 mismatch" in message
    assert _sha(toy_dataset["b.txt"]) in message and _sha("tampered\n") in message
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt"]  # no partial or bad file left

    # A corrupted cached file is fetched again.
    (http_server.root / "b.txt").write_text(toy_dataset["b.txt"])
    (dest / "a.txt").write_text("corrupted")
    download("toy", dest=dest, base_url=http_server.url, show_progress=False)
    assert (dest / "a.txt").read_text() == toy_dataset["a.txt"]


def test_download_trusts_on_first_use(
    http_server: LocalServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    (http_server.root / "c.csv").write_text("body\nhello\n")
    remote = RemoteFile("https://example.invalid/c.csv", "c.csv", None, None)
    monkeypatch.setitem(DATASETS, "tofu", Dataset(files=(remote,), description="no hash"))
    dest = tmp_path / "tofu"
    download("tofu", dest=dest, base_url=http_server.url)
    recorded = json.loads((dest / "sha256.json").read_text())
    assert recorded == {"c.csv": _sha("body\nhello\n")}
    assert "trust on first use" in capsys.readouterr().err

    # Later downloads must match the recorded hash.
    (dest / "c.csv").unlink()
    (http_server.root / "c.csv").write_text("body\nchanged\n")
    with pytest.raises(DataError, match="sha256 mismatch"):
        download("tofu", dest=dest, base_url=http_server.url, show_progress=False)


def test_connection_refused_names_url_and_cache(
    toy_dataset: dict[str, str], isolated_cache: Path
) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError) as info:
        download("toy", base_url=f"http://127.0.0.1:{port}", show_progress=False)
    message = str(info.value)
    assert f"http://127.0.0.1:{port}/a.txt" in message
    assert "by hand" in message and str(isolated_cache / "toy") in message
    assert "\n" not in message


def test_unknown_dataset() -> None:
    with pytest.raises(UsageError, match="reddit, tinyshakespeare, wikitext-2"):
        download("imagenet")


def test_module_docstring_names_what_it_owns() -> None:
    assert corpora.__doc__ and "\n" not in corpora.__doc__.strip()
