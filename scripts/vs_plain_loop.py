"""charlm's default training against the plain PyTorch loop a sceptic would write.

Both train the same model on the same prepared ids with the same optimiser, batch, window and
number of steps, each in a fresh process with the machine's default environment (no OMP_* or
GOMP_* variables: what each program chooses by itself), alternating plain, charlm, plain, ...
Printed per case: validation loss after the budget (the same first windows of the same
validation ids), training tokens/s (evaluation excluded) and charlm's ratio to the plain loop.

  char  tiny Shakespeare, char GRU 2x128, embedding 32, batch 32, window 64, RMSProp 1e-3, clip 5
  word  WikiText-2 as pytorch/examples tokenises it, LSTM 2x200, SGD lr 20, clip 0.25, 20 x 35

    python scripts/vs_plain_loop.py                 # both cases, 2 rounds: about 10 minutes
    python scripts/vs_plain_loop.py --cases char --rounds 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from charlm.rundir.records import read_metrics

DATA = Path(os.environ.get("CHARLM_SHARED_DATA", "/work/shared/data"))
HERE = Path(__file__).resolve().parent
_OMP = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "KMP_BLOCKTIME")

CASES = {  # name: (prepare arguments, charlm settings, plain-loop settings, steps, eval windows)
    "char": (
        [str(DATA / "tinyshakespeare/input.txt")],
        ["model.cell=gru", "model.hidden_size=128", "model.embedding_dim=32",
         "train.batch_size=32", "train.seq_len=64"],
        dict(cell="gru", hidden=128, embedding=32, batch=32, seq=64),
        400, 0,
    ),
    "word": (
        [str(DATA / "wikitext-2/train.txt"), "--val-file", str(DATA / "wikitext-2/valid.txt"),
         "--level", "word", "--vocab-size", "0", "--keep-case", "--segments", "lines",
         "--word-split", "whitespace"],
        ["model.cell=lstm", "model.hidden_size=200", "model.embedding_dim=200",
         "optim.name=sgd", "optim.lr=20", "optim.clip_norm=0.25", "train.batch_size=20",
         "train.seq_len=35"],
        dict(cell="lstm", hidden=200, embedding=200, batch=20, seq=35, optimizer="sgd",
             lr=20.0, clip=0.25),
        150, 40,
    ),
}  # fmt: skip


def _child(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _OMP}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_plain(data: Path, kwargs: dict, steps: int, windows: int, seed: int) -> dict:
    code = (
        f"import sys, json, numpy as np\nsys.path.insert(0, {str(HERE)!r})\nimport plain_loop\n"
        f"meta = json.load(open({str(data / 'meta.json')!r}))\n"
        f"tr = np.fromfile({str(data / 'train.bin')!r}, dtype=meta['dtype'])\n"
        f"va = np.fromfile({str(data / 'val.bin')!r}, dtype=meta['dtype'])\n"
        f"out = plain_loop.train(tr, meta['vocab_size'], steps={steps}, seed={seed}, **{kwargs!r})\n"
        f"loss = plain_loop.evaluate(out['net'], va, {kwargs['batch']}, {kwargs['seq']}, {windows})\n"
        "print(json.dumps({'val_loss': loss, 'tokens_per_s': out['tokens_per_s']}))\n"
    )
    return _child(code)


def run_charlm(data: Path, settings: list[str], steps: int, windows: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        items = [*settings, f"train.max_steps={steps}", f"train.eval_every={steps}",
                 f"train.eval_batches={windows}", f"train.checkpoint_every={steps}",
                 "train.log_every=10", f"train.seed={seed}"]  # fmt: skip
        code = (
            "import json\nfrom pathlib import Path\nfrom charlm.training.run import train\n"
            f"train(Path({str(run)!r}), data_dir=Path({str(data)!r}), overrides={items!r}, "
            "show_progress=False)\nprint('{}')\n"
        )
        _child(code)
        records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"][1:]  # the first interval warms up
    seconds = sum(1 / r["tokens_per_s"] for r in train)
    threads = sorted({r.get("threads") for r in train}, key=str)
    val = [r for r in records if r["kind"] == "val"][-1]["val_loss"]
    return {"val_loss": val, "tokens_per_s": len(train) / seconds, "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict = {"load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as work:
        for case in args.cases.split(","):
            prep, settings, plain, steps, windows = CASES[case]
            data = Path(work) / case
            subprocess.run(
                [sys.executable, "-m", "charlm", "prepare", *prep, "--out", str(data)],
                check=True, capture_output=True,
            )  # fmt: skip
            rows: dict = {"plain": [], "charlm": []}
            for seed in range(1, args.rounds + 1):
                rows["plain"].append(run_plain(data, plain, steps, windows, seed))
                rows["charlm"].append(run_charlm(data, settings, steps, windows, seed))
                for who in ("plain", "charlm"):
                    print(f"{case} seed {seed} {who:6} {rows[who][-1]}", file=sys.stderr)
            results[case] = {"steps": steps, **rows}
    results["load_average_end"] = os.getloadavg()
    show(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def show(results: dict) -> None:
    print(f"\n{'case':6}{'':8}{'val loss':>10}{'tokens/s':>12}   (medians over rounds)")
    for case, rows in results.items():
        if not isinstance(rows, dict):
            continue
        med = {
            who: {
                k: statistics.median(r[k] for r in rows[who]) for k in ("val_loss", "tokens_per_s")
            }
            for who in ("plain", "charlm")
        }
        for who in ("plain", "charlm"):
            print(f"{case:6}{who:8}{med[who]['val_loss']:>10.4f}{med[who]['tokens_per_s']:>12,.0f}")
        ratio = med["charlm"]["tokens_per_s"] / med["plain"]["tokens_per_s"]
        gap = med["charlm"]["val_loss"] - med["plain"]["val_loss"]
        print(
            f"{case:6}{'charlm/plain':14}  speed {ratio:.2f}x, loss {gap:+.4f} nats ({rows['steps']} steps)"
        )


if __name__ == "__main__":
    main()
