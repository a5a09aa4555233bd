"""Throughput benchmark: charlm's training loop and sampler against plain PyTorch, and preparation.

For each model it measures, in the same run on the same machine:
  * training tokens/s of `charlm train` (read from its metrics.jsonl `tokens_per_s` records after
    the first, which holds the warm-up) and of a plain PyTorch loop of the same model, batch and
    window (pytorch/examples' word_language_model shape); the ratio is the figure to watch;
  * sampling tokens/s at batch 1: charlm's lean step (`LeanStepper`) and naive stepping (the
    `nn.GRU`/`nn.LSTM` module called on a length-1 sequence), both with the same softmax draw;
  * preparation MB/s and peak RSS of `charlm.data.prepare.prepare`, and training peak RSS.
Each training and preparation measurement runs in its own process, so peak RSS is its own.
Rounds alternate plain and charlm and the median is kept: absolute numbers drift on a shared
machine, ratios measured side by side much less.

    python scripts/bench.py --json bench.json            # about 6 minutes on 2 CPU cores
    python scripts/bench.py --models tutorial --rounds 1 # one model, quick

A table goes to stderr, the JSON (machine and date included) to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.nn import functional as F

from charlm.config import ModelConfig
from charlm.data.prepare import load_prepared
from charlm.model.network import LeanStepper, RNNLanguageModel
from charlm.rundir.records import read_metrics

DATA = Path("/work/shared/data")
console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)


@dataclass(frozen=True)
class Spec:
    name: str
    text: str  # path of the training text
    level: str
    vocab_size: int  # word level: the cap (counting specials); char level: ignored
    cell: str
    layers: int
    hidden_size: int
    embedding_dim: int
    batch_size: int
    seq_len: int
    steps: int  # timed training steps per round (after one logging interval of warm-up)
    log_every: int


SPECS = {
    "tutorial": Spec(
        "tutorial", str(DATA / "wikitext-2/train.txt"), "word", 8000, "gru", 2, 128, 48, 32, 35,
        60, 10,
    ),
    "char-rnn": Spec(
        "char-rnn", str(DATA / "tinyshakespeare/input.txt"), "char", 0, "lstm", 2, 512, 64, 50, 50,
        12, 4,
    ),
    "word-lstm-650": Spec(
        "word-lstm-650", str(DATA / "wikitext-2/train.txt"), "word", 34000, "lstm", 2, 650, 650,
        20, 35, 6, 3,
    ),
}  # fmt: skip


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
    }


# Peak RSS is read inside the child from /proc/self/status (VmHWM, this address space only):
# getrusage's ru_maxrss would include the forked copy of this benchmark process before exec.
_PEAK = (
    "\nimport json\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "print(json.dumps({'seconds': seconds, 'peak_rss_mb': int(hwm) / 1024}))\n"
)


def run_child(code: str) -> dict[str, float]:
    """Run Python `code` (which sets `seconds`) in a fresh process: seconds and peak RSS in MB."""
    proc = subprocess.run(
        [sys.executable, "-c", code + _PEAK], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_prepare(spec: Spec, data_dir: Path) -> dict[str, float]:
    """Prepare in a child process; time only the prepare() call, not the interpreter start."""
    code = (
        "import time; from pathlib import Path\n"
        "from charlm.data.prepare import PrepareSettings, prepare\n"
        "t = time.perf_counter()\n"
        f"prepare(Path({spec.text!r}), Path({str(data_dir)!r}), PrepareSettings(level="
        f"{spec.level!r}, vocab_size={spec.vocab_size or 8000}), show_progress=False)\n"
        "seconds = time.perf_counter() - t\n"
    )
    shutil.rmtree(data_dir, ignore_errors=True)  # a cached folder would be reused, not timed
    result = run_child(code)
    megabytes = Path(spec.text).stat().st_size / 1e6
    return {"mb": megabytes, "mb_per_s": megabytes / result["seconds"], **result}


def charlm_train(
    spec: Spec, data_dir: Path, run_dir: Path, threads: int, compile_: bool = False
) -> tuple[float, float]:
    """tokens/s of `charlm.training.run.train` after its first logging interval (which holds the
    warm-up, and with `compile_` the compilation), and its peak RSS."""
    total = spec.steps + spec.log_every
    overrides = {
        "data.level": spec.level,
        "model.cell": spec.cell,
        "model.layers": spec.layers,
        "model.hidden_size": spec.hidden_size,
        "model.embedding_dim": spec.embedding_dim,
        "train.batch_size": spec.batch_size,
        "train.seq_len": spec.seq_len,
        "train.max_steps": total,
        "train.log_every": spec.log_every,
        "train.eval_every": total,
        "train.eval_batches": 1,
        "train.checkpoint_every": total,
        "train.threads": threads,
        "train.compile": compile_,
    }
    items = [f"{key}={value}" for key, value in overrides.items()]
    code = (
        "import time; from pathlib import Path\n"
        "from charlm.training.run import train\n"
        "t = time.perf_counter()\n"
        f"train(Path({str(run_dir)!r}), data_dir=Path({str(data_dir)!r}), overrides={items!r}, "
        "force=True, show_progress=False)\n"
        "seconds = time.perf_counter() - t\n"
    )
    result = run_child(code)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    timed = records[1:]  # the first interval holds the warm-up
    tokens = spec.log_every * spec.batch_size * spec.seq_len
    seconds = sum(tokens / r["tokens_per_s"] for r in timed)
    return len(timed) * tokens / seconds, result["peak_rss_mb"]


def large_prepare(work: Path, megabytes: int, threads: int) -> dict[str, float]:
    """Char-level preparation of tiny Shakespeare repeated to `megabytes`, then a short training
    run on it: MB/s and peak RSS of each (the ids stay memory-mapped while training)."""
    source = (DATA / "tinyshakespeare/input.txt").read_bytes()
    text = work / f"shakespeare-{megabytes}mb.txt"
    with open(text, "wb") as file:
        for _ in range(-(-megabytes * 1_000_000 // len(source))):
            file.write(source)
    spec = Spec("large", str(text), "char", 0, "gru", 1, 64, 16, 32, 64, 20, 10)
    result = measure_prepare(spec, work / "data-large")
    _, train_rss = charlm_train(spec, work / "data-large", work / "run-large", threads)
    text.unlink()
    return {**result, "train_peak_rss_mb": train_rss}


class PlainModel(nn.Module):
    """pytorch/examples' RNNModel without dropout: embedding, fused RNN, linear decoder."""

    def __init__(self, spec: Spec, vocab_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, spec.embedding_dim)
        module = nn.LSTM if spec.cell == "lstm" else nn.GRU
        self.rnn = module(spec.embedding_dim, spec.hidden_size, spec.layers)
        self.decoder = nn.Linear(spec.hidden_size, vocab_size)

    def forward(self, x: torch.Tensor, state):  # noqa: ANN001, ANN201
        output, state = self.rnn(self.embedding(x), state)
        return self.decoder(output), state


