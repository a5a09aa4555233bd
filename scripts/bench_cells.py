"""Training and sampling speed of every cell, side by side: the fused gru/lstm against the
unrolled lstm-peephole and gru-tutorial.

    python scripts/bench_cells.py                 # about 4 minutes on 2 CPU cores
    python scripts/bench_cells.py --rounds 1 --steps 20

Each round trains every cell in turn (alternating, so drift on a shared machine hits all alike)
with `charlm train` on the first 300 KB of tiny Shakespeare (char level), and reads tokens/s
from its metrics.jsonl records after the first (which holds the warm-up); then it times the
lean sampling step (`LeanStepper`, batch 1). The medians over rounds are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from charlm.config import ModelConfig
from charlm.model.network import LeanStepper, RNNLanguageModel
from charlm.rundir.records import read_metrics
from charlm.training.run import train

TEXT = Path("/work/shared/data/tinyshakespeare/input.txt")
CELLS = ("gru", "lstm", "lstm-peephole", "gru-tutorial")


def train_rate(cell: str, text: Path, work: Path, args: argparse.Namespace) -> float:
    run = work / f"{cell}-{time.monotonic_ns()}"
    sets = [
        f"model.cell={cell}",
        f"model.layers={args.layers}",
        f"model.hidden_size={args.hidden}",
        "model.embedding_dim=48",
        "train.batch_size=32",
        "train.seq_len=64",
        f"train.max_steps={args.steps}",
        "train.log_every=5",
        "train.eval_every=100000",
        "train.eval_batches=1",
        "train.checkpoint_every=100000",
        f"train.threads={args.threads}",
    ]
    train(run, data_dir=work / "data", overrides=sets, show_progress=False)
    rates = [r["tokens_per_s"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    return statistics.median(rates[1:])


def sample_rate(cell: str, args: argparse.Namespace, seconds: float = 1.0) -> float:
    config = ModelConfig(cell=cell, layers=args.layers, hidden_size=args.hidden, embedding_dim=48)
    model = RNNLanguageModel(config, 65).eval()
    step, state = LeanStepper(model), model.initial_state(1)
    token, count, start = torch.zeros(1, dtype=torch.long), 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - start < seconds:
            logits, state = step(token, state)
            token = torch.multinomial(torch.softmax(logits, -1), 1)[:, 0]
            count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="training steps per measurement")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, dict[str, list[float]]] = {c: {"train": [], "sample": []} for c in CELLS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text = work / "input.txt"
        text.write_text(TEXT.read_text(encoding="utf-8")[:300_000], encoding="utf-8")
        from charlm.data.prepare import PrepareSettings, prepare

        prepare(text, work / "data", PrepareSettings(level="char"), show_progress=False)
        for _ in range(args.rounds):
            for cell in CELLS:
                results[cell]["train"].append(train_rate(cell, text, work, args))
                results[cell]["sample"].append(sample_rate(cell, args))
    base = statistics.median(results["gru"]["train"])
    print(
        f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
        f"{args.layers}x{args.hidden}, batch 32 x 64, {args.rounds} round(s) of {args.steps} steps"
    )
    print(f"{'cell':<14} {'train tok/s':>12} {'vs gru':>7} {'sample tok/s':>13}")
    summary = {}
    for cell in CELLS:
        t = statistics.median(results[cell]["train"])
        s = statistics.median(results[cell]["sample"])
        summary[cell] = {"train_tokens_per_s": t, "sample_tokens_per_s": s, **results[cell]}
        print(f"{cell:<14} {t:>12,.0f} {t / base:>6.2f}x {s:>13,.0f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
