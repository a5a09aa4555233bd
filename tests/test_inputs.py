"""Inputs that never end or are too large (issue 24, item 2): nothing is read whole without a
bound. A prime is read to 1 MB; a stream (`-`, a FIFO) is copied to disk up to its limit; a
device is refused as a text; a config file, a CSV line or field are capped; `evaluate` refuses
a text too big for memory. Each ends at once with one line naming the input and the limit."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TINY, cli, pattern_text, write_corpus

import charlm
import charlm.api
import charlm.data.reading
import charlm.inference.sample
from charlm.data.reading import TextSource
from charlm.errors import DataError

resource = pytest.importorskip("resource")  # POSIX: FIFOs, devices and rlimits
ROOT = Path(__file__).resolve().parents[1]
MEMORY = 4 << 30  # the child's data (heap, anonymous maps): a read without a bound fails, not
# the machine (RLIMIT_DATA rather than RLIMIT_AS, which a CUDA build's libraries alone exceed)
WAIT_S = 45  # far longer than any refusal takes; a command still reading then reads without end
SPOOL_LIMIT = 8_000_000  # stands in for half the free disk, so an endless stream stops quickly
CHUNK = b"abc abd xyz\n" * 100_000  # what an endless writer writes, over and over


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    result = cli(
        "train", write_corpus(root), "--out", root / "run", "-q", *TINY,
        "--set", "train.max_steps=10",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return root / "run"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY, MEMORY))


def _endless(open_target: object) -> threading.Thread:
    """A writer that never stops on its own: it ends when the reader goes (a broken pipe)."""

    def write() -> None:
        try:
            target = open_target() if callable(open_target) else open_target
            with target:
                while True:
                    target.write(CHUNK)
        except (BrokenPipeError, OSError, ValueError):
            pass

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO fed by a writer that never stops."""
    path = tmp_path / "endless.txt"
    os.mkfifo(path)
    writer = _endless(lambda: open(path, "wb"))  # noqa: SIM115 (the thread closes it)
    yield path
    if writer.is_alive():  # the command never opened it: let the writer's open return, then fail
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(timeout=10)


def charlm_cli(
    tmp_path: Path, *args: str | Path, stdin: object = None, endless_stdin: bool = False
) -> tuple[int, str, str]:
    """`charlm ARGS` in a child process with bounded memory, its copies going to `tmp_path`
    (TMPDIR) and the spool limit at SPOOL_LIMIT: (exit code, stdout, stderr). Fails the test
    if the command is still running after WAIT_S."""
    patch = f"import charlm.data.reading as r; r.spool_limit = lambda folder: {SPOOL_LIMIT}"
    code = f"{patch}\nfrom charlm.cli.app import main\nmain()"
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", code, *map(str, args)],
            stdin=subprocess.PIPE if endless_stdin else stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            preexec_fn=_limit_memory,
        )
        if endless_stdin:
            _endless(process.stdin)
        started = time.monotonic()
        try:
            code_ = process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"charlm {' '.join(map(str, args))}: still reading after {WAIT_S} s")
    assert time.monotonic() - started < WAIT_S
    return code_, out.read_text(errors="replace"), err.read_text(errors="replace")


def assert_one_line(result: tuple[int, str, str], code: int, *parts: str) -> None:
    exit_code, stdout, stderr = result
    assert exit_code == code, stderr[-2000:]
    assert stderr.count("\n") == 1 and stderr.startswith("charlm: error: "), stderr[-2000:]
    assert all(part in stderr for part in parts), stderr
    assert stdout == ""


# -- the prime ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["/dev/urandom", "/dev/zero", "fifo", "stdin"])
def test_an_endless_prime_is_refused_at_1_mb(
    run: Path, tmp_path: Path, source: str, request: pytest.FixtureRequest
) -> None:
    name = str(request.getfixturevalue("fifo")) if source == "fifo" else source
    name = "-" if source == "stdin" else name
    result = charlm_cli(
        tmp_path, "sample", run, "--prime-file", name, "--length", "5", "--device", "cpu",
        endless_stdin=source == "stdin",
    )  # fmt: skip
    assert_one_line(result, 1, f"--prime-file {name}: longer than 1.0 MB, the most a prime may be")


