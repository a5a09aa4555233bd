"""The built-in corpus (stdlib docstrings) and checked downloads of the public corpora."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import sys
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from charlm.errors import DataError, UsageError
from charlm.system.console import progress_bar
from charlm.system.files import atomic_write_bytes, replace_durably

# Standard library modules with plenty of prose in their docstrings, sorted; no GUI, no
# novelties (antigravity, this). Their source is parsed, never imported. A module missing from
# this Python version is skipped.
BUILTIN_MODULES = (
    "_pydecimal _pyio abc argparse ast asyncio.base_events asyncio.events asyncio.futures "
    "asyncio.locks asyncio.queues asyncio.runners asyncio.streams asyncio.subprocess "
    "asyncio.taskgroups asyncio.tasks asyncio.timeouts asyncio.transports base64 bdb bisect "
    "calendar cmd code codecs codeop collections collections.abc colorsys concurrent.futures "
    "concurrent.futures.process concurrent.futures.thread configparser contextlib copy copyreg "
    "csv dataclasses datetime difflib dis doctest email.charset email.contentmanager "
    "email.feedparser email.generator email.header email.headerregistry email.iterators "
    "email.message email.mime.multipart email.mime.text email.parser email.policy "
    "email.utils enum filecmp fileinput fnmatch fractions ftplib functools getopt gettext glob "
    "graphlib gzip heapq hmac html html.parser http http.client http.cookiejar http.cookies "
    "http.server imaplib importlib importlib.abc importlib.machinery importlib.metadata "
    "importlib.resources importlib.util inspect io ipaddress json json.decoder json.encoder "
    "keyword linecache locale logging logging.config logging.handlers lzma mailbox mimetypes "
    "modulefinder multiprocessing.connection multiprocessing.context multiprocessing.managers "
    "multiprocessing.pool multiprocessing.process multiprocessing.queues "
    "multiprocessing.shared_memory multiprocessing.synchronize netrc numbers opcode operator "
    "optparse os pathlib pdb pickle pickletools pkgutil platform plistlib poplib posixpath "
    "pprint profile pstats py_compile pyclbr pydoc queue quopri random re reprlib rlcompleter "
    "runpy sched secrets selectors shelve shlex shutil smtplib socket socketserver sqlite3 ssl "
    "stat statistics string stringprep struct subprocess symtable sysconfig tabnanny tarfile "
    "tempfile textwrap threading timeit token tokenize tomllib trace traceback tracemalloc "
    "types typing unittest.case unittest.loader unittest.mock unittest.result unittest.runner "
    "unittest.suite urllib.error urllib.parse urllib.request urllib.response "
    "urllib.robotparser uuid warnings wave weakref wsgiref.handlers wsgiref.headers "
    "wsgiref.simple_server wsgiref.util wsgiref.validate xml.dom.minidom xml.dom.pulldom "
    "xml.etree.ElementTree xml.sax.handler xml.sax.saxutils xml.sax.xmlreader xmlrpc.client "
    "xmlrpc.server zipapp zipfile zipimport zoneinfo"
).split()


def cache_dir() -> Path:
    """Where downloads and the built-in corpus are kept: $CHARLM_CACHE, else the platform's
    cache folder for charlm (platformdirs): $XDG_CACHE_HOME/charlm on Linux, ~/.cache/charlm
    when that is unset; ~/Library/Caches/charlm on macOS; %LOCALAPPDATA%\\charlm\\Cache on
    Windows."""
    configured = os.environ.get("CHARLM_CACHE")
    if configured:
        return Path(configured).expanduser()
    import platformdirs  # here: only a download or the built-in corpus needs it

    return Path(platformdirs.user_cache_dir("charlm", appauthor=False))


def _module_source(name: str) -> Path | None:
    """The .py file of a standard library module, found without importing it."""
    base = Path(sysconfig.get_paths()["stdlib"]) / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _docstrings(node: ast.AST) -> Iterator[str]:
    """Docstrings of a module, class or function and everything defined inside, in source order."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)  # indentation cleaned as inspect.getdoc does
        if doc:
            yield doc
    for child in ast.iter_child_nodes(node):
        if isinstance(
            child,
            (
                ast.ClassDef,
                ast.FunctionDef,
                ast.AsyncFunctionDef,
                ast.If,
                ast.Try,
                ast.ExceptHandler,
            ),
        ):
            yield from _docstrings(child)


