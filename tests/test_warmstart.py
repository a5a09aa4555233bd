"""Warm start (`train --init-from`, issue 13): the source's weights and vocabulary, the unknown
tokens counted, shape changes refused byte-identically, and an exact resume afterwards."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import cli, pattern_text, readme_blocks, train_tiny, write_corpus
from safetensors.torch import load_file
from test_reliability import assert_one_line_refusal, tree_hash
from tokenizers import Tokenizer, models
from torch.nn import functional as F

import charlm
from charlm.data.batching import Cursor, StreamBatcher, to_tensors
from charlm.data.prepare import load_prepared, split_train_val
from charlm.errors import CheckpointError
from charlm.rundir.records import read_metrics
from charlm.training.warmstart import check_vocabulary

NEW_TEXT = pattern_text(seed=4).replace("xyz", "xQz")  # Q: a character the source never saw


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with runs/mine (a tiny char run, 20 steps) and new.txt (text with unseen Q)."""
    folder = tmp_path_factory.mktemp("warm")
    result = train_tiny(write_corpus(folder), "--out", folder / "runs" / "mine", steps=20)
    assert result.exit_code == 0, result.stderr
    write_corpus(folder, NEW_TEXT, "new.txt")
    return folder


def warm(source: Path, out: Path, *args: str, steps: int = 10, quiet: bool = True) -> object:
    """`charlm train new.txt --init-from runs/mine --out OUT` (no new.txt when ARGS has --data)."""
    text = [] if "--data" in args else [source / "new.txt"]
    return cli(
        "train", *text, "--init-from", source / "runs" / "mine", "--out", out,
        *(["-q"] if quiet else []), "--set", f"train.max_steps={steps}", *args,
    )  # fmt: skip


def test_unknown_tokens_are_counted_in_the_header_the_metrics_and_meta(
    source: Path, tmp_path: Path
) -> None:
    result = warm(source, tmp_path / "tuned", quiet=False)
    assert result.exit_code == 0, result.stderr
    train_part, val_part = split_train_val(NEW_TEXT, 0.05)
    expected = train_part.count("Q")
    assert expected > 100
    meta = load_prepared(tmp_path / "tuned" / "data").meta
    assert meta["train_unknown"] == expected and meta["val_unknown"] == val_part.count("Q")
    start = read_metrics(tmp_path / "tuned" / "metrics.jsonl")[0]
    assert start["kind"] == "start" and start["unknown_tokens"] == expected
    assert start["unknown_share"] == pytest.approx(expected / len(train_part))
    assert start["init_from"].endswith("step-00000020") and start["init_keep"] == []
    header = " ".join(result.stderr.split())  # the console wraps long lines
    assert f"{expected:,} unknown tokens in the training text, " in header
    assert f"{expected / len(train_part):.2%} of its tokens" in header
    # The new run's vocabulary is the source's, byte for byte.
    source_tokenizer = (source / "runs" / "mine" / "data" / "tokenizer.json").read_bytes()
    assert (tmp_path / "tuned" / "data" / "tokenizer.json").read_bytes() == source_tokenizer


def test_the_first_loss_is_the_source_models_loss_on_the_new_text(
    source: Path, tmp_path: Path
) -> None:
    result = warm(source, tmp_path / "tuned", "--set", "train.log_every=1", steps=1)
    assert result.exit_code == 0, result.stderr
    first = next(
        r for r in read_metrics(tmp_path / "tuned" / "metrics.jsonl") if r["kind"] == "train"
    )
    # The source model, scored independently on the first batch of the new run's data.
    lm = charlm.load(source / "runs" / "mine")
    data = load_prepared(tmp_path / "tuned" / "data")
    t = lm.config.train
    x, y, _ = StreamBatcher(data.train_ids, t.batch_size, t.seq_len).batch(Cursor())
    inputs, targets = to_tensors(x, y, lm.device)
    with torch.no_grad():
        logits, _ = lm.module(inputs, lm.module.initial_state(inputs.shape[1], lm.device))
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    assert first["step"] == 1 and math.isclose(first["loss"], float(loss), rel_tol=1e-5)
    # A fresh model of the same shape starts elsewhere: the check above could fail.
    fresh = train_tiny(source / "new.txt", "--out", tmp_path / "fresh", "--set",
                       "train.log_every=1", steps=1)  # fmt: skip
    assert fresh.exit_code == 0
    scratch = next(
        r for r in read_metrics(tmp_path / "fresh" / "metrics.jsonl") if r["kind"] == "train"
    )
    assert abs(scratch["loss"] - first["loss"]) > 0.1


def checkpoint_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


