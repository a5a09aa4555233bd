"""Checkpoints written by the code before the restructuring load and resume bit for bit.

The fixture in tests/fixtures/old_checkpoints was written by that code (make.py there says how);
its expected/ folder holds what the old code's own resume produced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from charlm.checkpoint import load_checkpoint
from tests.helpers import cli

FIXTURE = Path(__file__).parent / "fixtures" / "old_checkpoints"
RUNS = ("gru", "lstm-asgd")


@pytest.mark.parametrize("name", RUNS)
def test_an_old_run_resumes_bit_for_bit(tmp_path: Path, name: str) -> None:
    run = tmp_path / name
    shutil.copytree(FIXTURE / name, run)
    result = cli(
        "train", "--out", run, "--data", run / "data", "--resume", "-q",
        "--set", "train.max_steps=10",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    loaded = load_checkpoint(run, "latest")
    assert loaded.step == 10
    weights = load_file(str(loaded.path / "model.safetensors"))
    expected = load_file(str(FIXTURE / "expected" / f"{name}.safetensors"))
    assert weights.keys() == expected.keys()
    for key in expected:
        assert torch.equal(weights[key], expected[key]), key
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # "start" and "sample" records, `threads`, `warning`, `time` and `tokens` were added to the
    # log after the fixture was made; an old checkpoint never counted tokens, so its resumed
    # records say null.
    assert [r["step"] for r in records if r["kind"] == "sample"][-2:] == [8, 10]
    later = [r for r in records if r["step"] > 6 and r["kind"] not in ("start", "sample")]
    assert all(r.pop("tokens") is None and r.pop("time") for r in later)
    for record in later:
        for key in ("elapsed_s", "tokens_per_s", "threads", "warning"):
            record.pop(key, None)
    assert later == json.loads((FIXTURE / "expected" / f"{name}.json").read_text())


@pytest.mark.parametrize("name", RUNS)
def test_an_old_run_samples_evaluates_and_describes(tmp_path: Path, name: str) -> None:
    run = FIXTURE / name
    text = tmp_path / "t.txt"
    text.write_text("abc abd xyz\n" * 20, encoding="utf-8")
    sample = cli("sample", run, "--length", "20", "--seed", "1")
    assert sample.exit_code == 0, sample.stderr
    assert len(sample.stdout) >= 20
    evaluate = cli("evaluate", run, "--text", text)
    assert evaluate.exit_code == 0, evaluate.stderr
    info = cli("info", run)
    assert info.exit_code == 0, info.stderr
    assert name.split("-")[0] in info.stdout
