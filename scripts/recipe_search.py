"""Train candidate recipes for a fixed training time each and score them on a held-out text.

The search behind configs/shakespeare-cpu.yaml (docs/results.md, "Tiny Shakespeare in ten
minutes on two cores"): every candidate is one `charlm train` with `train.max_time`, then
`charlm evaluate --text` of its best checkpoint; one markdown row per candidate (settings, steps
reached, wall time, score). Run on an idle machine: the budget is wall time, so a busy machine
reaches fewer steps.

    python scripts/recipe_search.py --train input90.txt --val last10.txt --budget 600 \
        --out runs/search --only cpu gru320 lstm384
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# name -> (config, settings). Every one on top of the named config's own settings, and of
# train.max_steps=0: the budget alone ends every candidate (quickstart names 900 steps).
# The search started from the ten-minute config as it was, a 2x256 GRU: GRU puts that back on
# top of today's file (an LSTM of 384, the search's winner), so each row re-runs what it measured.
CPU = "shakespeare-cpu"
GRU = ["model.cell=gru", "model.hidden_size=256"]
CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "quickstart": ("quickstart", []),
    "cpu": (CPU, [*GRU]),
    "cpu-d0": (CPU, [*GRU, "model.dropout=0.0"]),
    "cpu-d02": (CPU, [*GRU, "model.dropout=0.2"]),
    "cpu-d0-lr5e-3": (CPU, [*GRU, "model.dropout=0.0", "optim.lr=5e-3"]),
    "cpu-b64": (CPU, [*GRU, "train.batch_size=64"]),
    "cpu-s128": (CPU, [*GRU, "train.seq_len=128"]),
    "cpu-lr2e-3": (CPU, [*GRU, "optim.lr=2e-3"]),
    "cpu-lr5e-3": (CPU, [*GRU, "optim.lr=5e-3"]),
    "gru192": (CPU, [*GRU, "model.hidden_size=192", "model.embedding_dim=48"]),
    "gru320": (CPU, [*GRU, "model.hidden_size=320"]),
    "gru320-d0": (CPU, [*GRU, "model.hidden_size=320", "model.dropout=0.0"]),
    "gru384": (CPU, [*GRU, "model.hidden_size=384"]),
    "gru3x256": (CPU, [*GRU, "model.layers=3"]),
    "lstm320": (CPU, [*GRU, "model.cell=lstm", "model.hidden_size=320"]),
    "lstm320-d0": (CPU, [*GRU, "model.cell=lstm", "model.hidden_size=320", "model.dropout=0.0"]),
    "lstm384": (CPU, ["model.cell=lstm", "model.hidden_size=384"]),
    "adamw": (CPU, [*GRU, "optim.name=adamw", "optim.lr=2e-3"]),
}


def run(cmd: list[str], log: Path) -> float:
    start = time.monotonic()
    with log.open("w") as out:
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.monotonic() - start


def steps_reached(run_dir: Path) -> int:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return max(json.loads(line).get("step", 0) for line in lines if line.strip())


def candidate(name: str, args: argparse.Namespace) -> str:
    config, settings = CANDIDATES[name]
    run_dir = args.out / name
    sets = [f"train.max_time={args.budget}", "train.max_steps=0", "train.checkpoint_every=1000000"]
    sets += settings
    sets += [f"train.seed={args.seed}", *args.set]
    cmd = [sys.executable, "-m", "charlm", "train", str(args.train), "--val-file", str(args.val)]
    cmd += ["--config", config, "--out", str(run_dir), "--force", "-q"]
    cmd += [a for s in sets for a in ("--set", s)]
    wall = run(cmd, args.out / f"{name}.train.log")
    ev = [sys.executable, "-m", "charlm", "evaluate", str(run_dir), "--text", str(args.val)]
    out = subprocess.run([*ev, "--json"], capture_output=True, text=True, check=True).stdout
    loss = json.loads(out)["loss"]
    shown = ", ".join(settings) or "(the config as shipped)"
    return (
        f"| {name} | `{config}` {shown} | {steps_reached(run_dir):,} | {wall:.0f} s | {loss:.4f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--budget", default="600", help="train.max_time of each candidate")
    parser.add_argument("--out", type=Path, default=Path("runs/search"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="extra setting, every run")
    parser.add_argument("--only", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("| candidate | settings | steps | wall time (train + final validation) | nats/char |")
    print("|---|---|---|---|---|")
    for name in args.only:
        print(candidate(name, args), flush=True)


if __name__ == "__main__":
    main()
