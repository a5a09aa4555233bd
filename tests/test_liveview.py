"""Watching a run: timestamps, elapsed time over resumes, the sample at each evaluation, the
progress display, TensorBoard event files."""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from rich.cells import cell_len
from rich.console import Console
from safetensors.torch import load_file

import charlm.system.console as metrics
from charlm.rundir.records import read_metrics
from charlm.training.display import TrainingDisplay, status_line
from charlm.training.run import train
from tests.helpers import TINY, cli, readme_blocks, write_corpus

STATUS = status_line(1.234, 12_345.0, 0.52, 0.03)  # as training shows a log step


def overrides(*extra: str) -> list[str]:
    pairs = list(TINY) + [x for item in extra for x in ("--set", item)]
    return [pairs[i + 1] for i in range(0, len(pairs), 2)]


def run(path: Path, corpus: Path | None, steps: int, *extra: str, resume: bool = False) -> None:
    settings = overrides(f"train.max_steps={steps}", *extra)
    train(path, text=corpus, overrides=settings, resume=resume, show_progress=False)


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def of_kind(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == kind]


# -- metrics.jsonl: time, elapsed_s, tokens ----------------------------------------------------


def test_every_record_carries_its_wall_clock_time_in_utc(tmp_path: Path) -> None:
    before = datetime.now(timezone.utc)
    run(tmp_path / "run", write_corpus(tmp_path), 20)
    after = datetime.now(timezone.utc)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert {r["kind"] for r in records} == {"start", "train", "val", "sample"}
    times = [datetime.fromisoformat(r["time"]) for r in records]
    assert all(t.utcoffset().total_seconds() == 0 for t in times)  # type: ignore[union-attr]
    assert before <= times[0] and times == sorted(times) and times[-1] <= after


def test_elapsed_time_and_tokens_go_on_across_a_resume(tmp_path: Path) -> None:
    corpus, halves = write_corpus(tmp_path), tmp_path / "halves"
    run(halves, corpus, 15)
    state = json.loads((halves / "checkpoints" / "step-00000015" / "state.json").read_text())
    assert state["elapsed_s"] > 0 and state["tokens"] == 15 * 64
    run(halves, None, 30, resume=True)
    records = [r for r in read_metrics(halves / "metrics.jsonl") if r["kind"] in ("train", "val")]
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed), elapsed  # before the fix it restarted near 0
    resumed = [r for r in records if r["step"] > 15]
    assert resumed and all(r["elapsed_s"] > state["elapsed_s"] for r in resumed)
    # 4 streams x 16 tokens per step, no epoch boundary in 30 steps: tokens = 64 x step.
    assert all(r["tokens"] == 64 * r["step"] for r in records)


# -- the sample at each evaluation -------------------------------------------------------------


