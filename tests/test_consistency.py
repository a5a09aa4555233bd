"""What charlm says agrees with what it is (issue 26): no message names a charlm version newer
than its own."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

from packaging.version import Version

import charlm

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "charlm"
# "charlm 0.2", "charlm-rnn 1.0.1", "charlm v0.3", "charlm version 0.2" (a version is digits)
NAMED_VERSION = re.compile(r"\bcharlm(?:-rnn)?\s+(?:v|version\s+)?(\d+(?:\.\d+)+)\b", re.I)


def _texts_of(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant (f-string parts too) and every comment."""
    source = path.read_text(encoding="utf-8")
    found = [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found.append((token.start[0], token.string))
    return found


def newer_versions_named(where: str, text: str) -> list[str]:
    own = Version(charlm.__version__)
    return [
        f"{where}: names charlm {v} (this is charlm {own})"
        for v in NAMED_VERSION.findall(text)
        if Version(v) > own
    ]


def test_no_message_names_a_charlm_newer_than_this_one() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, text in _texts_of(path):
            problems += newer_versions_named(f"{path.relative_to(ROOT)}:{line}", text)
    docs = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    for doc in docs:
        problems += newer_versions_named(str(doc.relative_to(ROOT)), doc.read_text("utf-8"))
    assert not problems, "\n".join(problems)


def test_the_scan_sees_a_future_version_where_one_is_named() -> None:
    assert newer_versions_named("x", "a run from before charlm 99.2, or resumed from one")
    assert newer_versions_named("x", "needs charlm-rnn v99.0.1")
    assert not newer_versions_named("x", f"charlm {charlm.__version__}; charlm 0.1's rule")
