"""Which initialisation learns fastest: charlm's settings against the plain PyTorch loop.

Every case trains charlm (`charlm.training.run.train` in a fresh one-thread process) under each
initialisation variant, and the plain loop of scripts/plain_loop.py on the very same prepared ids,
with the same model, optimiser, batch and window, and records the validation loss after each
budget of steps. Two jobs run at a time (one per core). Cases:
  markov   order-2 Markov source over 24 symbols (exact entropy known), charlm's default model
           (char GRU 2x128, embedding 48, RMSProp 1e-3, batch 32, window 64)
  chars    tiny Shakespeare, configs/char-rnn.yaml's LSTM 2x128 (RMSProp 2e-3, clamp 5)
  wt2-sgd  WikiText-2 words as pytorch/examples tokenises them, LSTM 2x200, SGD lr 20, clip 0.25,
           against pytorch/examples' own init (embedding and decoder U(+-0.1), zero bias)
  wt2-rms  the same model with RMSProp 1e-3
  tied     the tutorial's word GRU 2x128 with tied 128-d embedding/decoder, WikiText-2, RMSProp

    python scripts/init_study.py --cases markov --seeds 1,2 --json init.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DATA = Path(os.environ.get("CHARLM_SHARED_DATA", "/work/shared/data"))
HERE = Path(__file__).resolve().parent

GRU = ["model.cell=gru", "model.hidden_size=128", "model.embedding_dim=32",
       "train.batch_size=32", "train.seq_len=64"]  # fmt: skip
CHARRNN = ["model.cell=lstm", "model.hidden_size=128", "model.embedding_dim=128",
           "optim.lr=2e-3", "optim.alpha=0.95", "optim.eps=1e-8", "optim.clip_norm=0",
           "optim.clip_value=5", "train.batch_size=50", "train.seq_len=50"]  # fmt: skip
WT2 = ["model.cell=lstm", "model.hidden_size=200", "model.embedding_dim=200",
       "train.batch_size=20", "train.seq_len=35"]  # fmt: skip
SGD = ["optim.name=sgd", "optim.lr=20", "optim.clip_norm=0.25"]
TIED = ["model.cell=gru", "model.hidden_size=128", "model.embedding_dim=128",
        "model.tie_weights=true", "train.batch_size=32", "train.seq_len=35"]  # fmt: skip

# case: (data, charlm settings, plain-loop settings, budgets in steps, validation windows)
CASES = {
    "markov": ("markov", [], dict(cell="gru", hidden=128, embedding=48, batch=32, seq=64),
               (250, 500, 1000, 1500), 0),
    "chars": ("shakespeare", CHARRNN, dict(cell="lstm", hidden=128, embedding=128, batch=50,
              seq=50, lr=2e-3, clip=5.0, clip_value=True, optimizer="rmsprop-charrnn"),
              (200, 400, 600), 0),
    "wt2-sgd": ("wikitext2", WT2 + SGD, dict(cell="lstm", hidden=200, embedding=200, batch=20,
                seq=35, optimizer="sgd", lr=20.0, clip=0.25, init="examples"), (75, 150), 40),
    "wt2-rms": ("wikitext2", WT2, dict(cell="lstm", hidden=200, embedding=200, batch=20, seq=35),
                (75, 150), 40),
    "tied": ("wikitext2", TIED, None, (75, 150), 40),
}  # fmt: skip
VARIANTS = {  # label: charlm settings laid over the case's
    "charlm 0.1 init": ["model.init=charlm"],
    "pytorch init": ["model.init=pytorch"],
    "pytorch init + forget 0": ["model.init=pytorch", "model.forget_bias=0"],
    "pytorch init + unigram 0.5": ["model.init=pytorch", "model.unigram_bias=0.5"],
    "pytorch init + forget 0 + unigram 0.5": [
        "model.init=pytorch", "model.forget_bias=0", "model.unigram_bias=0.5"],
    "pytorch init + lr 2e-3": ["model.init=pytorch", "optim.lr=2e-3"],
    "pytorch init + lr 2e-3 + unigram 0.5": [
        "model.init=pytorch", "optim.lr=2e-3", "model.unigram_bias=0.5"],
}  # fmt: skip


MARKOV_LENGTH = [200_000]  # characters of the Markov training text (--markov-length)


def prepare(name: str, work: Path) -> Path:
    out = work / f"{name}-data"
    if (out / "meta.json").exists():
        return out
    charlm = [sys.executable, "-m", "charlm"]
    if name == "markov":
        synth = work / "markov"
        subprocess.run(
            [*charlm, "data", "synth", "markov", "--order", "2", "--alphabet", "24",
             "--length", str(MARKOV_LENGTH[0]), "--out", str(synth)],
            check=True, capture_output=True,
        )  # fmt: skip
        args = [str(synth / "train.txt"), "--val-file", str(synth / "valid.txt")]
    elif name == "shakespeare":
        args = [str(DATA / "tinyshakespeare/input.txt")]
    else:
        args = [str(DATA / "wikitext-2/train.txt"), "--val-file", str(DATA / "wikitext-2/valid.txt"),
                "--level", "word", "--vocab-size", "0", "--keep-case", "--segments", "lines",
                "--word-split", "whitespace"]  # fmt: skip
    subprocess.run([*charlm, "prepare", *args, "--out", str(out)], check=True, capture_output=True)
    return out


def run_charlm(data: Path, settings: list[str], budgets, windows: int, seed: int) -> dict:
    step = budgets[0]
    with tempfile.TemporaryDirectory() as tmp:
        items = [*settings, f"train.max_steps={budgets[-1]}", f"train.eval_every={step}",
                 f"train.eval_batches={windows}", f"train.checkpoint_every={budgets[-1]}",
                 "train.threads=1", f"train.seed={seed}", "train.log_every=50"]  # fmt: skip
        code = (
            "from pathlib import Path\nfrom charlm.training.run import train\n"
            f"train(Path({tmp!r}) / 'run', data_dir=Path({str(data)!r}), overrides={items!r}, "
            "show_progress=False)\n"
            "import json\n"
            f"print(json.dumps([r for r in map(json.loads, open(Path({tmp!r}) / 'run' / "
            "'metrics.jsonl')) if r['kind'] == 'val']))\n"
        )
        out = _child(code)
    return {str(r["step"]): r["val_loss"] for r in out if r["step"] in budgets}


def run_plain(data: Path, kwargs: dict, budgets, windows: int, seed: int) -> dict:
    code = (
        f"import sys, json, numpy as np\nsys.path.insert(0, {str(HERE)!r})\n"
        "import torch; torch.set_num_threads(1)\nimport plain_loop\n"
        f"meta = json.load(open({str(data / 'meta.json')!r}))\n"
        f"tr = np.fromfile({str(data / 'train.bin')!r}, dtype=meta['dtype'])\n"
        f"va = np.fromfile({str(data / 'val.bin')!r}, dtype=meta['dtype'])\n"
        f"out = plain_loop.train(tr, meta['vocab_size'], steps={budgets[-1]}, seed={seed}, "
        f"val_ids=va, eval_at={tuple(budgets)!r}, eval_windows={windows}, **{kwargs!r})\n"
        "print(json.dumps(out['curve']))\n"
    )
    return {str(k): v for k, v in _child(code).items()}


def _child(code: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"job failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--markov-length", type=int, default=200_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    MARKOV_LENGTH[0] = args.markov_length
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {}
    with tempfile.TemporaryDirectory() as work, ThreadPoolExecutor(args.jobs) as pool:
        futures = {}
        for case in args.cases.split(","):
            data_name, settings, plain, budgets, windows = CASES[case]
            data = prepare(data_name, Path(work))
            for seed in seeds:
                if plain is not None:
                    key = (case, "plain loop", seed)
                    futures[key] = pool.submit(run_plain, data, plain, budgets, windows, seed)
                for label in args.variants.split(","):
                    if "forget" in label and "lstm" not in " ".join(settings):
                        continue
                    job = (data, settings + VARIANTS[label], budgets, windows, seed)
                    futures[(case, label, seed)] = pool.submit(run_charlm, *job)
        for (case, label, seed), future in futures.items():
            curve = future.result()
            results.setdefault(case, {}).setdefault(label, {})[str(seed)] = curve
            print(f"{case:8} {label:24} seed {seed}: {curve}", file=sys.stderr, flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
    show(results)


def show(results: dict) -> None:
    for case, rows in results.items():
        budgets = sorted({int(b) for r in rows.values() for c in r.values() for b in c})
        print(f"\n{case}: validation loss (nats/token), mean over seeds, at step")
        print(f"{'':26}" + "".join(f"{b:>10}" for b in budgets))
        for label, by_seed in rows.items():
            means = [statistics.mean(c[str(b)] for c in by_seed.values()) for b in budgets]
            print(f"{label:26}" + "".join(f"{m:>10.4f}" for m in means))


if __name__ == "__main__":
    main()