def _collect_builtin_text() -> str:
    seen: set[str] = set()
    docs = []
    for name in BUILTIN_MODULES:
        path = _module_source(name)
        if path is None:
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            continue
        for doc in _docstrings(tree):
            # Inherited and shared docstrings repeat; one-liners ("Return self.") add little.
            prose = _prose(doc)
            if prose not in seen and len(prose.split()) > 3:
                seen.add(prose)
                docs.append(prose)
    # The pages of help("topics"): the language reference as plain text (a data module).
    from pydoc_data.topics import topics

    docs.extend(filter(None, (_prose(topics[key].strip()) for key in sorted(topics))))
    return "\n\n".join(docs) + "\n"


def _is_prose(paragraph: str) -> bool:
    """A paragraph of sentences: not code, a doctest, a table, a signature or a list of names.

    A model trained on the docstrings imitated their ASCII tables and code (a sample was 63%
    spaces and '|'); keeping sentences only makes its samples read as English."""
    lines = paragraph.splitlines()
    if any(
        line.startswith((" ", "\t", ">>>", "...", "$ ", "|", "+-", "=", "-", "*", ":"))
        for line in lines
    ):
        return False  # indented code, doctests, tables, rules, bullets, reST fields
    words = paragraph.split()
    letters = sum(c.isalpha() or c.isspace() for c in paragraph)
    return (
        len(words) >= 6
        and letters >= 0.9 * len(paragraph)
        and paragraph.rstrip()[-1:] in ".:!?)"
        and sum(w[:1].isalpha() for w in words) >= 0.85 * len(words)
        and not any(token in paragraph for token in ("()", "->", "==", "__", "[", "{", "\\"))
    )


def _prose(doc: str) -> str:
    """The prose paragraphs of a docstring or help page, each folded onto one line."""
    paragraphs = (p.strip() for p in doc.split("\n\n"))
    return "\n".join(" ".join(p.split()) for p in paragraphs if p and _is_prose(p))


@functools.cache
def builtin_corpus_text() -> str:
    """English prose from the standard library's docstrings and help() topics (~1.6 MB).

    Works offline and gives the same text on every call for one Python installation: the modules'
    source files are parsed, not imported, so nothing runs and nothing that another library
    patched at run time leaks in. Building takes 1-2 s, so the text is kept in cache_dir(),
    keyed by the Python version and the module list (a damaged or unwritable cache is ignored).
    """
    # "prose-1": the paragraph filter (_is_prose); a new filter is a new recipe, so a cached
    # text of an older recipe is never reused.
    recipe = json.dumps([sys.version, sysconfig.get_paths()["stdlib"], BUILTIN_MODULES, "prose-1"])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    path = cache_dir() / "builtin" / f"stdlib-docstrings-py{version}-{key}.txt"
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    text = _collect_builtin_text()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError:
        pass
    return text


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it lives, and its sha256 if known (else trust on first use)."""

    url: str
    filename: str
    sha256: str | None
    size: int | None  # bytes, for the progress bar when the server sends no length


@dataclass(frozen=True)
class Dataset:
    """A public corpus: its files, what it is, and its licence."""

    files: tuple[RemoteFile, ...]
    description: str


_WIKITEXT = (
    "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/"
)
DATASETS: dict[str, Dataset] = {
    "tinyshakespeare": Dataset(
        files=(
            RemoteFile(
                "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                "tinyshakespeare/input.txt",
                "input.txt",
                "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                1_115_394,
            ),
        ),
        description="tiny Shakespeare, char-rnn's 1.1 MB corpus (public domain)",
    ),
    "wikitext-2": Dataset(
        files=(
            RemoteFile(
                _WIKITEXT + "train.txt",
                "train.txt",
                "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
                10_797_148,
            ),
            RemoteFile(
                _WIKITEXT + "valid.txt",
                "valid.txt",
                "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
                1_121_681,
            ),
            RemoteFile(
                _WIKITEXT + "test.txt",
                "test.txt",
                "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
                1_256_449,
            ),
        ),
        description="WikiText-2 train/valid/test, tokenised Wikipedia articles (CC BY-SA 3.0)",
    ),
    "reddit": Dataset(
        files=(
            RemoteFile(
                "https://raw.githubusercontent.com/dennybritz/rnn-tutorial-rnnlm/master/data/"
                "reddit-comments-2015-08.csv",
                "reddit-comments-2015-08.csv",
                None,  # not published: the first download's hash is recorded and then enforced
                7_260_000,
            ),
        ),
        description="15,000 Reddit comments (Aug 2015) from the WildML RNN tutorial; column body",
    ),
}

_RECORDED_HASHES = "sha256.json"  # beside the files: hashes recorded on first download (TOFU)
_TIMEOUT_S = 30


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_recorded(dest: Path) -> dict[str, str]:
    try:
        recorded = json.loads((dest / _RECORDED_HASHES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _say(message: str, show_progress: bool) -> None:
    if show_progress:
        print(message, file=sys.stderr, flush=True)


def _fetch(url: str, temp: Path, expected_size: int | None, show_progress: bool) -> str:
    """Stream `url` into `temp`; returns the sha256 of what arrived."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "charlm"})
    try:
        with (
            urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response,
            open(temp, "wb") as out,
        ):
            total = int(response.headers.get("Content-Length") or 0) or expected_size
            with progress_bar(
                url.rsplit("/", 1)[-1],
                total,
                enabled=show_progress,
                transfer=True,
                plain_line=False,
            ) as advance:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    digest.update(block)
                    advance(len(block))
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise DataError(
            f"{url}: download failed ({reason}); download it by hand into {temp.parent}"
        ) from None
    return digest.hexdigest()