def test_a_prime_past_the_limit_is_refused_from_a_file_and_from_python(
    run: Path, tmp_path: Path
) -> None:
    limit = charlm.inference.sample.PRIME_MAX
    over = tmp_path / "over.txt"
    over.write_bytes(b"a" * (limit + 1))
    refused = cli("sample", run, "--prime-file", over, "--length", "5", "--seed", "1")
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    assert f"--prime-file {over}: longer than 1.0 MB, the most a prime may be" in refused.stderr
    with pytest.raises(ValueError, match=r"^prime is 1,000,001 characters, more than a prime"):
        charlm.load(run).generate("a" * (limit + 1), length=5)
    under = tmp_path / "under.txt"
    under.write_text(pattern_text(20_000), encoding="utf-8")
    result = cli("sample", run, "--prime-file", under, "--length", "5", "--seed", "1")
    assert result.exit_code == 0 and result.stdout.startswith(under.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_a_prime_of_exactly_the_limit_still_samples(run: Path, tmp_path: Path) -> None:
    limit = charlm.inference.sample.PRIME_MAX
    text = (b"abc abd xyz\n" * (limit // 12 + 1))[:limit]
    at_limit = tmp_path / "at.txt"
    at_limit.write_bytes(text)
    result = cli("sample", run, "--prime-file", at_limit, "--length", "5", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(text.decode()) and len(result.stdout) > limit


def test_a_long_prime_goes_through_the_model_in_chunks_with_the_same_result(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm = charlm.load(run)
    prime = pattern_text(3000, seed=2)
    whole = lm.generate(prime, length=40, temperature=0)
    monkeypatch.setattr(charlm.inference.sample, "PRIME_CHUNK", 7)
    assert lm.generate(prime, length=40, temperature=0) == whole


# -- streams and devices for prepare, train and evaluate ----------------------------------------


@pytest.mark.parametrize(
    ("command", "stdin", "named"),
    [
        (["evaluate", "RUN", "--text", "/dev/urandom", "--device", "cpu"], None, "/dev/urandom"),
        (["prepare", "/dev/zero", "--out", "OUT"], None, "/dev/zero"),
        (["train", "/dev/urandom", "--out", "OUT", "-q"], None, "/dev/urandom"),
        (["evaluate", "RUN", "--text", "-", "--device", "cpu"], "/dev/zero", "-"),
    ],
    ids=["evaluate-urandom", "prepare-zero", "train-urandom", "evaluate-stdin-zero"],
)
def test_a_device_as_the_text_is_refused_at_once(
    run: Path, tmp_path: Path, command: list[str], stdin: str | None, named: str
) -> None:
    args = [{"RUN": run, "OUT": tmp_path / "out"}.get(a, a) for a in command]
    with open(stdin or os.devnull, "rb") as source:
        result = charlm_cli(tmp_path, *args, stdin=source if stdin else None)
    what = "standard input is a device" if stdin else "a device"
    assert_one_line(result, 1, f"{named}: {what} (like /dev/urandom, which never ends), not a text")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "RUN", "--text", "FIFO", "--device", "cpu"],
        ["prepare", "FIFO", "--out", "OUT"],
        ["train", "-", "--out", "OUT", "-q", "--set", "train.device=cpu"],
    ],
    ids=["evaluate-fifo", "prepare-fifo", "train-stdin"],
)
def test_an_endless_stream_is_copied_only_up_to_its_limit(
    run: Path, tmp_path: Path, command: list[str], request: pytest.FixtureRequest
) -> None:
    names = {"RUN": run, "OUT": tmp_path / "out"}
    if "FIFO" in command:
        names["FIFO"] = request.getfixturevalue("fifo")
    args = [names.get(a, a) for a in command]
    result = charlm_cli(tmp_path, *args, endless_stdin="-" in command)
    name = names.get("FIFO", "-")
    assert_one_line(
        result, 1, f"{name}: the stream is longer than 8.0 MB, the most it is copied to",
        f"of the free space in {tmp_path}", "save it to a file",
    )  # fmt: skip
    assert not list(tmp_path.glob("charlm-spool-*")) and not (tmp_path / "out").exists()


def test_a_stream_under_the_limit_is_read_and_one_over_it_refused(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from charlm.cli import app

    text = pattern_text(3000, seed=4)
    monkeypatch.setattr(charlm.data.reading, "spool_limit", lambda folder: len(text))
    args = ["evaluate", str(run), "--text", "-", "--json"]
    read = CliRunner().invoke(app, args, input=text)
    assert read.exit_code == 0, read.stderr
    refused = CliRunner().invoke(app, args, input=text + "a")
    assert refused.exit_code == 1 and "-: the stream is longer than 3.0 KB" in refused.stderr


# -- config files, CSV lines, texts scored in memory ---------------------------------------------


def test_a_config_that_never_ends_is_refused(tmp_path: Path) -> None:
    result = charlm_cli(tmp_path, "config", "show", "--config", "/dev/zero")
    assert_one_line(
        result, 2, "/dev/zero: longer than 1,000,000 bytes, the most a config file may be"
    )


@pytest.fixture
def small_csv_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    saved = csv.field_size_limit()
    monkeypatch.setattr(charlm.data.reading, "CSV_FIELD_CHARS", 1000)
    yield
    csv.field_size_limit(saved)


def test_a_csv_line_or_field_past_its_limit_is_refused_not_held(
    tmp_path: Path, small_csv_limit: None
) -> None:
    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_text('id,body\n1,"an unclosed quote\n' + "abc abd xyz\n" * 200)
    one_line = tmp_path / "one_line.csv"
    one_line.write_text("id,body\n" + "1,abc abd xyz " * 200)
    fine = tmp_path / "fine.csv"
    fine.write_text("id,body\n" + "1,abc abd xyz\n" * 200)
    for path, what in [(unclosed, "the field at line"), (one_line, "a line")]:
        with pytest.raises(DataError) as raised:
            TextSource(path, csv_column="body").scan()
        assert str(raised.value).startswith(f"{path}: {what}")
        assert "longer than 1,000 characters, the most a CSV line or field may be" in str(
            raised.value
        )
    assert TextSource(fine, csv_column="body").read().count("abc") == 200


def test_evaluate_refuses_a_text_too_big_for_the_memory(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = write_corpus(tmp_path, pattern_text(3000), "held_out.txt")
    monkeypatch.setattr(charlm.api, "available_memory", lambda device: 10_000)
    with pytest.raises(DataError, match="held_out.txt: 3.0 KB of text needs about 96.0 KB of"):
        charlm.load(run).score_file(text)
    result = cli("evaluate", run, "--text", text)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "needs about 96.0 KB of memory to score, but 10.0 KB is available" in result.stderr
