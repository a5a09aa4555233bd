"""Options whose values are a fixed set are choices (issue 26): `--help` shows the values, shell
completion offers them, and another value is refused naming the flag typed, exit code 2. The
values come from the one place that owns them: a setting's Literal, or the registry."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from helpers import cli
from typer.testing import CliRunner

from charlm.cli import app
from charlm.config import setting_choices
from charlm.data.choices import ERRORS
from charlm.diagnostics.choices import MEASURES, NORMS, POSITIONS, PROBE, X_AXES
from charlm.inference.choices import FORMATS
from charlm.rundir.names import WHICH

ROOT = Path(__file__).resolve().parents[1]
DEVICES = setting_choices("train.device")
CHOICES = [  # (command, flag, its values as their owner lists them)
    ("prepare", "--level", setting_choices("data.level")),
    ("prepare", "--segments", setting_choices("data.segments")),
    ("prepare", "--word-split", setting_choices("data.word_split")),
    ("prepare", "--sentence-split", setting_choices("data.sentence_split")),
    ("prepare", "--errors", ERRORS),
    ("train", "--errors", ERRORS),
    ("sample", "--device", DEVICES),
    ("sample", "--checkpoint", WHICH),
    ("evaluate", "--device", DEVICES),
    ("evaluate", "--checkpoint", WHICH),
    ("evaluate", "--errors", ERRORS),
    ("info", "--checkpoint", WHICH),
    ("export", "--format", FORMATS),
    ("export", "--checkpoint", WHICH),
    ("gradients", "--at", POSITIONS),
    ("gradients", "--measure", (*MEASURES, PROBE)),
    ("gradients", "--norm", NORMS),
    ("gradients", "--device", DEVICES),
    ("gradients", "--checkpoint", WHICH),
    ("plot", "--x", tuple(X_AXES)),
]
# Enough for each command to reach the option's check (run folders need not exist: the value
# is refused while the command line is read, before any file is looked at).
REQUIRED = {
    "prepare": ["t.txt", "--out", "p"],
    "train": ["--out", "r"],
    "sample": ["r"],
    "evaluate": ["r", "--text", "t.txt"],
    "info": ["r"],
    "export": ["r", "--format", "torchscript", "--out", "e.pt"],
    "gradients": ["--text", "t.txt"],
    "plot": ["r", "--out", "p.png"],
}


def option(command: str, flag: str):  # -> (the command, its option), as typer builds them
    group = typer.main.get_command(app)
    found = group.commands[command]  # type: ignore[attr-defined]
    return found, next(p for p in found.params if flag in p.opts)


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_help_shows_each_choice(command: str) -> None:
    # 100 columns: at 80, prepare's widest two (<rules|whitespace>) fold by a character or two.
    shown = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "100"})
    assert shown.exit_code == 0, shown.stderr
    for name, flag, values in CHOICES:
        if name == command:
            shown_as = re.escape("|".join(values))  # <a|b> (typer 0.26+) or [a|b] (before)
            assert re.search(rf"[<\[]{shown_as}[>\]]", shown.stdout), (command, flag)


@pytest.mark.parametrize(("command", "flag", "values"), CHOICES)
def test_another_value_is_refused_naming_the_flag_and_the_choices(
    command: str, flag: str, values: tuple[str, ...], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [*REQUIRED[command], flag, "chr"]
    if command == "export" and flag == "--format":
        args = ["r", "--out", "e.pt", flag, "chr"]
    result = cli(command, *args)
    assert result.exit_code == 2, result.stderr
    err = " ".join(result.stderr.replace("│", " ").split())  # the box's lines, joined
    assert f"Invalid value for '{flag}'" in err and "'chr' is not one of" in err, err
    assert all(f"'{value}'" in err for value in values), err
    assert "--set" not in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # refused before anything was read or written


@pytest.mark.parametrize(("command", "flag", "values"), CHOICES)
def test_completion_offers_the_values(command: str, flag: str, values: tuple[str, ...]) -> None:
    """The option completes to exactly its owner's values, in their order: a choice of them."""
    assert len(values) >= 2
    found, param = option(command, flag)
    context = found.context_class(found)
    offered = [item.value for item in param.shell_complete(context, "")]
    assert tuple(str(v) for v in offered) == tuple(values)
    first = values[0]
    narrowed = [str(item.value) for item in param.shell_complete(context, first[:2])]
    assert narrowed == [v for v in values if v.startswith(first[:2])]


def test_the_shell_completes_a_choice(tmp_path: Path) -> None:
    """What bash gets back from `charlm prepare t.txt --level <TAB>` (the completion script's
    own request), and `charlm sample r --device c<TAB>`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_CHARLM_COMPLETE": "complete_bash"}

    def complete(words: str) -> list[str]:
        cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
        done = subprocess.run(
            [sys.executable, "-m", "charlm"], capture_output=True, text=True, cwd=tmp_path,
            env={**env, "COMP_WORDS": words, "COMP_CWORD": cword}, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("charlm prepare t.txt --level ") == list(setting_choices("data.level"))
    assert complete("charlm sample r --device c") == [d for d in DEVICES if d.startswith("c")]


def test_a_choice_reaches_the_command_as_its_plain_string() -> None:
    from charlm.cli.options import Device

    member = Device("cpu")
    assert member == "cpu" and str(member) == "cpu" and f"{member}" == "cpu"
    assert json.dumps({"device": member}) == '{"device": "cpu"}'
    assert {"cpu": 1}[member] == 1 and member in DEVICES


def test_the_choices_cost_the_command_line_no_heavy_import() -> None:
    """The values come from small modules, so every `charlm` call (and each TAB) still starts
    without torch, numpy, tokenizers or rich."""
    code = "import sys, charlm.cli; print(*(m in sys.modules for m in sys.argv[1:]))"
    heavy = ["torch", "numpy", "tokenizers", "rich", "matplotlib"]
    done = subprocess.run(
        [sys.executable, "-c", code, *heavy], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"] * len(heavy), done.stdout


def test_the_quantize_choices_are_fp32_and_what_the_model_wing_quantizes() -> None:
    from charlm.cli.options import Quantize
    from charlm.model.quantize import QUANTIZE

    assert [c.value for c in Quantize] == ["fp32", *QUANTIZE]
