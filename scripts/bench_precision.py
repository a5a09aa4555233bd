"""fp32 against bf16 training on this CPU: tokens/s in alternating rounds, validation loss at equal
steps over several seeds, for charlm's 2x512 char LSTM (and other cells) on tiny Shakespeare.

    python scripts/bench_precision.py                          # 2x512 LSTM, 100 steps x 2 seeds
    python scripts/bench_precision.py --steps 400              # the 400-step comparison
    python scripts/bench_precision.py --cells lstm,gru,rnn --threads 1 --json out.json
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python scripts/bench_precision.py   # oneDNN without AMX

Every run is `charlm train` (charlm.training.run.train) on data prepared once from --text with
charlm's split (the last 10% of the text, cut at a line break, is validation). The validation
loss is charlm's own evaluation, always in fp32, over the whole split at the last step; tokens/s is
the median of the run's metrics.jsonl training records after the first (which holds the warm-up).
Rounds alternate the precisions (fp32 first in odd rounds, bf16 first in even ones), so a load
that drifts hits both alike. It prints the CPU's model and bf16 flags and the load average, and
times a 2048^3 matrix product in each precision. Read nothing from a loaded machine as final.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from charlm.data.prepare import PrepareSettings, prepare
from charlm.rundir.records import read_metrics
from charlm.system.device import cpu_bf16_features, cpu_flags, cpu_name
from charlm.training.run import train

TEXT = Path("/work/shared/data/tinyshakespeare/input.txt")  # ../shared/data beside the project
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16", "bf16", "sve")
PRECISIONS = ("fp32", "bf16")


def describe_cpu() -> dict:
    """What the figures depend on: the CPU, its bf16 flags, PyTorch, threads and oneDNN's cap."""
    flags = cpu_flags()
    return {
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "flags": [f for f in FLAGS if f in flags],
        "native_bf16": cpu_bf16_features(),
        "torch": torch.__version__,
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "load_average": os.getloadavg(),
    }


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up (oneDNN's first call plans the kernel)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def one_run(
    work: Path,
    cell: str,
    precision: str,
    seed: int,
    steps: int,
    args,
    full_eval: bool = True,  # noqa: ANN001
) -> dict:
    """A training run of `steps` steps; its tokens/s and final validation loss (over the whole
    split, or one batch for a speed round)."""
    run = work / f"{cell}-{precision}-{seed}-{steps}-{time.monotonic_ns()}"
    sets = [
        f"model.cell={cell}",
        f"model.layers={args.layers}",
        f"model.hidden_size={args.hidden}",
        f"model.embedding_dim={args.embedding}",
        "optim.name=adam",
        f"optim.lr={args.lr}",
        "optim.clip_norm=5.0",
        "train.batch_size=32",
        "train.seq_len=64",
        f"train.max_steps={steps}",
        "train.log_every=5",
        f"train.eval_every={steps}",
        f"train.eval_batches={0 if full_eval else 1}",
        f"train.checkpoint_every={steps}",
        "train.sample_every_eval=false",
        f"train.threads={args.threads}",
        f"train.precision={precision}",
        f"train.seed={seed}",
    ]
    train(run, data_dir=work / "data", overrides=sets, show_progress=False)
    records = read_metrics(run / "metrics.jsonl")
    rates = [r["tokens_per_s"] for r in records if r["kind"] == "train"][1:]
    val = [r["val_loss"] for r in records if r["kind"] == "val"]
    result = {"tokens_per_s": statistics.median(rates) if rates else None, "val_loss": val[-1]}
    print(f"  {cell} {precision} seed {seed}, {steps} steps: {result}", flush=True)
    return result


def order(round_index: int) -> tuple[str, ...]:
    return PRECISIONS if round_index % 2 == 0 else PRECISIONS[::-1]


def measure(work: Path, cell: str, args) -> dict:  # noqa: ANN001
    """Speed rounds, then one run per seed and precision at equal steps (alternating)."""
    out: dict = {p: {"speed": [], "runs": []} for p in PRECISIONS}
    for index in range(args.rounds):
        for precision in order(index):
            run = one_run(work, cell, precision, 1, args.speed_steps, args, full_eval=False)
            rate = run["tokens_per_s"]
            out[precision]["speed"].append(rate)
    for index, seed in enumerate(args.seeds):
        for precision in order(index):
            result = one_run(work, cell, precision, seed, args.steps, args)
            out[precision]["runs"].append({"seed": seed, **result})
    return out


def report(cell: str, result: dict, args) -> None:  # noqa: ANN001
    rates = {p: [*r["speed"], *(x["tokens_per_s"] for x in r["runs"])] for p, r in result.items()}
    base = statistics.median(rates["fp32"])
    print(f"\n{cell} {args.layers}x{args.hidden} (embedding {args.embedding}), batch 32 x 64")
    print(
        f"{'precision':<10} {'tok/s median':>13} {'vs fp32':>8}   rounds; val loss at step {args.steps} by seed"
    )
    for precision, r in result.items():
        median = statistics.median(rates[precision])
        each = ", ".join(f"{x:,.0f}" for x in rates[precision])
        losses = ", ".join(f"{x['seed']}: {x['val_loss']:.4f}" for x in r["runs"])
        mean = statistics.fmean(x["val_loss"] for x in r["runs"])
        print(
            f"{precision:<10} {median:>13,.0f} {median / base:>7.2f}x   {each}; {losses} (mean {mean:.4f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, default=TEXT, help="tiny Shakespeare's input.txt")
    parser.add_argument("--cells", default="lstm", help="comma-separated: lstm,gru,rnn,...")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--steps", type=int, default=100, help="steps of each seed's run (400: the long comparison)"
    )
    parser.add_argument("--seeds", default="1,2", help="comma-separated seeds (at least 2)")
    parser.add_argument("--rounds", type=int, default=2, help="extra speed-only rounds")
    parser.add_argument("--speed-steps", type=int, default=20, help="steps of a speed round")
    parser.add_argument("--threads", type=int, default=0, help="train.threads (0: charlm's choice)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    cpu = describe_cpu()
    print(json.dumps(cpu))
    if not cpu["native_bf16"]:
        print("no native bf16 on this CPU: charlm refuses train.precision=bf16 here")
        return
    if args.threads:  # the products on the threads the runs train with
        torch.set_num_threads(args.threads)
    gflops = {
        str(d).removeprefix("torch."): matmul_gflops(d) for d in (torch.float32, torch.bfloat16)
    }
    print("matmul 2048^3 GFLOP/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in gflops.items()))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(
            args.text,
            work / "data",
            PrepareSettings(level="char", val_fraction=0.1),
            show_progress=False,
        )
        for cell in args.cells.split(","):
            results[cell] = measure(work, cell, args)
            report(cell, results[cell], args)
    after = os.getloadavg()
    print(f"\nload average before {cpu['load_average']}, after {after}")
    if args.json:
        summary = {
            "cpu": cpu,
            "load_after": after,
            "matmul_gflops": gflops,
            "args": vars(args) | {"text": str(args.text), "json": str(args.json)},
            "cells": results,
        }
        args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