@pytest.mark.parametrize("resume_with_text", [True, False])
def test_a_warm_started_run_resumes_exactly(
    source: Path, tmp_path: Path, resume_with_text: bool
) -> None:
    common = ("--set", "model.dropout=0.2")
    assert warm(source, tmp_path / "straight", *common, steps=20).exit_code == 0
    assert warm(source, tmp_path / "halves", *common, steps=10).exit_code == 0
    text = [source / "new.txt"] if resume_with_text else []
    resumed = cli("train", *text, "--out", tmp_path / "halves", "--resume", "-q",
                  "--set", "train.max_steps=20", *common)  # fmt: skip
    assert resumed.exit_code == 0, resumed.stderr
    a, b = (checkpoint_weights(tmp_path / run, 20) for run in ("straight", "halves"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_init_keep_takes_the_optimizer_and_the_step_counter(source: Path, tmp_path: Path) -> None:
    def optimizer_steps(run: Path, step: int) -> float:
        path = run / "checkpoints" / f"step-{step:08d}" / "optimizer.pt"
        state = torch.load(path, weights_only=True)["state"]
        return float(state[0]["step"])

    assert warm(source, tmp_path / "fresh", steps=10).exit_code == 0
    assert optimizer_steps(tmp_path / "fresh", 10) == 10  # a fresh optimiser
    kept = warm(source, tmp_path / "kept", "--init-keep", "optimizer", "--init-keep", "step",
                steps=30)  # fmt: skip
    assert kept.exit_code == 0, kept.stderr
    start = read_metrics(tmp_path / "kept" / "metrics.jsonl")[0]
    assert start["init_keep"] == ["optimizer", "step"]
    assert start["step"] == start["init_step"] == charlm.load(source / "runs" / "mine").step
    # The source's optimiser counted init_step steps; this run went on from there to step 30.
    assert optimizer_steps(tmp_path / "kept", 30) == 30


REFUSED = [  # (extra arguments, the refusal's text)
    (["--set", "model.hidden_size=32", "--set", "model.layers=2"],
     "model.layers: 1 (source) vs 2 (requested); model.hidden_size: 16 (source) vs 32 (requested)"),
    (["--set", "model.cell=lstm"], "model.cell: 'gru' (source) vs 'lstm' (requested)"),
    (["--set", "data.level=word"], "data.level: 'char' (source) vs 'word' (requested)"),
    (["--init-keep", "weights"], "--init-keep 'weights' is not one of: optimizer, step"),
    (["--init-keep", "optimizer", "--set", "optim.name=adam"], "optim.name=rmsprop"),
    (["--init-keep", "step"], "would train no step; set train.max_steps above it"),
    (["--resume"], "--init-from starts a new run"),
    (["--out", "RUN"], "lies inside --out"),
    (["--data", "RUN/data"], None),  # allowed: the source's own vocabulary (checked below)
    (["--data", "OTHER_DATA"], "prepared with another vocabulary"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_refusals_leave_every_file_byte_identical(
    source: Path, tmp_path_factory: pytest.TempPathFactory, args: list[str], message: str | None
) -> None:
    other = tmp_path_factory.mktemp("other")
    if "OTHER_DATA" in args:
        prepared = cli("prepare", source / "new.txt", "--out", other / "data")
        assert prepared.exit_code == 0
    names = {"RUN": str(source / "runs" / "mine"), "OTHER_DATA": str(other / "data")}
    args = [names.get(a, a).replace("RUN/", names["RUN"] + "/") for a in args]
    before = tree_hash(source), tree_hash(other)
    result = warm(source, other / "tuned", *args)
    if message is None:
        assert result.exit_code == 0, result.stderr
        return
    line = assert_one_line_refusal(result, "train", 2)
    assert message in line
    assert (tree_hash(source), tree_hash(other)) == before and not (other / "tuned").exists()


def test_init_keep_without_init_from_is_refused(tmp_path: Path) -> None:
    result = cli("train", "--out", tmp_path / "r", "--init-keep", "optimizer")
    assert_one_line_refusal(result, "train", 2)
    assert "--init-keep needs --init-from" in result.stderr and not (tmp_path / "r").exists()


def test_a_vocabulary_without_an_unknown_token_is_refused() -> None:
    no_unk = Tokenizer(models.WordLevel(vocab={"a": 0, "b": 1}, unk_token="<unk>"))
    with pytest.raises(CheckpointError, match="has no unknown token"):
        check_vocabulary(no_unk, "char", Path("src"))
    with_unk = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1}, unk_token="<unk>"))
    check_vocabulary(with_unk, "char", Path("src"))
    check_vocabulary(Tokenizer(models.BPE()), "bpe", Path("src"))  # byte-level: spells anything


def test_word_level_unseen_words_become_the_unknown_token(tmp_path: Path) -> None:
    from conftest import make_english

    corpus = write_corpus(tmp_path, make_english(200))
    result = train_tiny(corpus, "--out", tmp_path / "words", "--set", "data.level=word",
                        "--set", "data.vocab_size=0", steps=5)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    new = write_corpus(tmp_path, "Zebras graze.\n" * 40 + make_english(200, seed=3), "new.txt")
    tuned = cli("train", new, "--init-from", tmp_path / "words", "--out", tmp_path / "tuned",
                "-q", "--set", "train.max_steps=5")  # fmt: skip
    assert tuned.exit_code == 0, tuned.stderr
    lm = charlm.load(tmp_path / "words")
    train_part, _ = split_train_val(new.read_text(encoding="utf-8"), 0.05)
    unk = lm.tokenizer.token_to_id("UNKNOWN_TOKEN")
    expected = lm.encode(train_part).count(unk)
    assert expected >= 2 * 40  # zebras, graze: at the start, so in the training part
    start = read_metrics(tmp_path / "tuned" / "metrics.jsonl")[0]
    assert start["unknown_tokens"] == expected


@pytest.mark.slow
def test_the_readme_fine_tuning_example_runs_as_written(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mine").symlink_to(source / "runs" / "mine")
    (tmp_path / "new.txt").write_text(NEW_TEXT, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    commands = readme_blocks("## Fine-tuning")[0]
    assert [c[:2] for c in commands] == [["charlm", "train"], ["charlm", "sample"],
                                         ["charlm", "train"], ["charlm", "train"]]  # fmt: skip
    for command in commands:
        result = cli(*command[1:])
        assert result.exit_code == 0, (command, result.stderr)
    assert charlm.load("runs/mine-tuned", which="latest").step == 400
    kept = read_metrics(Path("runs/mine-tuned2/metrics.jsonl"))[0]
    assert kept["init_keep"] == ["optimizer"]
    assert charlm.load("runs/mine-tuned2").config.optim.lr == pytest.approx(5e-4)