_TORCH_THREADS = torch.get_num_threads()  # PyTorch's own default, before anything changes it


def plain_train(spec: Spec, data_dir: Path, threads: int) -> float:
    """tokens/s of a plain loop: RMSProp, clip_grad_norm_, truncated BPTT on batchified ids."""
    torch.set_num_threads(threads or _TORCH_THREADS)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = load_prepared(data_dir)
    vocab = int(data.meta["vocab_size"])
    columns = (len(data.train_ids) - 1) // spec.batch_size
    ids = torch.from_numpy(data.train_ids[: columns * spec.batch_size + 1].astype("int64"))
    inputs = ids[:-1].view(spec.batch_size, columns).t().contiguous().to(device)  # (T, B)
    targets = ids[1:].view(spec.batch_size, columns).t().contiguous().to(device)
    torch.manual_seed(0)
    model = PlainModel(spec, vocab).to(device)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-6)
    shape = (spec.layers, spec.batch_size, spec.hidden_size)
    zeros = torch.zeros(shape, device=device)
    state = (zeros, zeros.clone()) if spec.cell == "lstm" else zeros
    start = 0.0
    for i in range(spec.steps + spec.log_every):
        if i == spec.log_every:  # warm-up done, as for charlm's first logging interval
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        window = slice(i * spec.seq_len, (i + 1) * spec.seq_len)
        state = tuple(s.detach() for s in state) if spec.cell == "lstm" else state.detach()
        logits, state = model(inputs[window], state)
        loss = F.cross_entropy(logits.view(-1, vocab), targets[window].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
    loss.item()  # wait for the last step
    return spec.steps * spec.batch_size * spec.seq_len / (time.perf_counter() - start)


def sampling(spec: Spec, vocab: int, threads: int, rounds: int, seconds: float) -> dict[str, float]:
    """Batch-1 sampling tokens/s, lean step vs the module on a length-1 sequence, alternated."""
    torch.set_num_threads(threads or _TORCH_THREADS)
    config = ModelConfig(
        cell=spec.cell,  # type: ignore[arg-type]
        layers=spec.layers,
        hidden_size=spec.hidden_size,
        embedding_dim=spec.embedding_dim,
    )
    torch.manual_seed(0)
    model = RNNLanguageModel(config, vocab).eval()
    lean = LeanStepper(model)

    def naive(token: torch.Tensor, state):  # noqa: ANN001, ANN202
        output, state = model.rnn(model.embedding(token).unsqueeze(0), state)
        return model.decoder(output[0]), state

    def rate(step) -> float:  # noqa: ANN001
        generator = torch.Generator().manual_seed(0)
        token, state = torch.zeros(1, dtype=torch.long), model.initial_state(1)
        with torch.inference_mode():
            for _ in range(20):
                logits, state = step(token, state)
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                logits, state = step(token, state)
                probs = torch.softmax(logits, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator).view(1)
                count += 1
        return count / (time.perf_counter() - start)

    naive_rates, lean_rates = [], []
    for _ in range(rounds):
        naive_rates.append(rate(naive))
        lean_rates.append(rate(lean))
    ratios = [a / b for a, b in zip(lean_rates, naive_rates, strict=True)]
    return {
        "threads": threads,
        "naive_tokens_per_s": statistics.median(naive_rates),
        "lean_tokens_per_s": statistics.median(lean_rates),
        "ratio": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SPECS), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of plain and charlm")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="training threads: 0 = each program's default (charlm: automatic; plain: PyTorch's)",
    )  # fmt: skip
    parser.add_argument("--sample-threads", default="1,2", help="thread counts for sampling")
    parser.add_argument("--sample-seconds", type=float, default=1.5, help="per timed round")
    parser.add_argument("--prepare-mb", type=int, default=200, help="large text (0 = skip)")
    parser.add_argument("--work", type=Path, help="folder for prepared data and runs (temp)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--compile", action="store_true", help="also time charlm with train.compile=true"
    )
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="charlm-bench-"))
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(sys.argv),
        "models": [],
    }
    for name in args.models.split(","):
        spec = SPECS[name]
        console.print(f"[bold]{name}[/]: preparing, training, sampling", highlight=False)
        data_dir = work / f"data-{name}"
        prep = measure_prepare(spec, data_dir)
        vocab = int(load_prepared(data_dir).meta["vocab_size"])
        charlm_rates, plain_rates, ratios, rss, compiled = [], [], [], [], []
        for r in range(args.rounds):
            plain_rates.append(plain_train(spec, data_dir, args.threads))
            rate, peak = charlm_train(spec, data_dir, work / f"run-{name}-{r}", args.threads)
            charlm_rates.append(rate)
            rss.append(peak)
            ratios.append(rate / plain_rates[-1])
            if args.compile:
                run_dir = work / f"run-{name}-{r}-compiled"
                compiled.append(charlm_train(spec, data_dir, run_dir, args.threads, True)[0])
        samples = [
            sampling(spec, vocab, int(t), max(args.rounds, 2), args.sample_seconds)
            for t in args.sample_threads.split(",")
        ]
        results["models"].append(
            {
                "spec": asdict(spec),
                "vocab_size": vocab,
                "prepare": prep,
                "train": {
                    "threads": args.threads,
                    "charlm_tokens_per_s": statistics.median(charlm_rates),
                    "plain_tokens_per_s": statistics.median(plain_rates),
                    "ratio": statistics.median(ratios),
                    "rounds": {"charlm": charlm_rates, "plain": plain_rates},
                    "charlm_peak_rss_mb": max(rss),
                    **(
                        {
                            "compiled_tokens_per_s": statistics.median(compiled),
                            "compiled_ratio": statistics.median(
                                c / e for c, e in zip(compiled, charlm_rates, strict=True)
                            ),
                            "rounds_compiled": compiled,
                        }
                        if compiled
                        else {}
                    ),
                },
                "sample": samples,
            }
        )
        if args.json:  # after each model, so an interrupted run keeps what it measured
            args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    if args.prepare_mb:
        console.print(f"[bold]large[/]: {args.prepare_mb} MB char preparation", highlight=False)
        results["large_prepare"] = large_prepare(work, args.prepare_mb, args.threads)
    show(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def show(results: dict) -> None:
    m = results["machine"]
    table = Table(
        title=f"charlm bench, {results['date'][:10]}, {m['cpu']} ({m['cpus']} CPUs), "
        f"torch {m['torch']}",
        title_justify="left",
    )
    for column in (
        "model",
        "train tok/s charlm",
        "plain",
        "ratio",
        "sample threads",
        "sample tok/s lean",
        "naive",
        "ratio",
        "prepare MB/s",
        "prep RSS MB",
        "train RSS MB",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model in results["models"]:
        t, p = model["train"], model["prepare"]
        for i, s in enumerate(model["sample"]):
            first = i == 0
            table.add_row(
                model["spec"]["name"] if first else "",
                f"{t['charlm_tokens_per_s']:,.0f}" if first else "",
                f"{t['plain_tokens_per_s']:,.0f}" if first else "",
                f"{t['ratio']:.2f}x" if first else "",
                str(s["threads"]),
                f"{s['lean_tokens_per_s']:,.0f}",
                f"{s['naive_tokens_per_s']:,.0f}",
                f"{s['ratio']:.1f}x",
                f"{p['mb_per_s']:.1f}" if first else "",
                f"{p['peak_rss_mb']:.0f}" if first else "",
                f"{t['charlm_peak_rss_mb']:.0f}" if first else "",
            )
    console.print(table)
    for model in results["models"]:
        t = model["train"]
        if "compiled_ratio" in t:
            console.print(
                f"{model['spec']['name']}: train.compile=true {t['compiled_tokens_per_s']:,.0f} "
                f"tok/s, {t['compiled_ratio']:.3f}x charlm eager",
                highlight=False,
            )
    if "large_prepare" in results:
        p = results["large_prepare"]
        console.print(
            f"large char text: {p['mb']:.0f} MB prepared at {p['mb_per_s']:.1f} MB/s, peak RSS "
            f"{p['peak_rss_mb']:.0f} MB; training on it peak RSS {p['train_peak_rss_mb']:.0f} MB",
            highlight=False,
        )


if __name__ == "__main__":
    main()
