"""The command line: help, exit codes, and one-line errors without tracebacks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY, cli, train_tiny, write_corpus


def test_help_and_version() -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("prepare", "train", "sample", "evaluate", "info", "data", "config"):
        assert command in result.stdout
    assert cli("--version").stdout.startswith("charlm ")


def test_python_dash_m_works() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "charlm", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout.startswith("charlm ")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert cli("nonsense").exit_code == 2
    corpus = write_corpus(tmp_path)
    for args, message in [
        (("--set", "model.hiden_size=3"), "did you mean 'model.hidden_size'"),
        (("--set", "train.seed"), "expected key=value"),
        (("--set", "train.batch_size=0"), "train.batch_size must be at least 1"),
        (("--set", "train.device=cuda"), "train.device=cuda but this PyTorch sees no CUDA"),
        (("--config", tmp_path / "missing.yaml"), "missing.yaml: config file not found"),
    ]:
        result = cli("train", corpus, "--out", tmp_path / "run", "-q", *args)
        assert result.exit_code == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert result.stderr.startswith("charlm: error: ")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_corpora_are_one_line_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    tiny = write_corpus(tmp_path, "ab\n" * 3, "tiny.txt")
    for path, code in [(tmp_path / "missing.txt", 1), (empty, 1), (binary, 1), (tiny, 1)]:
        result = cli("train", path, "--out", tmp_path / f"run-{path.stem}", "-q")
        assert result.exit_code == code, (path, result.stderr)
        assert path.name in result.stderr or "too few" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = cli("--debug", "sample", tmp_path)
    assert result.exit_code == 1 and "Traceback" in result.stderr


def test_config_show_prints_resolved_yaml() -> None:
    result = cli(
        "config", "show", "--config", "configs/tutorial-gru.yaml", "--set", "train.seed=42"
    )
    assert result.exit_code == 0
    assert "seed: 42" in result.stdout and "level: word" in result.stdout


def test_prepare_then_train_from_data(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    result = cli("prepare", corpus, "--out", tmp_path / "data")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "data" / "train.bin").is_file()
    result = train_tiny("--data", tmp_path / "data", "--out", tmp_path / "run", steps=5)
    assert result.exit_code == 0, result.stderr
    result = cli("train", corpus, "--data", tmp_path / "data", "--out", tmp_path / "run2")
    assert result.exit_code == 2 and "either TEXT or --data" in result.stderr


def test_data_download_through_the_cli(tmp_path: Path, http_server, monkeypatch) -> None:
    import hashlib

    from charlm.data.corpora import DATASETS, Dataset, RemoteFile

    text = "some public text\n" * 20
    (http_server.root / "corpus.txt").write_text(text)
    good = RemoteFile(
        "https://example.invalid/x/corpus.txt",
        "corpus.txt",
        hashlib.sha256(text.encode()).hexdigest(),
        len(text),
    )
    monkeypatch.setitem(DATASETS, "toy", Dataset(files=(good,), description="test"))
    monkeypatch.setenv("CHARLM_DOWNLOAD_URL", http_server.url + "/")
    result = cli("data", "download", "toy", "--dest", tmp_path / "got")
    assert result.exit_code == 0, result.stderr
    assert Path(result.stdout.strip()).read_text() == text
    bad = RemoteFile(good.url, "corpus.txt", "0" * 64, len(text))
    monkeypatch.setitem(DATASETS, "toy", Dataset(files=(bad,), description="test"))
    result = cli("data", "download", "toy", "--dest", tmp_path / "bad")
    assert result.exit_code == 1 and "sha256" in result.stderr and "Traceback" not in result.stderr
    result = cli("data", "download", "nonsense")
    assert result.exit_code in (1, 2) and "nonsense" in result.stderr
    assert "tinyshakespeare" in cli("data", "list").stdout


def test_training_from_prepared_data_takes_its_level(tmp_path: Path) -> None:
    from conftest import make_english

    corpus = write_corpus(tmp_path, make_english(300))
    assert (
        cli(
            "prepare", corpus, "--level", "word", "--vocab-size", "30", "--out", tmp_path / "data"
        ).exit_code
        == 0
    )
    result = train_tiny("--data", tmp_path / "data", "--out", tmp_path / "run", steps=3)
    assert result.exit_code == 0, result.stderr
    assert "level: word" in (tmp_path / "run" / "config.yaml").read_text()
    result = cli(
        "train",
        "--data",
        tmp_path / "data",
        "--out",
        tmp_path / "run2",
        "-q",
        "--set",
        "data.level=char",
    )
    assert result.exit_code == 2 and "prepared at level 'word'" in result.stderr
    result = cli("train", "--data", tmp_path / "nothing", "--out", tmp_path / "run3", "-q")
    assert (
        result.exit_code in (1, 2)
        and "nothing" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_train_accepts_invalid_utf8_only_when_asked(tmp_path: Path) -> None:
    from helpers import pattern_text

    bad = tmp_path / "bad.txt"
    bad.write_bytes(pattern_text().encode() + b"\xff\xfe" + pattern_text(seed=1).encode())
    result = cli("train", bad, "--out", tmp_path / "run", "-q", *TINY, "--set", "train.max_steps=3")
    assert (
        result.exit_code == 1
        and "byte offset" in result.stderr
        and "--errors replace" in result.stderr
    )
    assert not (tmp_path / "run" / "checkpoints").exists()
    result = cli(
        "train",
        bad,
        "--out",
        tmp_path / "run",
        "-q",
        "--errors",
        "replace",
        *TINY,
        "--set",
        "train.max_steps=3",
    )
    assert result.exit_code == 0, result.stderr
    result = cli("train", bad, "--out", tmp_path / "run2", "-q", "--errors", "maybe")
    assert result.exit_code == 2 and "errors" in result.stderr


def test_training_from_prepared_lines_data_takes_its_word_settings(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path, "A b c .\n\nD e @-@ f\n" * 200)
    made = cli(
        "prepare",
        corpus,
        "--level",
        "word",
        "--vocab-size",
        "0",
        "--keep-case",
        "--segments",
        "lines",
        "--word-split",
        "whitespace",
        "--out",
        tmp_path / "data",
    )
    assert made.exit_code == 0, made.stderr
    result = train_tiny("--data", tmp_path / "data", "--out", tmp_path / "run", steps=3)
    assert result.exit_code == 0, result.stderr
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert (
        "segments: lines" in saved
        and "lowercase: false" in saved
        and "word_split: whitespace" in saved
    )


HELP_COMMANDS = [
    [], ["prepare"], ["train"], ["sample"], ["evaluate"], ["info"], ["gradients"], ["plot"],
    ["average"], ["export"], ["data"], ["data", "download"], ["data", "list"],
    ["data", "synth"], ["config"], ["config", "show"], ["config", "list"],
]  # fmt: skip


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "charlm")
def test_help_text_survives_rich_markup(command: list[str]) -> None:
    """A `[default: x]` in help text is a rich style tag unless escaped: rich drops it and leaves
    "char, word or bpe ." behind (issue 26). No help may show such a gap."""
    from typer.testing import CliRunner

    from charlm.cli import app

    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    gaps = [line for line in result.output.splitlines() if re.search(r"\w \.(\s|$)", line)]
    assert not gaps, gaps


def test_prepare_help_shows_the_data_defaults() -> None:
    from typer.testing import CliRunner

    from charlm.cli import app
    from charlm.config import DataConfig

    text = CliRunner().invoke(app, ["prepare", "--help"], env={"COLUMNS": "200"}).output
    d = DataConfig()
    for shown in (d.level, d.vocab_size, d.val_fraction, d.segments, d.word_split, "lower"):
        assert f"[default: {shown}]" in text