def test_the_sample_at_each_evaluation_leaves_the_training_unchanged(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    dropout = ("model.dropout=0.3", "model.layers=2")  # dropout draws from the global generator
    run(tmp_path / "on", corpus, 20, *dropout, "train.sample_length=30")
    run(tmp_path / "off", corpus, 20, *dropout, "train.sample_every_eval=false")
    assert same_weights(weights(tmp_path / "on", 20), weights(tmp_path / "off", 20))
    samples = of_kind(tmp_path / "on", "sample")
    assert [s["step"] for s in samples] == [10, 20]
    assert all(len(s["text"]) == 30 and set(s["text"]) <= set("abcdxyz \n") for s in samples)
    assert of_kind(tmp_path / "off", "sample") == []
    assert of_kind(tmp_path / "on", "val") != []


def test_a_resumed_run_trains_and_samples_as_an_uninterrupted_one(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    common = ("model.dropout=0.3", "model.layers=2", "train.sample_length=40")
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    run(straight, corpus, 30, *common)
    run(halves, corpus, 15, *common)
    run(halves, None, 30, *common, resume=True)
    assert same_weights(weights(straight, 30), weights(halves, 30))
    texts = [{s["step"]: s["text"] for s in of_kind(r, "sample")} for r in (straight, halves)]
    assert texts[0] == {step: texts[1][step] for step in (10, 20, 30)}
    assert len(set(texts[0].values())) == 3  # each evaluation draws its own text


def test_the_sample_is_printed_at_each_evaluation(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    settings = [x for item in overrides("train.max_steps=10", "train.sample_length=25")
                for x in ("--set", item)]  # fmt: skip
    result = cli("train", corpus, "--out", tmp_path / "run", *settings)
    assert result.exit_code == 0, result.stderr
    text = of_kind(tmp_path / "run", "sample")[0]["text"]
    # Off a terminal, framed by a begin and an end line (before: "step 10 sample:" only).
    framed = f"\n--- step 10 sample ---\n{text.rstrip()}\n--- end of step 10 sample ---\n"
    assert framed in result.stderr, result.stderr


def test_on_a_terminal_the_sample_is_a_panel_titled_with_its_step() -> None:
    terminal = Console(file=io.StringIO(), width=80, force_terminal=True, record=True)
    display = TrainingDisplay(100, 0, console=terminal)
    text = "The [bold]cat[/bold] sat.\n  indented line\n" + "x" * 100  # markup stays text
    try:
        display.update(10, STATUS, is_log_step=True)
        display.sample(10, text)
    finally:
        display.close()
    shown = terminal.export_text()  # the live bar's redraws, with the panel printed above it
    lines = shown[shown.index("╭─ step 10 sample ") :].splitlines()
    assert lines[0].endswith("╮") and cell_len(lines[0]) == 80, lines
    assert lines[1] == "│ The [bold]cat[/bold] sat." + " " * 52 + "│", lines
    assert lines[2].startswith("│   indented line "), lines
    bottom = next(i for i, line in enumerate(lines) if line.startswith("╰"))
    assert "".join(lines[3:bottom]).count("x") == 100  # wrapped inside the frame
    assert all(cell_len(line) <= 80 for line in lines[: bottom + 1]), lines


# -- the progress display ----------------------------------------------------------------------


def rendered(display: TrainingDisplay, width: int = 80) -> str:
    out = Console(width=width, record=True, file=io.StringIO())
    out.print(display._progress.get_renderable())  # type: ignore[union-attr]
    return out.export_text()


def bar_lines(width: int, total: int = 2000) -> list[str]:
    terminal = Console(file=io.StringIO(), width=width, force_terminal=True)
    display = TrainingDisplay(total, 0, console=terminal)
    try:
        display.update(10, STATUS, is_log_step=True)
        display.update(11, None, is_log_step=False)  # what the loop does between log steps
        return rendered(display, width).splitlines()
    finally:
        display.close()


def test_the_bar_keeps_the_loss_between_log_steps_and_whole_times_at_80_columns() -> None:
    lines = bar_lines(80)
    text = "\n".join(lines)
    assert "11/2000" in text and "loss 1.234" in text, text  # before: the status vanished
    # Elapsed and ETA whole (before, at 80 columns: "0:0…" and "-:--:…").
    assert "0:00:00 eta " in text and "…" not in text, text


@pytest.mark.parametrize("total", [2000, 100_000])
def test_at_80_columns_the_bar_and_its_whole_status_fit(total: int) -> None:
    """Before, the bar's line cut the status at 80 columns: "12,345 tok/s  …", without the
    gradient norm and the clipped share."""
    lines = bar_lines(80, total)
    assert all(cell_len(line) <= 80 for line in lines), lines
    assert any(STATUS in line for line in lines), lines  # |g| and clipped included
    assert "|g| 0.52" in "\n".join(lines) and "clipped 3%" in "\n".join(lines)
    assert len(lines) == 2  # the status under the bar
    (wide,) = bar_lines(120, total)  # where it all fits: one line
    assert STATUS in wide and re.search(r" \d:\d\d:\d\d eta \S+$", wide.rstrip()), wide


def test_plain_progress_lines_carry_elapsed_time_and_eta(capsys: pytest.CaptureFixture) -> None:
    plain = Console(file=io.StringIO(), width=80)  # not a terminal
    display = TrainingDisplay(100, 20, console=plain)
    display.started -= 8.0  # 30 steps in 8 s: the other 50 take about 13.3 s
    display.update(50, STATUS, is_log_step=True)
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"step 50/100 {STATUS}")
    assert line.endswith(" 0:00:08 eta 0:00:13"), line


def test_plain_progress_lines_fit_80_columns(capsys: pytest.CaptureFixture) -> None:
    """Before: 82 characters for a run of 2,000 steps, so a log shown at 80 columns wrapped.
    Now 80 hold four-digit step counts, 99,999 tok/s, |g| under 10 and under 10 hours."""
    display = TrainingDisplay(9_999, 0, console=Console(file=io.StringIO(), width=80))
    display.started -= 5 * 3600.0 - 1  # 4:59:59 in: as long again to go
    display.update(5_000, status_line(10.532, 99_999.0, 9.99, 0.99), is_log_step=True)
    line = capsys.readouterr().err.strip()
    assert "|g| 9.99" in line and "clipped 99%" in line, line
    assert " 4:59:59 eta " in line, line
    assert cell_len(line) <= 80, (cell_len(line), line)


def test_header_lines_are_not_wrapped_at_80_columns_off_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "stderr", Console(stderr=True, width=80))  # as in a CI log
    corpus = write_corpus(tmp_path)
    settings = [x for item in overrides("train.max_steps=2") for x in ("--set", item)]
    result = cli("train", corpus, "--out", tmp_path / "run", *settings)
    assert result.exit_code == 0, result.stderr
    header = next(line for line in result.stderr.splitlines() if line.startswith("charlm: gru"))
    assert len(header) > 80 and header.endswith("steps on cpu, seed 1"), result.stderr


# -- TensorBoard -------------------------------------------------------------------------------


def event_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    ).EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


