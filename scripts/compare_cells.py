"""tanh RNN, IRNN, leaky RNN, GRU and LSTM on the lag and copy tasks' curricula; writes docs/cells.md.

Everything runs through charlm's own CLI (`charlm data synth`, `charlm train`, `charlm gradients`):
a staged lag task (one block of lines per lag, the loss on the recall only, lag 200 held out),
the recipe of configs/lag-curriculum.yaml (one line per example from a zero state, Adam 2e-3,
clipping at 1, the next lag once the recall accuracy passes 95%, the best checkpoint by recall
loss), each model on several seeds, two runs at a time on one thread each. Then the views of
`charlm gradients`: fresh and trained models at the recall position (loss gradient and state
Jacobian), one GRU's path through its checkpoints, gate saturation, W_hh's singular values; and
the IRNN with and without clipping (the gradient-norm trace).

    python scripts/compare_cells.py            # the page: 5 models x 5 seeds, the IRNN's variants,
                                               # the copy task, the probe (about 100 minutes on a
                                               # heavily loaded 2-core machine)
    python scripts/compare_cells.py --quick    # lags 5-20, 2 seeds, fewer steps
    python scripts/compare_cells.py --reuse    # keep WORK's data and the runs already trained
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's charlm, also when the script is run from elsewhere

from compare_cells_doc import write_doc  # noqa: E402  (the page's text, beside this script)

from charlm.diagnostics.subjects import PRESETS  # noqa: E402
from charlm.rundir.records import read_metrics  # noqa: E402

# The five models: --set overrides over configs/lag-curriculum.yaml.
MODELS = {
    "rnn": ["model.cell=rnn"],
    "irnn": list(PRESETS["irnn"]),
    "leaky-rnn": list(PRESETS["leaky-rnn"]),
    "gru": ["model.cell=gru"],
    "lstm": ["model.cell=lstm"],
}
CHANCE = math.log(8)  # 8 keys: the recall loss of a model that forgot the key
PROBE_LINES = 256  # held-out lines of the key-readout probe (as many again fitted on)
# The clipping pair: the IRNN with plain SGD, as Le et al. (2015) trained it (Adam's step is
# normalised by the gradient's running size, which hides much of what clipping does).
CLIP_SGD = ["optim.name=sgd", "optim.lr=0.05"]
CLIPPING = {"irnn-sgd-clip": 1.0, "irnn-sgd-noclip": 0.0}
# What the IRNN's success depends on: one setting changed at a time, on every seed.
IRNN_VARIANTS = {
    "irnn-lr5e-4": ["optim.lr=5e-4"],
    "irnn-noclip": ["optim.clip_norm=0"],
    "irnn-thr0.8": ["train.curriculum_threshold=0.8"],
    "irnn-gain0.9": ["model.recurrent_gain=0.9"],
    "irnn-config-data": [],  # the same IRNN on the data configs/lag-curriculum.yaml writes
}
CONFIG_DATA_RUN = "irnn-config-data"
VIEWS = Path("runs/cells/views")  # WORK/views: each `charlm gradients` call's output, for --reuse
REUSE = False  # --reuse: keep the data and the runs an earlier call trained with the same settings


def charlm(*args: str | Path, quiet: bool = True, may_fail: bool = False) -> str:
    """Run the charlm CLI (this checkout's) and return its stdout; stop on failure (unless
    `may_fail`: the run without clipping may end on non-finite steps, which is its point)."""
    cmd = [sys.executable, "-m", "charlm", *map(str, args)]
    cached = VIEWS / (hashlib.sha256(shlex.join(cmd[1:]).encode()).hexdigest()[:20] + ".out")
    if REUSE and args[0] == "gradients" and cached.is_file():
        return cached.read_text()  # the same measurement made before (its figures are there)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if args[0] == "gradients" and done.returncode == 0:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(done.stdout)
    if done.returncode != 0 and may_fail:
        print(f"(ended {done.returncode}: {done.stderr.strip()[-300:]})", file=sys.stderr)
    elif done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(cmd)}\n{done.stderr[-2000:]}")
    if not quiet:
        print(done.stderr.strip(), file=sys.stderr)
    return done.stdout


def settings(args: argparse.Namespace) -> dict:
    full = {
        "lags": [5, 10, 20, 30, 50, 70, 100], "heldout": [200], "seeds": [1, 2, 3, 4, 5],
        "steps": 1000, "length": 100_000, "valid_length": 10_000,
        "probe_lags": [5, 10, 20, 30, 50, 70, 100, 200],
        "copy": {"lags": [5, 10, 20], "heldout": [40], "copy_length": 5, "seeds": [1, 2, 3],
                 "length": 50_000},
    }  # fmt: skip
    quick = {
        "lags": [5, 10, 20], "heldout": [40], "seeds": [1, 2],
        "steps": 600, "length": 30_000, "valid_length": 4_000, "probe_lags": [5, 10, 20, 40],
        "copy": {"lags": [3, 5], "heldout": [10], "copy_length": 3, "seeds": [1, 2],
                 "length": 20_000},
    }  # fmt: skip
    chosen = quick if args.quick else full
    if args.seeds:
        chosen["seeds"] = args.seeds
    if args.steps:
        chosen["steps"] = args.steps
    return chosen


def make_data(s: dict, work: Path) -> dict[str, Path]:
    """The staged task; the same at the config's own settings (--length 200000, another draw
    of the text); the staged copy task; plain tasks at one lag each for the gradient views
    (`lag100`) and the probe (`probeL`, about PROBE_LINES lines of lag L)."""
    lags, held = ",".join(map(str, s["lags"])), ",".join(map(str, s["heldout"]))
    copy = s["copy"]
    made = {
        "lagc": ["lag", "--lags", lags, "--heldout-lags", held, "--length", s["length"]],
        "lagc-config": ["lag", "--lags", lags, "--heldout-lags", held],  # the config's command
        "copyc": [
            "copy",
            "--copy-length",
            copy["copy_length"],
            "--lags",
            ",".join(map(str, copy["lags"])),
            "--heldout-lags",
            ",".join(map(str, copy["heldout"])),
            "--length",
            copy["length"],
        ],  # fmt: skip
        f"lag{s['lags'][-1]}": [
            "lag",
            "--lag",
            s["lags"][-1],
            "--length",
            s["valid_length"],
            "--seed",
            2,
        ],  # fmt: skip
    }
    for lag in s["probe_lags"]:
        chars = PROBE_LINES * 2 * (lag + 4) + 1000
        made[f"probe{lag}"] = ["lag", "--lag", lag, "--length", 1000, "--valid-length", chars,
                               "--seed", 3]  # fmt: skip
    out = {}
    for name, args in made.items():
        out[name] = work / name
        if REUSE and (out[name] / "truth.json").is_file():
            continue
        valid = [] if "--valid-length" in args else ["--valid-length", s["valid_length"]]
        charlm("data", "synth", *args, *valid, "--out", out[name])
    return out


DONE = "compare_cells.json"  # written into a run once it trained: what it was trained with


def train_one(
    data: Path, run: Path, overrides: list[str], steps: int, seed: int, may_fail: bool = False
) -> float:
    """Train one run (or, with --reuse, keep one this script already trained the same way)."""
    sets = [*overrides, f"train.max_steps={steps}", f"train.seed={seed}", "train.threads=1"]
    sets += ["train.checkpoint_every=100", "train.keep_checkpoints=1000", "train.device=cpu"]
    sets += ["train.log_every=10"]  # a finer gradient-norm trace for the clipping figure
    done = run / DONE
    if REUSE and done.is_file():
        earlier = json.loads(done.read_text())
        if earlier["sets"] == sets and earlier["data"] == str(data):
            return earlier["seconds"]
    started = time.perf_counter()
    charlm(
        "train", data / "train.txt", "--val-file", data / "valid.txt", "--config",
        "lag-curriculum", "--out", run, "--force", "-q", *[x for s in sets for x in ("--set", s)],
        may_fail=may_fail,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    done.write_text(json.dumps({"sets": sets, "data": str(data), "seconds": seconds}) + "\n")
    return seconds


def summarise(run: Path, lags: list[int], top: int) -> dict:
    """The best checkpoint's validation record (by recall loss, as best_by chose it): per lag
    recall loss and accuracy; the stages reached; the gradient-norm trace."""
    records = read_metrics(run / "metrics.jsonl")
    vals = [r for r in records if r.get("kind") == "val" and r.get("groups")]
    finite = [r for r in vals if r.get("recall_loss") is not None]
    best = min(finite, key=lambda r: r["recall_loss"]) if finite else {"step": None, "groups": {}}
    stages = [(r["step"], r["advanced_to"]) for r in vals if r.get("advanced_to")]
    reached = next((step for step, name in stages if name == f"lag{top}"), None)
    per_lag = {
        lag: best["groups"].get(f"lag{lag}", {}) for lag in lags
    }  # group names as `charlm data synth --lags` writes them
    trains = [r for r in records if r.get("kind") == "train"]
    return {
        "best_step": best["step"],
        "recall_loss": {lag: g.get("recall_loss") for lag, g in per_lag.items()},
        "recall_accuracy": {lag: g.get("recall_accuracy") for lag, g in per_lag.items()},
        "stages": stages,
        "last_step": max((r["step"] for r in records if "step" in r), default=0),
        "grad_norm": [(r["step"], r.get("grad_norm")) for r in trains],
        "bad_steps": max((r.get("bad_steps") or 0 for r in trains), default=0),
        "val_recall": [(r["step"], r.get("recall_loss")) for r in vals],
        "reached_last": reached,  # the step it moved to the last stage (None: never)
        # the last stage's accuracy at each evaluation after reaching it
        "last_stage": [r.get("recall_accuracy") for r in vals if reached and r["step"] > reached],
        "final_accuracy": {
            lag: vals[-1]["groups"].get(f"lag{lag}", {}).get("recall_accuracy") for lag in lags
        }
        if vals
        else {},  # fmt: skip
    }


def train_plan(s: dict) -> list[tuple[str, int, list[str], str]]:
    """(name, seed, overrides, data) of every run: the five models on every seed, the IRNN's
    variants (one setting changed; one on the config's own data draw), the clipping pair
    (first seed), and the five models on the copy task."""
    plan = [(m, seed, MODELS[m], "lagc") for m in MODELS for seed in s["seeds"]]
    for name, extra in IRNN_VARIANTS.items():
        data = "lagc-config" if name == CONFIG_DATA_RUN else "lagc"
        plan += [(name, seed, [*MODELS["irnn"], *extra], data) for seed in s["seeds"]]
    for name, clip in CLIPPING.items():
        sets = [*MODELS["irnn"], *CLIP_SGD, f"optim.clip_norm={clip}"]
        plan.append((name, s["seeds"][0], sets, "lagc"))
    copy = s["copy"]
    plan += [(f"copy-{m}", seed, MODELS[m], "copyc") for m in MODELS for seed in copy["seeds"]]
    return plan


def train_all(s: dict, data: dict[str, Path], work: Path, jobs: int) -> dict:
    """Every run of train_plan, `jobs` at a time (one thread each)."""

    def one(item: tuple) -> tuple:
        name, seed, overrides, where = item
        run = work / "runs" / f"{name}-s{seed}"
        copy = where == "copyc"
        lags = s["copy"]["lags"] + s["copy"]["heldout"] if copy else s["lags"] + s["heldout"]
        seconds = train_one(data[where], run, overrides, s["steps"], seed, name in CLIPPING)
        top = (s["copy"]["lags"] if copy else s["lags"])[-1]
        result = summarise(run, lags, top)
        result |= {"seconds": seconds, "run": str(run), "seed": seed, "data": where}
        print(
            f"{name:12s} seed {seed}: recall L={top} {result['recall_loss'][top]} "
            f"acc {result['recall_accuracy'][top]} stages {result['stages']} {seconds:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        return (name, seed), result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(pool.map(one, train_plan(s)))


def spread(values: list[float | None]) -> tuple[float, float, float] | None:
    got = [v for v in values if v is not None]
    return (statistics.median(got), min(got), max(got)) if got else None


def views(s: dict, data: dict[str, Path], results: dict, docs: Path) -> dict:
    """The `charlm gradients` figures for the page (first seed of every model), as JSON too;
    the key-readout probe and the Jacobian back to the key of every run."""
    top, seed = s["lags"][-1], s["seeds"][0]
    text = data[f"lag{top}"] / "valid.txt"
    runs = [results[(m, seed)]["run"] for m in MODELS]
    tiny = ["--set", "model.layers=1", "--set", "model.hidden_size=64", "--set"]
    tiny += ["model.embedding_dim=16", "--config", "lag-curriculum"]
    common = ["--text", text, "--max-lag", top + 1, "--json"]
    out = {}
    fresh = ",".join(MODELS)
    out["fresh_random"] = charlm("gradients", "--fresh", fresh, *tiny, *common,
                                 "--plot", docs / "cells_fresh.png")  # fmt: skip
    out["trained_loss"] = charlm("gradients", *runs, *common, "--at", "task",
                                 "--plot", docs / "cells_trained.png")  # fmt: skip
    out["trained_jacobian"] = charlm(
        "gradients", *runs, *common, "--at", "task", "--measure", "jacobian",
        "--plot", docs / "cells_jacobian.png", "--histograms", docs / "cells_saturation.png",
        "--singular-values", docs / "cells_singular.png",
    )  # fmt: skip
    out["fresh_jacobian"] = charlm("gradients", "--fresh", fresh, *tiny, *common, "--at", "task",
                                   "--measure", "jacobian", "--singular-values",
                                   docs / "cells_singular_fresh.png")  # fmt: skip
    gru = results[("gru", seed)]["run"]
    out["gru_checkpoints"] = charlm(
        "gradients", gru, *common, "--at", "task", "--measure", "jacobian", "--checkpoints",
        _spaced_steps(Path(gru)), "--plot", docs / "cells_checkpoints.png",
    )  # fmt: skip
    out |= probe_views(s, data, results, docs)
    return {
        k: [json.loads(line) for line in v.splitlines() if line.strip()] for k, v in out.items()
    }


def probe_views(s: dict, data: dict[str, Path], results: dict, docs: Path) -> dict[str, str]:
    """The probe along lines of the held-out lag H (first seeds, k = 0..H+1, the figure), the
    probe at the recall (k = 0) of every run on lines of each lag, and every run's state
    Jacobian back to the key (lines of the last trained lag L, k = L + 1)."""
    top, seed = s["lags"][-1], s["seeds"][0]
    first = [results[(m, seed)]["run"] for m in MODELS]
    every = [results[(m, sd)]["run"] for m in MODELS for sd in s["seeds"]]
    probe = ["--at", "task", "--measure", "probe", "--batch", PROBE_LINES, "--json"]
    text, held = data[f"probe{top}"] / "valid.txt", s["heldout"][-1]
    curve = ["--text", data[f"probe{held}"] / "valid.txt", "--max-lag", held + 1]
    out = {
        "probe_curve": charlm(
            "gradients", *first, *curve, *probe, "--plot", docs / "cells_probe.png"
        ),  # fmt: skip
        "jacobian_every": charlm(
            "gradients",
            *every,
            "--text",
            text,
            "--max-lag",
            top + 1,
            "--at",
            "task",
            "--measure",
            "jacobian",
            "--json",
        ),  # fmt: skip
    }
    for lag in s["probe_lags"]:
        out[f"probe_lag{lag}"] = charlm(
            "gradients", *every, "--text", data[f"probe{lag}"] / "valid.txt", "--max-lag", 0,
            *probe,
        )  # fmt: skip
    return out


def _spaced_steps(run: Path, count: int = 6) -> str:
    """About `count` kept checkpoint steps spread over the run (all if fewer)."""
    steps = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    pick = sorted({steps[round(i * (len(steps) - 1) / (count - 1))] for i in range(count)})
    return ",".join(map(str, pick))


def plot_recall(s: dict, results: dict, out: Path, task: str = "lag") -> None:
    """Recall (or copy) loss and accuracy against lag: median over seeds, the band from min to
    max."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = s["copy"] if task == "copy" else s
    lags, prefix, seeds = t["lags"] + t["heldout"], "copy-" if task == "copy" else "", t["seeds"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.4), sharex=True)
    for i, model in enumerate(MODELS):
        for ax, key in ((ax_loss, "recall_loss"), (ax_acc, "recall_accuracy")):
            rows = [
                spread([results[(prefix + model, sd)][key][lag] for sd in seeds]) for lag in lags
            ]
            xs = [lag for lag, r in zip(lags, rows, strict=True) if r]
            med, low, high = zip(*[r for r in rows if r], strict=True) if xs else ((), (), ())
            ax.plot(xs, med, "o-", color=f"C{i}", label=model)
            ax.fill_between(xs, low, high, color=f"C{i}", alpha=0.15)
    ax_loss.axhline(CHANCE, color="grey", ls="--", lw=1, label="chance (ln 8)")
    ax_acc.axhline(1 / 8, color="grey", ls="--", lw=1)
    for ax in (ax_loss, ax_acc):
        ax.axvline(t["lags"][-1] * 1.2, color="grey", ls=":", lw=1)
        ax.set(xscale="log", xlabel="lag L (right of the dotted line: never trained on)")
        ax.set_xticks(lags, [str(lag) for lag in lags])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3, which="both")
    ax_loss.set_yscale("symlog", linthresh=0.01)
    what = (
        "copy loss (the copied string, per symbol)"
        if task == "copy"
        else "recall loss (key after '=')"
    )
    ax_loss.set(ylabel="nats (linear below 0.01)", title=what)
    ax_loss.set_ylim(bottom=0)
    ax_acc.set(ylabel="share correct", title=what.replace("loss", "accuracy"), ylim=(0, 1.02))
    ax_loss.legend(fontsize=8)
    caption = (
        f"{task} task; best checkpoint by recall loss of each run; median over seeds {seeds}, "
        f"band: lowest to highest; lags {t['lags']} trained by curriculum, {t['heldout']} held out"
    )
    _finish(fig, caption, out)


