"""CPU threads and OpenMP wait policy: charlm's training speed under each, idle and loaded.

For each model, each variant trains in a fresh process (OpenMP reads its settings once, at
start-up) and reports tokens/s after its first logging interval. Variants:
  default         charlm's own choice (nothing set): fixed for the run, whatever the load
  adapt           train.adapt_threads=true: one thread while other programs keep a core busy
  1 thread        train.threads=1
  2 PASSIVE       two threads that sleep as soon as they wait (OMP_WAIT_POLICY=PASSIVE)
  2 ACTIVE        two threads that spin while they wait (OMP_WAIT_POLICY=ACTIVE)
  2 spin=N        two threads that spin N rounds, then sleep (GOMP_SPINCOUNT=N)
Each condition runs idle and with a competing CPU-bound process (a pure-Python busy loop, one
core's worth of work, started before and killed after each measurement). Rounds alternate the
variants; the median of the rounds is printed, with each variant's ratio to the best idle one.

    python scripts/threads_matrix.py --rounds 2 --json threads.json   # about 15 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charlm.rundir.records import read_metrics

DATA = Path(os.environ.get("CHARLM_SHARED_DATA", "/work/shared/data"))
MODELS = {  # name: (text, overrides)
    "gru-2x128": (
        "tinyshakespeare/input.txt",
        ["model.cell=gru", "model.hidden_size=128", "model.embedding_dim=32",
         "train.batch_size=32", "train.seq_len=64"],
    ),
    "lstm-2x512": (
        "tinyshakespeare/input.txt",
        ["model.cell=lstm", "model.hidden_size=512", "model.embedding_dim=64",
         "train.batch_size=50", "train.seq_len=50"],
    ),
}  # fmt: skip
VARIANTS = {  # label: (environment, settings; none for charlm's own choice)
    "default": ({}, []),
    "adapt": ({}, ["train.adapt_threads=true"]),
    "1 thread": ({}, ["train.threads=1"]),
    "2 PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, ["train.threads=2"]),
    "2 ACTIVE": ({"OMP_WAIT_POLICY": "ACTIVE"}, ["train.threads=2"]),
    "2 spin=300k": ({"GOMP_SPINCOUNT": "300000"}, ["train.threads=2"]),
    "2 spin=30k": ({"GOMP_SPINCOUNT": "30000"}, ["train.threads=2"]),
    "2 spin=10k": ({"GOMP_SPINCOUNT": "10000"}, ["train.threads=2"]),
    "2 spin=3M": ({"GOMP_SPINCOUNT": "3000000"}, ["train.threads=2"]),
    "2 spin=30M": ({"GOMP_SPINCOUNT": "30000000"}, ["train.threads=2"]),
}
_OMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def measure(
    data_dir: Path, overrides: list[str], env: dict, settings: list[str], steps: int
) -> float:
    """tokens/s of charlm's training loop in a fresh process, after the first log interval."""
    log_every = max(2, steps // 6)
    total = steps + log_every
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        items = [
            *overrides, f"train.max_steps={total}", f"train.log_every={log_every}",
            f"train.eval_every={total}", "train.eval_batches=1", f"train.checkpoint_every={total}",
            *settings,
        ]  # fmt: skip
        code = (
            "from pathlib import Path\nfrom charlm.training.run import train\n"
            f"train(Path({str(run)!r}), data_dir=Path({str(data_dir)!r}), overrides={items!r}, "
            "show_progress=False)\n"
        )
        child_env = {k: v for k, v in os.environ.items() if k not in _OMP_KEYS} | env
        proc = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True)
        if proc.returncode:
            raise SystemExit(f"training failed:\n{proc.stderr.decode()[-2000:]}")
        records = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"][1:]
    tokens = [1 / r["tokens_per_s"] for r in records]
    return len(tokens) / sum(tokens)


def competitor() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def prepare(text: str, work: Path) -> Path:
    out = work / Path(text).parent.name
    if not (out / "meta.json").exists():
        subprocess.run(
            [sys.executable, "-m", "charlm", "prepare", str(DATA / text), "--out", str(out)],
            check=True, capture_output=True,
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per idle measurement")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict = {"load_average_start": os.getloadavg(), "date": time.strftime("%F %T")}
    with tempfile.TemporaryDirectory() as work:
        for model in args.models.split(","):
            text, overrides = MODELS[model]
            data_dir = prepare(text, Path(work))
            rates: dict = {}
            for condition in ("idle", "loaded"):
                for _ in range(args.rounds):
                    for label in args.variants.split(","):
                        env, settings = VARIANTS[label]
                        busy = competitor() if condition == "loaded" else None
                        try:
                            steps = args.steps if busy is None else max(6, args.steps // 3)
                            rate = measure(data_dir, overrides, env, settings, steps)
                        finally:
                            if busy is not None:
                                busy.kill()
                                busy.wait()
                        rates.setdefault(condition, {}).setdefault(label, []).append(rate)
                        print(f"{model} {condition:6} {label:12} {rate:10,.0f}", file=sys.stderr)
            results[model] = rates
    results["load_average_end"] = os.getloadavg()
    show(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def show(results: dict) -> None:
    for model, rates in results.items():
        if not isinstance(rates, dict):
            continue
        best = max(statistics.median(v) for v in rates["idle"].values())
        print(f"\n{model}: median tokens/s (ratio to the best idle variant)")
        print(f"{'variant':14}{'idle':>18}{'loaded':>18}")
        for label in rates["idle"]:
            cells = [statistics.median(rates[c][label]) for c in ("idle", "loaded") if c in rates]
            print(f"{label:14}" + "".join(f"{v:>11,.0f} ({v / best:.2f})" for v in cells))


if __name__ == "__main__":
    main()
