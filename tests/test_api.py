"""The Python API (issue 13): charlm.load's LanguageModel gives the CLI's samples and scores,
encodes as training did, raises the CLI's errors; charlm.train trains as `charlm train` does;
the docstrings' and README's examples run; `sample --prime-file`."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_english
from helpers import TINY, cli, pattern_text, readme_blocks, write_corpus
from safetensors.torch import load_file

import charlm
import charlm.api
from charlm.config import SEED_MAX
from charlm.data.prepare import split_train_val
from charlm.data.tokenizer import SENTENCE_END, SENTENCE_START
from charlm.errors import (
    ArgumentError,
    ArgumentTypeError,
    CheckpointError,
    DataError,
    UsageError,
)

TINY_SETTINGS = {TINY[i + 1].split("=")[0]: TINY[i + 1].split("=")[1] for i in range(0, 16, 2)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/mine (a tiny char run), input.txt (its text), held_out.txt: the README's names."""
    root = tmp_path_factory.mktemp("api")
    write_corpus(root, name="input.txt")
    write_corpus(root, pattern_text(1500, seed=9), "held_out.txt")
    result = cli(
        "train", root / "input.txt", "--out", root / "runs" / "mine", "-q", *TINY,
        "--set", "train.max_steps=40", "--set", "optim.lr=0.01",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def word_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("api-word")
    text = make_english(300)
    result = cli(
        "train", write_corpus(root, text), "--out", root / "run", "-q", *TINY,
        "--set", "data.level=word", "--set", "data.vocab_size=0",
        "--set", "data.batching=sentence", "--set", "train.max_steps=10",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return root / "run", text


def test_generate_gives_the_cli_sample_for_the_same_seed(folder: Path) -> None:
    run = folder / "runs" / "mine"
    lm = charlm.load(run)
    for options, kwargs in [
        ([], {}),
        (["--prime", "abc ", "--temperature", "0.7", "--top-k", "3"], {"prime": "abc ",
         "temperature": 0.7, "top_k": 3}),
        (["--top-p", "0.8"], {"top_p": 0.8}),
    ]:  # fmt: skip
        result = cli("sample", run, "--seed", "5", "--length", "60", *options)
        assert result.exit_code == 0, result.stderr
        text = lm.generate(length=60, seed=5, **kwargs)
        assert result.stdout == text + ("" if text.endswith("\n") else "\n")
        assert len(text) >= 60 and text.startswith(kwargs.get("prime", ""))
    assert lm.generate(length=60, seed=5) != lm.generate(length=60, seed=6)


def test_stream_yields_the_text_piece_by_piece(folder: Path) -> None:
    lm = charlm.load(folder / "runs" / "mine")
    stream = lm.stream("abc ", length=30, seed=2)
    first = next(stream)  # made before the rest exists
    rest = list(stream)
    assert first == "a" and len(rest) >= 30
    assert first + "".join(rest) == lm.generate("abc ", length=30, seed=2)


def test_score_gives_charlm_evaluates_numbers(folder: Path) -> None:
    run, held_out = folder / "runs" / "mine", folder / "held_out.txt"
    lm = charlm.load(run)
    result = cli("evaluate", run, "--text", held_out, "--json")
    assert result.exit_code == 0, result.stderr
    scored = {"checkpoint": str(lm.path), "step": lm.step, "level": lm.level}
    numbers = lm.score(held_out.read_text(encoding="utf-8")).as_dict()
    assert json.loads(result.stdout) == {**scored, **numbers}
    scores = lm.score(held_out.read_text(encoding="utf-8"), batch_size=2)
    assert scores.loss > 0 and scores.perplexity == pytest.approx(np.exp(scores.loss))
    assert lm.score_file(held_out, batch_size=2) == scores


def test_the_model_its_settings_and_tokenizer_are_exposed(folder: Path) -> None:
    run = folder / "runs" / "mine"
    lm = charlm.load(run, device="cpu", which="latest")
    assert isinstance(lm.module, torch.nn.Module) and not lm.module.training
    assert lm.step == 40 and lm.path.name == "step-00000040"
    assert lm.config.model.hidden_size == 16 and lm.device == torch.device("cpu")
    assert lm.vocab_size == lm.module.embedding.num_embeddings == lm.tokenizer.get_vocab_size()
    saved = load_file(str(lm.path / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in lm.module.state_dict().items())
    # Char level: the ids training wrote for the same text (unseen characters -> <unk>, id 0).
    train_part, _ = split_train_val((folder / "input.txt").read_text(encoding="utf-8"), 0.05)
    assert lm.encode(train_part) == np.fromfile(run / "data" / "train.bin", "<u2").tolist()
    assert lm.encode("abc Q")[-1] == 0 and lm.decode(lm.encode("abc xyz\n")) == "abc xyz\n"


def test_word_encode_splits_sentences_exactly_as_training_prepared_them(
    word_run: tuple[Path, str],
) -> None:
    run, text = word_run
    lm = charlm.load(run)
    train_part, _ = split_train_val(text, 0.05)
    assert lm.encode(train_part) == np.fromfile(run / "data" / "train.bin", "<u2").tolist()
    ids = lm.encode("The cat sat. The dog ran!")
    start, end = (lm.tokenizer.token_to_id(t) for t in (SENTENCE_START, SENTENCE_END))
    words = [lm.tokenizer.id_to_token(i) for i in ids]
    assert words == [SENTENCE_START, "the", "cat", "sat", ".", SENTENCE_END,
                     SENTENCE_START, "the", "dog", "ran", "!", SENTENCE_END]  # fmt: skip
    assert ids.count(start) == ids.count(end) == 2
    assert lm.decode(ids) == "the cat sat.\nthe dog ran!\n"


def test_api_errors_are_charlms_with_the_clis_messages(folder: Path, tmp_path: Path) -> None:
    run = folder / "runs" / "mine"
    for call, cli_args, kind in [
        (lambda: charlm.load(tmp_path / "nothing"), ["sample", tmp_path / "nothing"], CheckpointError),
        (lambda: charlm.load(run).score("a"), None, DataError),
        (lambda: charlm.train(out=tmp_path / "r", overrides=["model.cell=nope"]),
         ["train", "--out", tmp_path / "r", "--set", "model.cell=nope"], UsageError),
    ]:  # fmt: skip
        with pytest.raises(kind) as raised:
            call()
        if cli_args is not None:
            result = cli(*cli_args)
            assert result.exit_code == raised.value.exit_code
            assert result.stderr.strip() == f"charlm: error: {raised.value}"
    assert not (tmp_path / "r").exists()


# -- arguments: Python names and built-in types from the API, flags from the CLI (issue 24) ------


def _argument_cases(run: Path, tmp_path: Path) -> list:
    lm = charlm.load(run)
    return [  # (call, built-in type, message)
        (lambda: lm.score(123), TypeError, "score() takes text as a str, got int"),
        (lambda: lm.score("abc", batch_size=0), ValueError, "batch_size must be at least 1 (got 0)"),
        (lambda: lm.generate(length=-3), ValueError, "length must be at least 1 (got -3)"),
        (lambda: lm.generate(length="5"), TypeError, "generate() takes length as an int, got str"),
        (lambda: lm.stream(length=True), TypeError, "stream() takes length as an int, got bool"),
        (lambda: lm.generate(prime=3), TypeError, "generate() takes prime as a str, got int"),
        (lambda: lm.generate(seed=1.5), TypeError, "generate() takes seed as an int or None, got float"),
        (lambda: lm.generate(temperature="hot"), TypeError,
         "generate() takes temperature as a number, got str"),
        (lambda: lm.generate(temperature=-1), ValueError,
         "temperature must be 0 (greedy) or a finite positive number (got -1)"),
        (lambda: lm.generate(top_k=-2), ValueError, "top_k must be 0 (off) or positive (got -2)"),
        (lambda: lm.stream(top_p=2.0), ValueError, "top_p must be in (0, 1] (got 2.0)"),
        (lambda: lm.generate(seed=-1), ValueError, f"seed must be in 0..{SEED_MAX} (got -1)"),
        (lambda: lm.generate(min_words=-1), ValueError, "min_words must not be negative (got -1)"),
        (lambda: lm.generate(sentences="yes"), TypeError,
         "generate() takes sentences as True, False or None, got str"),
        (lambda: lm.generate(length=10**15), ValueError, "length 1000000000000000 needs about"),
        (lambda: lm.encode(5), TypeError, "encode() takes text as a str, got int"),
        (lambda: lm.decode(5), TypeError, "decode() takes ids as an iterable of ints, got int"),
        (lambda: lm.decode([1, 2.5]), TypeError, "decode() takes ids as ints, got float at index 1"),
        (lambda: lm.decode([1, 10**6]), ValueError,
         f"ids[1] is 1000000, outside the vocabulary (0..{lm.vocab_size - 1})"),
        (lambda: lm.score_file(7), TypeError,
         "score_file() takes path as a path (str or pathlib.Path), got int"),
        (lambda: lm.score_file(run, errors="ignore"), ValueError,
         "errors must be 'strict' or 'replace' (got 'ignore')"),
        (lambda: charlm.load(None), TypeError,
         "load() takes path as a path (str or pathlib.Path), got NoneType"),
        (lambda: charlm.load(run, device="tpu"), ValueError,
         "device must be 'auto', 'cpu', 'cuda' or 'mps' (got 'tpu')"),
        (lambda: charlm.load(run, which="x"), ValueError, "which must be 'best' or 'latest' (got 'x')"),
        (lambda: charlm.train(out=None), TypeError,
         "train() takes out as a path (str or pathlib.Path), got NoneType"),
        (lambda: charlm.train(out=tmp_path / "r", resume="yes"), TypeError,
         "train() takes resume as True or False, got str"),
        (lambda: charlm.train(out=tmp_path / "r", overrides=[1]), TypeError,
         "train() takes overrides as a mapping or an iterable of str, got int among its items"),
        (lambda: charlm.train("a.txt", out=tmp_path / "r", data="d"), ValueError,
         "pass either text or data, not both"),
        (lambda: charlm.train(out=tmp_path / "r", init_keep=["step"]), ValueError,
         "init_keep needs init_from (the run whose state it keeps)"),
        (lambda: charlm.train(out=tmp_path / "r", init_from=run, init_keep=["x"]), ValueError,
         "init_keep items must be 'optimizer' or 'step' (got 'x')"),
        (lambda: charlm.train(out=tmp_path / "r", errors="ignore"), ValueError,
         "errors must be 'strict' or 'replace' (got 'ignore')"),
    ] + ([] if torch.cuda.is_available() else [
        (lambda: charlm.load(run, device="cuda"), ValueError,
         "device='cuda' but this PyTorch sees no CUDA device; use device='cpu' (or 'auto')"),
    ])  # fmt: skip


def test_api_argument_errors_are_value_and_type_errors_naming_the_argument(
    folder: Path, tmp_path: Path
) -> None:
    for call, builtin, message in _argument_cases(folder / "runs" / "mine", tmp_path):
        with pytest.raises(builtin) as raised:
            call()
        error = raised.value
        assert str(error).startswith(message), (message, str(error))
        assert isinstance(error, UsageError) and error.exit_code == 2  # still charlm's own
        kind = ArgumentError if builtin is ValueError else ArgumentTypeError
        assert isinstance(error, kind) and "--" not in str(error)
    assert not (tmp_path / "r").exists()


def test_the_cli_still_names_its_flags(folder: Path, tmp_path: Path) -> None:
    run, text = folder / "runs" / "mine", folder / "held_out.txt"
    for args, message in [
        (["sample", run, "--length", "0"], "--length must be at least 1 (got 0)"),
        (["sample", run, "--top-p", "2"], "--top-p must be in (0, 1] (got 2.0)"),
        (["sample", run, "--top-k", "-2"], "--top-k must be 0 (off) or positive (got -2)"),
        (["sample", run, "--temperature", "-1"],
         "--temperature must be 0 (greedy) or a finite positive number (got -1.0)"),
        (["sample", run, "--num-samples", "1000000000000"], "--num-samples 1000000000000 x --length 500 needs about"),
        (["evaluate", run, "--text", text, "--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
        (["train", text, "--data", tmp_path, "--out", tmp_path / "r"], "pass either TEXT or --data, not both"),
        (["train", "--out", tmp_path / "r", "--init-keep", "step"],
         "--init-keep needs --init-from (the run whose state it keeps)"),
    ] + ([] if torch.cuda.is_available() else [
        (["sample", run, "--device", "cuda"],
         "--device cuda but this PyTorch sees no CUDA device; use --device cpu (or auto)"),
    ]):  # fmt: skip
        result = cli(*args, "-q") if args[0] == "train" else cli(*args)
        assert result.exit_code == 2, (args, result.stderr)
        assert result.stderr.startswith(f"charlm: error: {message}"), (args, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr


def test_a_machine_fault_is_the_clis_one_line_error_not_an_oserror(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import charlm.data.prepare

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", "data/train.bin")

    monkeypatch.setattr(charlm.data.prepare, "_write_ids", read_only)
    with pytest.raises(charlm.errors.CharlmError) as raised:
        charlm.train(folder / "input.txt", out=tmp_path / "r", overrides=TINY_SETTINGS,
                     progress=False)  # fmt: skip
    result = cli("train", folder / "input.txt", "--out", tmp_path / "cli", "-q", *TINY)
    assert result.exit_code == raised.value.exit_code == 1
    assert result.stderr.strip() == f"charlm: error: {raised.value}"
    assert str(raised.value).startswith("data/train.bin: read-only file system")


def test_charlm_train_trains_exactly_as_the_cli_does(folder: Path, tmp_path: Path) -> None:
    settings = {**TINY_SETTINGS, "train.max_steps": 10, "model.dropout": 0.1}
    result = charlm.train(
        folder / "input.txt", out=tmp_path / "api", overrides=settings, progress=False
    )
    assert result.steps == 10 and result.run_dir == tmp_path / "api"
    items = [x for key, value in settings.items() for x in ("--set", f"{key}={value}")]
    done = cli("train", folder / "input.txt", "--out", tmp_path / "cli", "-q", *items)
    assert done.exit_code == 0, done.stderr
    a, b = (charlm.load(tmp_path / run, which="latest") for run in ("api", "cli"))
    assert a.config == b.config and a.step == b.step == 10
    weights = [m.module.state_dict() for m in (a, b)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_docstring_examples_run(folder: Path, tmp_path: Path) -> None:
    globs = {
        "charlm": charlm,
        "run": folder / "runs" / "mine",
        "held_out": folder / "held_out.txt",
        "corpus": folder / "input.txt",
        "tmp": tmp_path,
        "tiny": TINY_SETTINGS,
    }
    tests = doctest.DocTestFinder().find(charlm.api, globs=globs)
    assert sum(len(t.examples) for t in tests) >= 10
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


@pytest.mark.slow
def test_the_readme_python_api_examples_run_as_written(folder: Path, tmp_path: Path) -> None:
    for name in ("input.txt", "held_out.txt"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mine").symlink_to(folder / "runs" / "mine")
    programs = readme_blocks("## Python API")
    assert len(programs) == 3
    outputs = []
    for program in programs:
        done = subprocess.run(
            [sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    first, rest = outputs[0].split("\n", 1)
    assert first.startswith("LanguageModel('runs/mine/checkpoints/step-")
    sampled = cli("sample", tmp_path / "runs" / "mine", "--prime", "The ", "--length", "200",
                  "--temperature", "0.8", "--seed", "1")  # fmt: skip
    assert sampled.exit_code == 0 and rest.startswith(sampled.stdout)  # streamed = the CLI's
    scores, ids, settings = rest[len(sampled.stdout) :].strip("\n").splitlines()
    assert "nats/token, perplexity" in scores and ids.startswith("[")
    assert settings.startswith("gru ") and settings.endswith(" cpu")
    steps, best = outputs[1].split()
    assert int(steps) == 30 and float(best) > 0
    assert charlm.load(tmp_path / "runs" / "api-tuned").step == 10
    value, kind, other = outputs[2].splitlines()  # the exceptions a Python user catches
    assert value == "length must be at least 1 (got -3)"
    assert kind == "score() takes text as a str, got int"
    assert other.startswith("runs/missing: ")


def test_overrides_may_be_a_mapping_of_python_values() -> None:
    items = charlm.api._override_items({"train.compile": True, "train.max_steps": 5, "x.y": None})
    assert items == ["train.compile=true", "train.max_steps=5", "x.y=null"]
    assert charlm.api._override_items(["a.b=1"]) == ["a.b=1"]


# -- sample --prime-file ---------------------------------------------------------------------


def test_prime_file_gives_the_same_sample_as_the_same_prime(folder: Path, tmp_path: Path) -> None:
    run = folder / "runs" / "mine"
    prime = "abc abd xyz\n" * 30 + "abc "  # a long prompt, line breaks included
    path = tmp_path / "prime.txt"
    path.write_text(prime, encoding="utf-8")
    common = ("--length", "40", "--seed", "4")
    by_file = cli("sample", run, "--prime-file", path, *common)
    assert by_file.exit_code == 0, by_file.stderr
    assert by_file.stdout == cli("sample", run, "--prime", prime, *common).stdout
    assert by_file.stdout.startswith(prime)
    from typer.testing import CliRunner

    from charlm.cli import app

    piped = CliRunner().invoke(app, ["sample", str(run), "--prime-file", "-", *common], input=prime)
    assert piped.exit_code == 0 and piped.stdout == by_file.stdout


def test_prime_file_refusals_are_one_line(folder: Path, tmp_path: Path) -> None:
    run = folder / "runs" / "mine"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc \xff abc")
    (tmp_path / "ok.txt").write_text("abc", encoding="utf-8")
    for args, code, message in [
        (["--prime", "a", "--prime-file", tmp_path / "ok.txt"], 2,
         "pass either --prime or --prime-file, not both"),
        (["--prime-file", tmp_path / "missing.txt"], 2, "missing.txt: no such file"),
        (["--prime-file", tmp_path], 2, "is a folder"),
        (["--prime-file", bad], 1, "bad.txt: not UTF-8 text (invalid byte at offset 4)"),
    ]:  # fmt: skip
        result = cli("sample", run, "--length", "5", *args)
        assert result.exit_code == code, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and message in result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
