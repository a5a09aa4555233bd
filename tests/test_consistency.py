"""What charlm says agrees with what it is (issue 26): no message names a charlm version newer
than its own, and the diagnostics build a fresh model's tokenizer with every data.* setting
(data.sentence_split included), as training does."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import numpy as np
import pytest
from packaging.version import Version

import charlm
from charlm.data.tokenizer import Encoder, build_tokenizer, split_sentences
from charlm.diagnostics import gradients
from charlm.diagnostics.report import gradient_subjects

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


# Three sentences to a reader (pysbd), six pieces to the old rule.
TEXT = "The U.S. Army arrived at 5 p.m. on Jan. 5. It was late. Dr. Smith left.\n" * 30
WORD = ["data.level=word", "model.hidden_size=8", "model.embedding_dim=4"]


def expected_ids(splitter: str) -> np.ndarray:
    tokenizer = build_tokenizer("word", [TEXT], 8000, sentence_split=splitter)
    return Encoder(tokenizer, "word").encode(TEXT)


@pytest.mark.parametrize("splitter", ["rules", "pysbd"])
def test_gradients_fresh_models_split_sentences_as_configured(splitter: str) -> None:
    assert len(split_sentences(TEXT, "rules")) > len(split_sentences(TEXT, "pysbd"))  # differ
    overrides = [*WORD, f"data.sentence_split={splitter}"]
    for fresh in (None, "gru,lstm"):  # one model from --config/--set, or those --fresh names
        subjects = gradient_subjects(None, TEXT, None, overrides, fresh, None, "best", "cpu")
        for subject in subjects:
            assert subject.config.data.sentence_split == splitter
            np.testing.assert_array_equal(subject.ids, expected_ids(splitter))


def test_profile_config_splits_sentences_as_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    measured: list[np.ndarray] = []
    monkeypatch.setattr(gradients, "measure_model", lambda model, ids, **_: measured.append(ids))
    gradients.profile_config(None, [*WORD, "data.sentence_split=rules"], text)
    (ids,) = measured
    np.testing.assert_array_equal(ids, expected_ids("rules"))
