"""A char GRU trained through the CLI learns an order-2 Markov source to within 0.1 nats of its entropy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli

from charlm.rundir.records import read_metrics


@pytest.mark.slow
def test_char_gru_reaches_the_entropy_of_a_markov_source(tmp_path: Path) -> None:
    task = tmp_path / "markov"
    made = cli(
        "data",
        "synth",
        "markov",
        "--order",
        "2",
        "--alphabet",
        "4",
        "--length",
        "60000",
        "--valid-length",
        "8000",
        "--seed",
        "3",
        "--out",
        task,
    )
    assert made.exit_code == 0, made.stderr
    entropy = json.loads((task / "truth.json").read_text())["best_loss"]
    run = tmp_path / "run"
    result = cli(
        "train",
        task / "train.txt",
        "--val-file",
        task / "valid.txt",
        "--out",
        run,
        "-q",
        "--set",
        "model.layers=1",
        "--set",
        "model.hidden_size=32",
        "--set",
        "model.embedding_dim=8",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.seq_len=32",
        "--set",
        "train.max_steps=200",
        "--set",
        "train.eval_every=50",
        "--set",
        "optim.lr=0.005",
    )
    assert result.exit_code == 0, result.stderr
    best = min(r["val_loss"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "val")
    assert best >= entropy - 0.02  # nothing beats the source (up to sampling noise of the text)
    assert best - entropy < 0.1, (best, entropy)
