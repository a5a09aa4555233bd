"""Evaluation: the same number as training's validation, unknown characters, JSON output."""

from __future__ import annotations

import json
import math
from pathlib import Path

from helpers import cli, pattern_text, train_tiny, write_corpus

from charlm.rundir.records import read_metrics


def test_evaluate_equals_validation_in_training(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    held_out = write_corpus(tmp_path, pattern_text(1500, seed=9), "held_out.txt")
    result = train_tiny(corpus, "--val-file", held_out, "--out", tmp_path / "run", steps=20)
    assert result.exit_code == 0, result.stderr
    val = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "val"][-1]
    scored = cli(
        "evaluate", tmp_path / "run", "--text", held_out, "--json", "--checkpoint", "latest"
    )
    assert scored.exit_code == 0, scored.stderr
    numbers = json.loads(scored.stdout)
    assert {"loss", "perplexity", "bits_per_char", "tokens"} <= set(numbers)
    assert math.isclose(numbers["loss"], val["val_loss"], rel_tol=1e-6)
    assert math.isclose(numbers["bits_per_char"], val["val_bits_per_char"], rel_tol=1e-6)
    assert math.isclose(numbers["perplexity"], math.exp(numbers["loss"]), rel_tol=1e-9)


def test_unseen_characters_are_unknown_not_a_crash(tmp_path: Path) -> None:
    result = train_tiny(write_corpus(tmp_path), "--out", tmp_path / "run", steps=5)
    assert result.exit_code == 0
    strange = write_corpus(tmp_path, "abc Ж 漢字 🙂 xyz\n" * 20, "strange.txt")
    scored = cli("evaluate", tmp_path / "run", "--text", strange)
    assert scored.exit_code == 0, scored.stderr
    assert "perplexity" in scored.stdout
    sampled = cli("sample", tmp_path / "run", "--prime", "Ж🙂", "--length", "10", "--seed", "1")
    assert sampled.exit_code == 0, sampled.stderr


def test_bad_text_is_a_clean_error(tmp_path: Path) -> None:
    train_tiny(write_corpus(tmp_path), "--out", tmp_path / "run", steps=5)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc \xff\xfe abc")
    result = cli("evaluate", tmp_path / "run", "--text", bad)
    assert (
        result.exit_code == 1
        and "byte offset 4" in result.stderr
        and "Traceback" not in result.stderr
    )
    result = cli("evaluate", tmp_path / "run", "--text", tmp_path / "missing.txt")
    assert result.exit_code == 1 and "missing.txt" in result.stderr


def test_evaluate_json_names_the_checkpoint_its_step_and_level(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    run = tmp_path / "run"
    assert train_tiny(corpus, "--out", run, "--set", "train.eval_every=4", steps=12).exit_code == 0
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    for which, pointer in (("latest", {"name": "step-00000012", "step": 12}), ("best", best)):
        scored = cli("evaluate", run, "--text", corpus, "--json", "--checkpoint", which)
        assert scored.exit_code == 0, scored.stderr
        numbers = json.loads(scored.stdout)
        assert numbers["checkpoint"] == str(run / "checkpoints" / pointer["name"])
        assert numbers["step"] == pointer["step"] and numbers["level"] == "char"
        assert {"loss", "perplexity", "bits_per_char", "tokens", "chars"} <= set(numbers)
    folder = run / "checkpoints" / "step-00000012"  # a checkpoint folder given itself
    numbers = json.loads(cli("evaluate", folder, "--text", corpus, "--json").stdout)
    assert (numbers["checkpoint"], numbers["step"]) == (str(folder), 12)
