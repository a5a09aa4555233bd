"""Shared test fixtures: small generated corpora, an isolated cache folder, a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_WORDS = (
    "the a cat dog sat ran on under mat tree and but quickly slowly red green big small "
    "house river saw heard said"
).split()


def make_english(lines: int = 200, seed: int = 0) -> str:
    """Sentence-like text from a small vocabulary with a skewed (Zipf-like) word distribution."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(len(_WORDS))]
    out = []
    for _ in range(lines):
        words = rng.choices(_WORDS, weights, k=rng.randint(3, 10))
        out.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ", then more."]))
    return "\n".join(out) + "\n"


@pytest.fixture
def english_text() -> str:
    """About 200 lines of simple sentences (~10 KB)."""
    return make_english()


@pytest.fixture
def corpus_file(tmp_path: Path, english_text: str) -> Path:
    """`english_text` written to a UTF-8 .txt file."""
    path = tmp_path / "corpus.txt"
    path.write_text(english_text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Point $CHARLM_CACHE at a fresh folder and clear download mirrors, so no test sees ~/.cache."""
    cache = tmp_path_factory.mktemp("charlm-cache")
    monkeypatch.setenv("CHARLM_CACHE", str(cache))
    monkeypatch.delenv("CHARLM_DOWNLOAD_URL", raising=False)
    # A proxy from the environment must never see requests meant for the local test server.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return cache


@dataclass
class LocalServer:
    """A static file server on 127.0.0.1 serving `root`; `requests` lists the paths asked for."""

    root: Path
    url: str
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[LocalServer]:
    """Serve files from a temporary folder over HTTP in a background thread."""
    root = tmp_path / "served"
    root.mkdir()
    server_info = LocalServer(root=root, url="")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            server_info.requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    handler = functools.partial(Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server_info.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server_info
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
