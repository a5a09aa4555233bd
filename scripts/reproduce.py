"""Re-run a published recipe end to end: train, score validation and test, sample; print a summary.

    python scripts/reproduce.py shakespeare-char [--quick] [--out runs/repro]
    python scripts/reproduce.py --list

Each recipe is a config in configs/ plus the corpus it was written for. --quick shrinks the
model and the run so that each recipe finishes on a CPU in a few minutes (a smoke test of the
whole path, not a result). Every step runs the `charlm` command line, and the summary lists the
exact commands, so any figure in docs/results.md can be re-made by hand. The summary (JSON) goes
to stdout and to OUT/NAME/summary.json; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"

# Small and single-threaded (two threads collapse on a busy 2-core machine: docs/benchmarks.md, "Threads").
QUICK_MODEL = (
    "model.layers=1",
    "model.hidden_size=128",
    "model.embedding_dim=64",
    "train.threads=1",
)


@dataclass(frozen=True)
class Recipe:
    config: str
    text: Path
    val_file: Path | None = None
    test_file: Path | None = None
    quick: tuple[str, ...] = ()
    sample_args: tuple[str, ...] = ()
    quick_test_lines: int = 0  # --quick scores this many leading lines of the test file


RECIPES = {
    "shakespeare-char": Recipe(
        config="configs/shakespeare-char.yaml",
        text=DATA / "tinyshakespeare" / "input.txt",
        quick=(
            *QUICK_MODEL,
            "model.weight_drop=0.0",
            "model.hidden_dropout=0.0",
            "train.batch_size=32",
            "train.seq_len=64",
            "train.max_steps=300",
            "train.eval_every=100",
            "train.eval_batches=20",
            "optim.warmup_steps=20",
        ),
        sample_args=("--length", "400", "--temperature", "0.8", "--prime", "ROMEO:"),
    ),
    "wikitext2-word": Recipe(
        config="configs/wikitext2-word.yaml",
        text=DATA / "wikitext-2" / "train.txt",
        val_file=DATA / "wikitext-2" / "valid.txt",
        test_file=DATA / "wikitext-2" / "test.txt",
        quick=(
            "model.layers=1",
            "model.hidden_size=64",
            "model.embedding_dim=64",
            "train.threads=1",
            "train.batch_size=20",
            "train.seq_len=35",
            "train.epochs=0",
            "train.max_steps=150",
            "train.eval_every=50",
            "train.eval_batches=20",
        ),
        quick_test_lines=200,
        sample_args=("--length", "60", "--temperature", "0.8"),
    ),
    "tutorial-gru": Recipe(
        config="configs/tutorial-gru.yaml",
        text=DATA / "reddit" / "reddit-comments-2015-08-sample.csv",
        quick=("train.threads=1", "train.epochs=2", "train.eval_every=500"),
        sample_args=("--sentences", "--num-samples", "5", "--min-words", "7"),
    ),
}


def log(message: str) -> None:
    print(f"reproduce: {message}", file=sys.stderr, flush=True)


def run(command: list[str], commands: list[str], capture: bool = False) -> tuple[str, float]:
    """Run a charlm command, recording it; returns its stdout (when captured) and wall time."""
    shown = " ".join(["charlm", *command])
    commands.append(shown)
    log(shown)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "charlm", *command],
        cwd=ROOT,
        stdout=subprocess.PIPE if capture else None,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"reproduce: `{shown}` failed with exit code {done.returncode}")
    return done.stdout or "", time.perf_counter() - started


def best_validation(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if r.get("kind") == "val"]
    best = min(vals, key=lambda r: r["val_loss"])
    return {
        "step": best["step"],
        "loss": best["val_loss"],
        "perplexity": best["val_perplexity"],
        "bits_per_char": best["val_bits_per_char"],
        "evaluations": len(vals),
        "last_step": max(r["step"] for r in records),
    }


def reproduce(name: str, quick: bool, out: Path) -> dict:
    recipe = RECIPES[name]
    for path in (recipe.text, recipe.val_file, recipe.test_file):
        if path is not None and not path.is_file():
            raise SystemExit(f"reproduce: {path} is missing; the recipe {name} needs it")
    run_dir = out / (f"{name}-quick" if quick else name)
    commands: list[str] = []
    train_cmd = ["train", str(recipe.text), "--config", recipe.config, "--out", str(run_dir)]
    train_cmd += ["--force", "--quiet"]
    if recipe.val_file is not None:
        train_cmd += ["--val-file", str(recipe.val_file)]
    for item in recipe.quick if quick else ():
        train_cmd += ["--set", item]
    _, train_s = run(train_cmd, commands)
    summary: dict = {
        "recipe": name,
        "quick": quick,
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
        "machine": f"{platform.machine()} {platform.system()}, {_device()}",
        "train_wall_s": round(train_s, 1),
        "best_validation": best_validation(run_dir),
    }
    if recipe.test_file is not None:
        test_file = recipe.test_file
        if quick and recipe.quick_test_lines:
            test_file = run_dir / "test-head.txt"
            lines = recipe.test_file.read_text(encoding="utf-8").splitlines(keepends=True)
            test_file.write_text("".join(lines[: recipe.quick_test_lines]), encoding="utf-8")
            summary["test_note"] = f"first {recipe.quick_test_lines} lines of the test file"
        # Batch size 1, as AWD-LSTM scores its test set: one stream, state carried throughout.
        eval_cmd = ["evaluate", str(run_dir), "--text", str(test_file), "--batch-size", "1"]
        text, test_s = run([*eval_cmd, "--json"], commands, capture=True)
        summary["test"] = json.loads(text)
        summary["test_wall_s"] = round(test_s, 1)
    sample_cmd = ["sample", str(run_dir), "--seed", "1", *recipe.sample_args]
    if "--num-samples" not in recipe.sample_args:
        sample_cmd += ["--num-samples", "1"]
    samples, _ = run(sample_cmd, commands, capture=True)
    summary["samples"] = samples
    summary["commands"] = commands
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", choices=sorted(RECIPES), help="the recipe to run")
    parser.add_argument("--quick", action="store_true", help="small model, short run (CPU)")
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce"), help="runs go here")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    args = parser.parse_args()
    if args.list or args.name is None:
        for name, recipe in RECIPES.items():
            print(f"{name}: {recipe.config} on {recipe.text}")
        return
    summary = reproduce(args.name, args.quick, args.out)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