def download(
    name: str, dest: Path | None = None, base_url: str | None = None, show_progress: bool = True
) -> list[Path]:
    """Fetch dataset `name` into `dest` (default cache_dir()/NAME), checking sha256; local paths.

    Files already there with the right hash are not fetched again. `base_url` (or
    $CHARLM_DOWNLOAD_URL) replaces each URL's folder, e.g. a local mirror. A file without a
    published hash is trusted on first use: its hash is recorded in sha256.json beside it and
    later downloads must match it.
    """
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    dest = Path(dest) if dest is not None else cache_dir() / name
    base_url = base_url or os.environ.get("CHARLM_DOWNLOAD_URL")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"{dest}: cannot create the folder ({error.strerror})") from None
    recorded = _read_recorded(dest)
    paths = []
    for remote in DATASETS[name].files:
        path = dest / remote.filename
        expected = remote.sha256 or recorded.get(remote.filename)
        if path.is_file() and (expected is None or _file_sha256(path) == expected):
            if expected is None:
                # Trust on first use for a file that was put there by hand.
                recorded[remote.filename] = _file_sha256(path)
                _write_recorded(dest, recorded)
            _say(f"{path}: already downloaded and verified", show_progress)
            paths.append(path)
            continue
        url = remote.url
        if base_url:
            url = base_url.rstrip("/") + "/" + remote.filename
        _say(f"downloading {url}", show_progress)
        temp = dest / f".{remote.filename}.part"
        try:
            actual = _fetch(url, temp, remote.size, show_progress)
            if expected is not None and actual != expected:
                raise DataError(
                    f"{remote.filename}: sha256 mismatch (expected {expected}, got {actual}) "
                    f"from {url}; the download is corrupt or the file changed, so it was deleted"
                )
            replace_durably(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        if expected is None:
            recorded[remote.filename] = actual
            _write_recorded(dest, recorded)
            _say(
                f"{path}: no published sha256; recorded {actual} (trust on first use) in "
                f"{dest / _RECORDED_HASHES}; later downloads must match it",
                show_progress,
            )
        paths.append(path)
    return paths


def _write_recorded(dest: Path, recorded: dict[str, str]) -> None:
    text = json.dumps(recorded, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(dest / _RECORDED_HASHES, text.encode("utf-8"))