# The tags (charlm/training/tracking.py) of some metrics.jsonl fields, as the README lists them.
TAGS = [
    ("train/loss", "train", "loss"),
    ("train/lr", "train", "lr"),
    ("train/grad_norm", "train", "grad_norm"),
    ("eval/loss", "val", "val_loss"),
    ("eval/perplexity", "val", "val_perplexity"),
    ("eval/bpc", "val", "val_bits_per_char"),
    ("eval/tokens", "val", "tokens"),
]


def test_tensorboard_holds_the_records_of_metrics_jsonl(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    run(tmp_path / "run", write_corpus(tmp_path), 20, "train.tensorboard=true")
    scalars = event_scalars(tmp_path / "run" / "tensorboard")
    for tag, kind, key in TAGS:
        logged = [(r["step"], r[key]) for r in of_kind(tmp_path / "run", kind)]
        assert [s for s, _ in scalars[tag]] == [s for s, _ in logged]
        values = [v for _, v in scalars[tag]]
        assert values == pytest.approx([v for _, v in logged], rel=1e-6)  # float32 in the file
    assert "eval/grad_norm_layers/0" in scalars
    # One scheme, Hugging Face's: train/... and eval/..., no val/ and no val_ in a tag.
    assert {t.split("/")[0] for t in scalars} == {"train", "eval"}
    assert not any("val_" in t for t in scalars), sorted(scalars)
    texts = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    texts.Reload()
    events = texts.Tensors("sample/text_summary")
    samples = of_kind(tmp_path / "run", "sample")
    assert [e.step for e in events] == [s["step"] for s in samples] == [10, 20]
    first_line = samples[0]["text"].split("\n")[0]
    assert f"    {first_line}".encode() in events[0].tensor_proto.string_val[0]


def test_a_resume_replaces_what_tensorboard_got_after_the_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    corpus, board = write_corpus(tmp_path), ("train.tensorboard=true",)
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    run(straight, corpus, 30, *board)
    run(halves, corpus, 20, *board)
    # As if the process had died after logging step 20 but before saving it: back to step 10.
    shutil.rmtree(halves / "checkpoints" / "step-00000020")
    latest = {"name": "step-00000010", "step": 10}
    (halves / "checkpoints" / "latest.json").write_text(json.dumps(latest))
    run(halves, None, 30, *board, resume=True)
    a, b = event_scalars(straight / "tensorboard"), event_scalars(halves / "tensorboard")
    assert [s for s, _ in b["train/loss"]] == [5, 10, 15, 20, 25, 30]  # no step twice
    assert b["train/loss"] == a["train/loss"] and b["eval/loss"] == a["eval/loss"]


def test_tensorboard_without_the_extra_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    corpus = write_corpus(tmp_path)
    result = cli("train", corpus, "--out", tmp_path / "run", "--set", "train.tensorboard=true")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "charlm: error: train.tensorboard=true needs the tensorboard package: "
        "pip install 'charlm-rnn[tensorboard]' (or --set train.tensorboard=false)"
    ]
    assert not (tmp_path / "run").exists()


