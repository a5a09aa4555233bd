"""Time to quality: best-so-far validation loss against training wall-clock, tutorial regime vs charlm.

Both runs train the tutorial's model (8000 words, 48-d embedding, 2x GRU 128) on the same
prepared data, each a `charlm train` process stopped with SIGTERM after --minutes (it saves a
checkpoint and exits 143). Both use sentence batching, so both validate the same way (every
held-out sentence from a zero state, padding masked; the whole held-out text each time) and
their losses compare directly. (A stream-trained model scored sentence by sentence did worse:
6.14 against the tutorial's 5.81 nats/word after two minutes, in a pilot on this machine.)

The clock is each run's own `elapsed_s` less the time its validations took: the loop writes a
train record just before it validates and a val record just after.

    python scripts/time_to_quality.py --minutes 10 --out /tmp/ttq \
        --json docs/time_to_quality.json --png docs/time_to_quality.png

Runs go side by side with one thread each (a 2-core machine: one core per run) unless
--one-at-a-time is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from charlm.rundir.records import read_metrics

REPO = Path(__file__).resolve().parent.parent
WIKITEXT = Path("/work/shared/data/wikitext-2")

# name -> (config file, overrides). The tutorial regime is configs/tutorial-gru.yaml as written
# (one sentence per RMSProp step, lr 1e-3) on a text file instead of the Reddit CSV.
RUNS: dict[str, tuple[str, list[str]]] = {
    "tutorial (1 sentence/step)": (
        "configs/tutorial-gru.yaml",
        [
            "train.eval_every=200",
            "train.max_steps=0",
            "train.epochs=1000",
        ],  # fmt: skip
    ),
    "charlm (configs/tutorial-gru-fast.yaml)": (
        "configs/tutorial-gru-fast.yaml",
        ["train.max_steps=0", "train.epochs=1000"],
    ),
}
COMMON = ["train.threads=1", "train.eval_batches=0", "train.checkpoint_every=100000"]


def held_out_text(source: Path, words: int, dest: Path) -> Path:
    """The first `words` words of `source` (whole lines), as the validation text."""
    lines, count = [], 0
    for line in source.read_text(encoding="utf-8").splitlines(keepends=True):
        lines.append(line)
        count += len(line.split())
        if count >= words:
            break
    dest.write_text("".join(lines), encoding="utf-8")
    return dest


def prepare(train_text: Path, val_text: Path, data_dir: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "charlm", "prepare", str(train_text), "--out", str(data_dir),
         "--level", "word", "--vocab-size", "8000", "--val-file", str(val_text)],
        check=True,
    )  # fmt: skip


def launch(name: str, data_dir: Path, run_dir: Path, extra: list[str]) -> subprocess.Popen:
    config, overrides = RUNS[name]
    command = [
        sys.executable, "-m", "charlm", "train", "--data", str(data_dir), "--out", str(run_dir),
        "--config", str(REPO / config), "--force", "--quiet",
    ]  # fmt: skip
    for item in [*overrides, *COMMON, *extra]:
        command += ["--set", item]
    log = open(run_dir.with_suffix(".log"), "w", encoding="utf-8")  # noqa: SIM115 - child's stderr
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def training_seconds(metrics_path: Path) -> dict[int, float]:
    """Step -> training wall-clock seconds at that step, in-run validation time taken out."""
    records = read_metrics(metrics_path)
    train_at = {r["step"]: r["elapsed_s"] for r in records if r["kind"] == "train"}
    seconds, eval_seconds = {}, 0.0
    for r in records:
        if r["kind"] == "train":
            seconds[r["step"]] = r["elapsed_s"] - eval_seconds
        elif r["kind"] == "val" and r["step"] in train_at:
            eval_seconds += r["elapsed_s"] - train_at[r["step"]]
    return seconds


def curve(run_dir: Path) -> list[dict[str, float]]:
    """Each validation of a run: (training seconds, loss, best so far)."""
    seconds = training_seconds(run_dir / "metrics.jsonl")
    points, best = [], float("inf")
    for r in read_metrics(run_dir / "metrics.jsonl"):
        if r["kind"] == "val" and r["step"] in seconds:
            best = min(best, r["val_loss"])
            points.append(
                {"step": r["step"], "train_s": seconds[r["step"]], "val_loss": r["val_loss"],
                 "best_val_loss": best}
            )  # fmt: skip
    return points


def best_at(points: list[dict[str, float]], t: float) -> float:
    """Best-so-far loss at training time t (inf before the first evaluation)."""
    best = float("inf")
    for p in points:
        if p["train_s"] <= t:
            best = p["best_val_loss"]
    return best


def compare(curves: dict[str, list[dict[str, float]]]) -> dict[str, object]:
    """Is charlm's curve at or below the tutorial's at every time the tutorial has a value?"""
    (tut_name, tut), (ours_name, ours) = list(curves.items())
    times = sorted({p["train_s"] for p in tut} | {p["train_s"] for p in ours})
    times = [t for t in times if t >= tut[0]["train_s"]] if tut else []
    worse = [t for t in times if best_at(ours, t) > best_at(tut, t)]
    # Time each run took to first reach each loss level the tutorial reached.
    levels = []
    for index, p in enumerate(tut):
        if index and p["best_val_loss"] >= tut[index - 1]["best_val_loss"]:
            continue  # no new level: the best-so-far only repeats
        mine = next((q["train_s"] for q in ours if q["best_val_loss"] <= p["best_val_loss"]), None)
        levels.append({"loss": p["best_val_loss"], "tutorial_s": p["train_s"], "charlm_s": mine})
    return {
        "below_at_every_time": not worse,
        "times_not_below": worse,
        "levels": levels,
        "final_best": {tut_name: tut[-1]["best_val_loss"], ours_name: ours[-1]["best_val_loss"]},
    }


def plot(curves: dict[str, list[dict[str, float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, points in curves.items():
        t = [p["train_s"] for p in points]
        (line,) = ax.step(t, [p["best_val_loss"] for p in points], where="post", label=name)
        ax.plot(t, [p["val_loss"] for p in points], ".", color=line.get_color(), alpha=0.35)
    ax.set_xscale("log")
    ax.set_xlabel("training wall-clock seconds (evaluation excluded, log scale)")
    ax.set_ylabel("validation loss, nats/word")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(title="line: best so far; dots: each evaluation", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock per run")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ttq"), help="work folder")
    parser.add_argument("--train-text", type=Path, default=WIKITEXT / "valid.txt")
    parser.add_argument("--val-source", type=Path, default=WIKITEXT / "test.txt")
    parser.add_argument("--val-words", type=int, default=8000, help="held-out words scored")
    parser.add_argument("--json", type=Path, help="write the curves and comparison here")
    parser.add_argument("--png", type=Path, help="write the plot here")
    parser.add_argument("--one-at-a-time", action="store_true", help="runs in turn, 2 threads")
    parser.add_argument("--set", action="append", default=[], help="extra override for charlm")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    val_text = held_out_text(args.val_source, args.val_words, args.out / "heldout.txt")
    data_dir = args.out / "data"
    prepare(args.train_text, val_text, data_dir)
    names = list(RUNS)
    extras = {names[0]: [], names[1]: args.set}
    if args.one_at_a_time:
        extras = {n: [*e, "train.threads=2"] for n, e in extras.items()}
    groups = [[n] for n in names] if args.one_at_a_time else [names]
    for group in groups:
        procs = {
            n: launch(n, data_dir, args.out / f"run{names.index(n)}", extras[n]) for n in group
        }
        print(f"running {', '.join(group)} for {args.minutes} min", file=sys.stderr)
        time.sleep(args.minutes * 60)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # charlm checkpoints and exits 143
        for proc in procs.values():
            proc.wait()
    curves = {n: curve(args.out / f"run{i}") for i, n in enumerate(names)}
    result = compare(curves)
    for name, points in curves.items():
        print(f"{name}: {len(points)} evaluations, best {points[-1]['best_val_loss']:.3f}",
              file=sys.stderr)  # fmt: skip
    print(json.dumps({k: result[k] for k in ("below_at_every_time", "final_best")}, indent=1))
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs",
        "minutes_per_run": args.minutes,
        "side_by_side": not args.one_at_a_time,
        "train_text": str(args.train_text),
        "val_text": f"first {args.val_words} words of {args.val_source}",
        "runs": {
            n: {"config": RUNS[n][0], "overrides": RUNS[n][1] + COMMON + extras[n]} for n in names
        },  # fmt: skip
    }
    if args.json:
        args.json.write_text(json.dumps({**meta, "curves": curves, **result}, indent=1) + "\n")
    if args.png:
        title = (
            f"WikiText-2 valid.txt as training text, {args.val_words} held-out words of test.txt; "
            f"{os.cpu_count()}-core CPU, {meta['date'][:10]}"
        )
        plot(curves, args.png, title)


if __name__ == "__main__":
    main()
