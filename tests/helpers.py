"""Helpers for the tests: tiny corpora, tiny training runs, and running the CLI."""

from __future__ import annotations

import random
import re
import shlex
import time
from pathlib import Path

import torch
from typer.testing import CliRunner

from charlm.cli import app
from charlm.config import ModelConfig
from charlm.model.network import RNNLanguageModel

# Small enough to train in about a second on a CPU, large enough to learn something.
TINY = (
    "--set",
    "model.layers=1",
    "--set",
    "model.hidden_size=16",
    "--set",
    "model.embedding_dim=8",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.seq_len=16",
    "--set",
    "train.log_every=5",
    "--set",
    "train.eval_every=10",
    "--set",
    "train.checkpoint_every=10",
)


def seeded_model(vocab_size: int, seed: int = 0, **settings: object) -> RNNLanguageModel:
    """A model built from ModelConfig(**settings) after torch.manual_seed(seed), as training
    builds it: the one way the tests make a small model."""
    torch.manual_seed(seed)
    return RNNLanguageModel(ModelConfig(**settings), vocab_size)  # type: ignore[arg-type]


def pattern_text(length: int = 6000, seed: int = 0) -> str:
    """A repeating phrase with a little noise: a char model learns it within a few dozen steps."""
    rng = random.Random(seed)
    words = ["abc ", "abd ", "xyz\n"]
    out = []
    while sum(map(len, out)) < length:
        out.append(rng.choice(words) if rng.random() < 0.2 else "abc abd xyz\n")
    return "".join(out)


def write_corpus(folder: Path, text: str | None = None, name: str = "corpus.txt") -> Path:
    path = folder / name
    path.write_text(text if text is not None else pattern_text(), encoding="utf-8")
    return path


def cli(*args: str | Path) -> object:
    """Run the CLI in-process; the result has exit_code, stdout and stderr."""
    return CliRunner().invoke(app, [str(a) for a in args])


def train_tiny(*args: str | Path, steps: int) -> object:
    """`charlm train ARGS -q` with the TINY model for `steps` steps, in-process."""
    return cli("train", *args, "-q", *TINY, "--set", f"train.max_steps={steps}")


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_blocks(heading: str) -> list:
    """The fenced blocks of README.md's section `heading`, in order: a bash block as a list of
    commands (each split as the shell would), any other block as its text."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(f"\n{heading}\n") + len(heading) + 2 :]
    level = len(heading) - len(heading.lstrip("#"))  # up to the next heading as high as it
    ends = [m.start() for m in re.finditer(rf"\n#{{2,{level}}} ", section)]  # "# " is bash
    section = section[: ends[0]] if ends else section
    blocks = []
    for language, body in re.findall(r"```(\w*)\n(.*?)```", section, re.S):
        if language == "bash":
            lines = [shlex.split(line, comments=True) for line in body.splitlines()]
            blocks.append([line for line in lines if line])
        else:
            blocks.append(body)
    return blocks


def wait_for(path: Path, timeout: float = 60) -> None:
    """Until another process has made `path` (a test fails after `timeout` seconds)."""
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)