# -- charlm plot: runs overlaid against step, tokens or time -----------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("overlay")
    corpus = write_corpus(root)
    runs = [root / "small", root / "wide"]
    run(runs[0], corpus, 20)
    run(runs[1], corpus, 20, "model.hidden_size=32")
    return runs


def drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures charlm plot makes, kept (and still written)."""
    import charlm.diagnostics.curves as plots

    figures, save = [], plots.save_figure
    keep = lambda fig, out: (figures.append(fig), save(fig, out))[1]  # noqa: E731
    monkeypatch.setattr(plots, "save_figure", keep)
    return figures


@pytest.mark.parametrize(("x", "key", "label"), [("step", "step", "step"),
    ("tokens", "tokens", "training tokens"), ("time", "elapsed_s", "training time (s)")])  # fmt: skip
def test_plot_overlays_runs_against_the_axis_asked_for(
    two_runs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, x: str, key: str,
    label: str,
) -> None:  # fmt: skip
    figures = drawn(monkeypatch)
    out = tmp_path / "overlay.png"
    result = cli("plot", *two_runs, "--x", x, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes().startswith(b"\x89PNG")
    (fig,) = figures
    loss, bpc, grad = fig.axes
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["small", "wide"]
    assert {ax.get_xlabel() for ax in fig.axes} == {label}
    assert loss.get_shared_x_axes().joined(loss, grad)
    for index, run_dir in enumerate(two_runs):  # faint train line, then validation dots
        train_line, val_line = loss.get_lines()[2 * index : 2 * index + 2]
        assert list(train_line.get_xdata()) == [r[key] for r in of_kind(run_dir, "train")]
        assert list(val_line.get_ydata()) == [r["val_loss"] for r in of_kind(run_dir, "val")]
    caption = fig.texts[-1].get_text()
    assert caption.startswith(f"2 run(s) against {label}; best validation loss: small ")


def test_plot_against_tokens_refuses_a_run_that_never_counted_them(
    two_runs: list[Path], tmp_path: Path
) -> None:
    old = Path(__file__).parent / "fixtures" / "old_checkpoints" / "gru"
    out = tmp_path / "overlay.png"
    result = cli("plot", two_runs[0], old, "--x", "tokens", "--out", out)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"charlm: error: {old / 'metrics.jsonl'}: its records have no tokens (a run trained by an "
        "earlier charlm, or resumed from one); plot it with --x step"
    ]
    assert not out.exists()
    assert cli("plot", old, "--x", "step", "--out", out).exit_code == 0
    wrong = cli("plot", old, "--x", "epochs", "--out", tmp_path / "other.png")
    said = " ".join(wrong.stderr.replace("│", " ").split())  # the error box's lines, joined
    assert wrong.exit_code == 2 and "'epochs' is not one of 'step', 'tokens', 'time'" in said


# -- the README's examples ---------------------------------------------------------------------


def test_the_readme_examples_of_watching_a_run_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path, name="input.txt")
    line, sample, board, _, plots = readme_blocks("## Watching a run")  # W&B: test_wandb.py
    tiny = [x for item in overrides("train.max_steps=10") for x in ("--set", item)]
    printed = []
    for command in [*sample, *board, *plots]:
        if command[0] == "tensorboard":
            done = subprocess.run(
                [str(Path(sys.executable).parent / "tensorboard"), *command[1:]],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 0 and "train/loss" in done.stdout, done.stderr
            assert "eval/loss" in done.stdout and "val/val_loss" not in done.stdout
            continue
        assert command[0] == "charlm", command
        extra = tiny if command[1] == "train" else []
        result = cli(*command[1:], *extra)
        assert result.exit_code == 0, (command, result.stderr)
        printed += result.stderr.splitlines()
    (first,) = of_kind(tmp_path / "runs" / "mine", "sample")
    assert first["length"] == 80 and first["temperature"] == 0.8
    assert (tmp_path / "runs" / "board" / "tensorboard").is_dir()
    assert all(
        (tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in ("curves.png", "by-time.png")
    )
    # The plain progress line shown is the shape training prints off a terminal.
    shape = re.sub(r"\d[\d,.]*", r"\\d[\\d,.]*", re.escape(line.strip()))
    assert any(re.fullmatch(shape, p) for p in printed), (shape, printed)


def test_draw_sample_touches_no_global_generator_and_stops_on_non_finite_logits() -> None:
    import random

    import numpy as np

    from charlm.data.tokenizer import build_tokenizer
    from charlm.training.sample_at_eval import draw_sample
    from tests.helpers import pattern_text, seeded_model

    tokenizer = build_tokenizer("char", [pattern_text()], 0)
    model = seeded_model(tokenizer.get_vocab_size(), hidden_size=16, embedding_dim=8, layers=1)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    args = {"step": 10, "length": 50, "temperature": 1.0, "train_seed": 1}
    first = draw_sample(model, tokenizer, "char", **args)
    assert draw_sample(model, tokenizer, "char", **args) == first and first.finite
    assert len(first.text) == first.length == 50 and "<unk>" not in first.text
    assert torch.equal(torch.get_rng_state(), before[0])
    assert (np.random.get_state()[1] == before[1]).all() and random.getstate() == before[2]
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        model.decoder.bias[3] = float("nan")  # as an exploded run's weights
    broken = draw_sample(model, tokenizer, "char", **args)
    assert not broken.finite and broken.length == 0 and broken.record()["finite"] is False
    assert broken.shown == "[stopped: the model's outputs are not finite]"


def test_what_prepare_prints_fits_80_columns_for_a_run_of_the_quick_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quick start's corpus size (619,024 + 32,620 tokens, 101 characters) into
    runs/quickstart/data: before, "wrote ..." took 86 columns, so a terminal of 80 wrapped it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(metrics, "stderr", Console(stderr=True, width=80))
    letters = [chr(c) for c in range(32, 127)] + list("éèàçœ")  # 100, and the line break
    rng = random.Random(0)
    lines = ("".join(rng.choice(letters) for _ in range(79)) for _ in range(651_644 // 80))
    Path("corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cli("prepare", "corpus.txt", "--out", "runs/quickstart/data")
    assert result.exit_code == 0, result.stderr
    printed = result.stderr.splitlines()
    (wrote,) = [line for line in printed if line.startswith("wrote runs/quickstart/data: 6")]
    assert wrote.endswith("char vocab 102") and printed[-1].startswith("prepared "), printed
    assert all(cell_len(line) <= 80 for line in printed), printed