def plot_probe_lags(s: dict, results: dict, measured: dict, out: Path) -> None:
    """Per model, against the lag of the lines: the probe's held-out accuracy at the recall
    (solid) and the model's own accuracy there (dashed), median over seeds, band min to max."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lags = s["probe_lags"]
    fig, axes = plt.subplots(1, len(MODELS), figsize=(15, 3.8), sharex=True, sharey=True)
    for ax, model in zip(axes, MODELS, strict=True):
        runs = {results[(model, sd)]["run"] for sd in s["seeds"]}
        for key, style, label in (("probe", "o-", "probe"), ("own", "s--", "own accuracy")):
            rows = []
            for lag in lags:
                got = [r for r in measured[f"probe_lag{lag}"] if r["source"] in runs]
                values = [
                    r["accuracy"][0][0] if key == "probe" else r["model_accuracy"] for r in got
                ]
                rows.append(spread(values))
            med, low, high = zip(*rows, strict=True)
            colour = "C0" if key == "probe" else "C3"
            ax.plot(lags, med, style, color=colour, label=label, ms=4)
            ax.fill_between(lags, low, high, color=colour, alpha=0.15)
        ax.axhline(1 / 8, color="grey", ls=":", lw=1)
        ax.axvline(s["lags"][-1] * 1.2, color="grey", ls=":", lw=1)
        ax.set(xscale="log", title=model, xlabel="lag L of the lines", ylim=(0, 1.03))
        ax.set_xticks(lags, [str(lag) for lag in lags], fontsize=7)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy at the recall")
    axes[0].legend(fontsize=8)
    caption = (
        f"at the recall (k = 0) of lines of each lag: held-out accuracy of a linear readout of "
        f"the state fitted to the key (solid) and the model's own accuracy on the same lines "
        f"(dashed); median over seeds {s['seeds']}, band lowest to highest; best checkpoints; "
        f"dotted: 1/8, and the last trained lag"
    )
    _finish(fig, caption, out)


def plot_clipping(s: dict, results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = s["seeds"][0]
    fig, (ax_g, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for i, name in enumerate(CLIPPING):
        r, label = (
            results[(name, seed)],
            f"clip_norm {CLIPPING[name]:g}" if CLIPPING[name] else "no clipping",
        )
        steps, norms = zip(*[(a, b) for a, b in r["grad_norm"] if b is not None], strict=True)
        ax_g.plot(steps, norms, color=f"C{i}", lw=1, label=label)
        vals = [(a, b) for a, b in r["val_recall"] if b is not None]
        if vals:
            ax_r.plot(*zip(*vals, strict=True), "o-", ms=3, color=f"C{i}", label=label)
    ax_g.axhline(1.0, color="grey", ls=":", lw=1)
    ax_g.set(yscale="log", xlabel="step", ylabel="|g| before clipping", title="IRNN gradient norm")
    ax_r.axhline(CHANCE, color="grey", ls="--", lw=1)
    ax_r.set(
        xlabel="step", ylabel="nats", title=f"recall loss of the current target (L={s['lags'][-1]})"
    )
    for ax in (ax_g, ax_r):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    caption = (
        f"the same IRNN (relu, identity W_hh, seed {seed}), plain SGD lr 0.05, on the same "
        "curriculum with optim.clip_norm=1 and with 0; gradient norm logged every 10 steps"
    )
    _finish(fig, caption, out)


def _finish(fig, caption: str, out: Path) -> None:
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.text(0.01, 0.01, caption, fontsize=8, color="0.25")
    fig.savefig(out, dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lags 5-20, 2 seeds (~3 minutes)")
    parser.add_argument("--seeds", type=int, nargs="+", help="instead of 1 2 3 (quick: 1 2)")
    parser.add_argument("--steps", type=int, help="train.max_steps per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--work", type=Path, default=Path("runs/cells"), help="runs and data")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="cells.md and PNGs")
    parser.add_argument(
        "--doc-only", action="store_true", help="rewrite cells.md from WORK/results.json"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="keep WORK's data and runs trained the same way"
    )
    parser.add_argument("--train-only", action="store_true", help="stop after the training runs")
    args = parser.parse_args()
    global REUSE, VIEWS
    REUSE, VIEWS = args.reuse, args.work.resolve() / "views"
    if args.doc_only:
        saved = json.loads((args.work / "results.json").read_text())
        results = {_key(k): _int_lags(r) for k, r in saved["runs"].items()}
        draw(saved["settings"], results, saved["views"], args.docs)
        write_doc(saved["settings"], results, saved["views"], saved["info"], args.docs / "cells.md")
        return
    s = settings(args)
    s["probe_lines"] = PROBE_LINES
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    args.work.mkdir(parents=True, exist_ok=True)
    args.docs.mkdir(parents=True, exist_ok=True)
    data = make_data(s, args.work.resolve())
    results = train_all(s, data, args.work.resolve(), args.jobs)
    if args.train_only:
        return
    measured = views(s, data, results, args.docs)
    info = {
        "load": [load_at_start, os.getloadavg()[0]],
        "command": "python " + shlex.join(["scripts/compare_cells.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores",
        "minutes": (time.perf_counter() - started) / 60,
        "runs": len(results),
        "run_minutes": sum(r["seconds"] for r in results.values()) / 60,
    }
    runs = {f"{name}-s{seed}": r for (name, seed), r in results.items()}
    saved = {"info": info, "settings": s, "runs": runs, "views": measured}
    (args.work / "results.json").write_text(json.dumps(saved) + "\n")
    draw(s, results, measured, args.docs)
    write_doc(s, results, measured, info, args.docs / "cells.md")
    print(f"wrote {args.docs / 'cells.md'} in {info['minutes']:.1f} minutes", file=sys.stderr)


def draw(s: dict, results: dict, measured: dict, docs: Path) -> None:
    """The page's figures drawn here (the others come from `charlm gradients` in views)."""
    plot_recall(s, results, docs / "cells_recall.png")
    plot_recall(s, results, docs / "cells_copy.png", task="copy")
    plot_probe_lags(s, results, measured, docs / "cells_probe_lags.png")
    plot_clipping(s, results, docs / "cells_clipping.png")


def _key(name: str) -> tuple[str, int]:
    model, _, seed = name.rpartition("-s")
    return model, int(seed)


def _int_lags(run: dict) -> dict:
    """JSON made the lags strings: back to ints."""
    for key in ("recall_loss", "recall_accuracy", "final_accuracy"):
        run[key] = {int(lag): v for lag, v in run[key].items()}
    return run


if __name__ == "__main__":
    main()
