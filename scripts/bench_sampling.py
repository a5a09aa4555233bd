"""Sampling speed on the CPU, fp32 and int8: charlm's path against the lean loop a sceptic writes.

    python scripts/bench_sampling.py                      # lstm-2x512 and quickstart, ~8 min
    python scripts/bench_sampling.py --models lstm-2x512 --rounds 3 --keep /tmp/bench-runs

For each model it trains a char run briefly (`charlm.train`, on TEXT less its last --held-out
characters; --keep DIR keeps the runs and reuses them next time), then measures batch-1 sampling
in this one process, ALTERNATING over --rounds rounds (the order rotates each round):

  charlm fp32  `charlm.api.open_model(run).pieces(...)`: the code `charlm sample` runs (its
               thread rule, its decoding of each piece), less the writes to stdout
  lean fp32    the loop below, written here as the reference: an embedding row, per layer one
               torch.addmm on cat(input, h) (two for a GRU) with W^T laid out once, chunk,
               the activations, the decoder's addmm, softmax and torch.multinomial; the state
               in Python lists; inference_mode around the whole loop; ids decoded at the end
  charlm int8  the same as charlm fp32 with `quantize="int8"` (`charlm sample --quantize int8`)
  lean int8    the same loop with its products as nn.Linear modules put through
               torch.ao.quantization.quantize_dynamic, and those modules called

It prints tokens/s (median over rounds, and each round), the ratios, the held-out bits/char of
the run in fp32 and int8 (`score_file`, what `charlm evaluate [--quantize int8]` prints), the
CPU (/proc/cpuinfo's model name and its SIMD flags), torch's CPU capability, the quantized
engine, the threads and the load average before and after. Both loops of a model run on the
thread count charlm's rule picks for it (--threads caps it). The machine's load is not
controlled: compare the paths of one round, not figures taken at different times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import charlm
from charlm.api import open_model
from charlm.inference.sample import SampleOptions
from charlm.model.cells import CELLS
from charlm.system.threads import choose_threads, step_macs

DATA = Path(os.environ.get("CHARLM_SHARED_DATA", "/work/shared/data"))
MODELS = {  # name: (config, overrides)
    "lstm-2x512": ("char-rnn", ["model.hidden_size=512", "model.embedding_dim=64"]),
    "quickstart": ("quickstart", []),  # char GRU 2x192, embedding 48
    "gru-2x512": ("quickstart", ["model.hidden_size=512", "model.embedding_dim=64"]),
    "rnn-2x512": ("quickstart", ["model.cell=rnn", "model.hidden_size=512"]),
}
PATHS = ("charlm fp32", "lean fp32", "charlm int8", "lean int8")
SIMD = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16")
SIMD += ("amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "sve")


def cpu_description() -> str:
    """The CPU's model name and the SIMD flags that matter here, from /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown CPU (no /proc/cpuinfo)"
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    name = fields.get("model name") or fields.get("Hardware") or "unknown CPU"
    cores = info.count("processor\t:")
    shown = [flag for flag in SIMD if flag in flags]
    return f"{name}, {cores} logical CPUs; flags: {' '.join(shown) or 'none of ' + ' '.join(SIMD)}"


def read_text() -> str:
    path = DATA / "tinyshakespeare/input.txt"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    from charlm.data.corpora import builtin_corpus_text

    return builtin_corpus_text()


def build_run(name: str, work: Path, text: str, args: argparse.Namespace) -> tuple[Path, Path]:
    """A briefly trained char run for model `name` (reused when --keep holds one) and the
    held-out text it never saw."""
    held = work / "held_out.txt"
    held.write_text(text[-args.held_out :], encoding="utf-8")
    run = work / name
    if (run / "checkpoints").is_dir():
        return run, held
    train_text = work / "train.txt"
    train_text.write_text(text[: -args.held_out], encoding="utf-8")
    config, sets = MODELS[name]
    sets = [*sets, f"train.max_steps={args.steps}", "train.eval_every=100000"]
    sets += ["train.checkpoint_every=100000", "train.sample_every_eval=false"]
    started = time.perf_counter()
    charlm.train(train_text, out=run, config=config, overrides=sets, progress=False)
    print(f"  trained {name}: {args.steps} steps in {time.perf_counter() - started:.0f} s")
    return run, held


class LeanLoop:
    """The reference: the plainest fast PyTorch loop for one char at a time (see the top)."""

    def __init__(self, model: nn.Module, quantize: bool) -> None:
        cfg = model.config
        self.cell, self.hidden = cfg.cell, cfg.hidden_size
        self.embedding = model.embedding.weight.detach().clone()
        linears = nn.ModuleList()  # per layer: [W_ih; W_hh] on cat(x, h), or a GRU's two
        for k in range(cfg.layers):
            w = model.layer_weights(k)
            if cfg.cell == "gru":  # two products: n needs r * (W_hn h + b_hn)
                linears.append(nn.ModuleList([_linear(w.w_ih, w.b_ih), _linear(w.w_hh, w.b_hh)]))
            else:
                linears.append(_linear(torch.cat([w.w_ih, w.w_hh], dim=1), w.b_ih + w.b_hh))
        decoder = _linear(model.decoder.weight, model.decoder.bias)
        if quantize:  # the sceptic's int8: quantize_dynamic, then call the modules it returns
            from torch.ao.quantization import quantize_dynamic

            holder = nn.ModuleDict({"layers": linears, "decoder": decoder})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                holder = quantize_dynamic(holder, {nn.Linear}, dtype=torch.qint8)
            self.layers, self.decoder = holder["layers"], holder["decoder"]
        else:  # fp32: no module call around the product, W^T laid out once
            self.layers = [
                _addmm(m) if cfg.cell != "gru" else [_addmm(p) for p in m] for m in linears
            ]
            self.decoder = _addmm(decoder)

    @torch.inference_mode()
    def generate(self, first: int, length: int, seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        paired = self.cell == "lstm"
        h = [torch.zeros(1, self.hidden) for _ in self.layers]
        c = [torch.zeros(1, self.hidden) for _ in self.layers] if paired else []
        token, out = torch.tensor([first]), []
        for _ in range(length):
            x = self.embedding[token]
            for k, layer in enumerate(self.layers):
                if self.cell == "gru":
                    xr, xz, xn = layer[0](x).chunk(3, 1)
                    hr, hz, hn = layer[1](h[k]).chunk(3, 1)
                    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                    n = torch.tanh(xn + r * hn)
                    h[k] = n + z * (h[k] - n)
                elif paired:
                    i, f, g, o = layer(torch.cat([x, h[k]], 1)).chunk(4, 1)
                    c[k] = torch.sigmoid(f) * c[k] + torch.sigmoid(i) * torch.tanh(g)
                    h[k] = torch.sigmoid(o) * torch.tanh(c[k])
                else:
                    h[k] = torch.tanh(layer(torch.cat([x, h[k]], 1)))
                x = h[k]
            probs = torch.softmax(self.decoder(x), dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)[0]
            out.append(int(token))
        return out


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return linear.eval()


def _addmm(linear: nn.Linear):  # noqa: ANN202
    weight_t, bias = linear.weight.detach().t().contiguous(), linear.bias.detach()
    return lambda x: torch.addmm(bias, x, weight_t)


def time_charlm(lm: charlm.LanguageModel, length: int, seed: int) -> tuple[float, float]:
    """Tokens per second of wall time and of this process's CPU time."""
    options = SampleOptions(prime="T", length=length, seed=seed)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in lm.pieces(options):
        pass
    return length / (time.perf_counter() - wall), length / (time.process_time() - cpu)


def time_lean(
    loop: LeanLoop, lm: charlm.LanguageModel, length: int, seed: int
) -> tuple[float, float]:
    first = lm.encode("T")[-1]
    wall, cpu = time.perf_counter(), time.process_time()
    lm.decode(loop.generate(first, length, seed))
    return length / (time.perf_counter() - wall), length / (time.process_time() - cpu)


def threads_for(lm: charlm.LanguageModel) -> int:
    """The count charlm's rule picks for batch-1 sampling of this model (what the CLI uses)."""
    m = lm.config.model
    macs = step_macs(
        CELLS[m.cell].gates, m.layers, m.hidden_size, m.embedding_dim, lm.vocab_size, 1
    )
    return choose_threads(lm.config.train.threads, macs, torch.get_num_threads())


def open_both(run: Path) -> tuple[charlm.LanguageModel, charlm.LanguageModel | None]:
    """The run in fp32 and in int8; no int8 from a charlm before it had one (PYTHONPATH=an older
    checkout measures that one's fp32 path against the same lean loop)."""
    fp32 = open_model(run, device="cpu")
    try:
        return fp32, open_model(run, device="cpu", quantize="int8")
    except TypeError:
        print("  (this charlm has no quantize: int8 paths left out)")
        return fp32, None


def measure(name: str, run: Path, held: Path, args: argparse.Namespace) -> dict:
    fp32, int8 = open_both(run)
    threads = threads_for(fp32)
    with contextlib.ExitStack() as stack:
        stack.callback(torch.set_num_threads, torch.get_num_threads())
        torch.set_num_threads(threads)
        loops = {False: LeanLoop(fp32.module, False), True: LeanLoop(fp32.module, True)}
        runners = {
            "charlm fp32": lambda seed: time_charlm(fp32, args.length, seed),
            "lean fp32": lambda seed: time_lean(loops[False], fp32, args.length, seed),
            "charlm int8": lambda seed: time_charlm(int8, args.length, seed),  # type: ignore[arg-type]
            "lean int8": lambda seed: time_lean(loops[True], fp32, args.length, seed),
        }
        paths = PATHS if int8 is not None else PATHS[:2]
        for path in paths:  # warm-up, not counted
            runners[path](0)
        rates: dict[str, list[float]] = {path: [] for path in paths}
        cpu_rates: dict[str, list[float]] = {path: [] for path in paths}
        for r in range(args.rounds):
            for path in paths[r % len(paths) :] + paths[: r % len(paths)]:
                wall, cpu = runners[path](r + 1)
                rates[path].append(wall)
                cpu_rates[path].append(cpu)
    scores = {"fp32": fp32.score_file(held)}
    if int8 is not None:
        scores["int8"] = int8.score_file(held)
    m = fp32.config.model
    return {
        "model": name, "cell": m.cell, "layers": m.layers, "hidden": m.hidden_size,
        "threads": threads, "rates": rates, "cpu_rates": cpu_rates,
        "bits_per_char": {k: v.bits_per_char for k, v in scores.items()},
    }  # fmt: skip


def report(result: dict) -> None:
    paths = list(result["rates"])
    print(
        f"{result['model']} ({result['cell']} {result['layers']}x{result['hidden']}), "
        f"{result['threads']} thread(s); median of {len(result['rates'][paths[0]])} rounds:"
    )
    result["median"], result["ratios"] = {}, {}
    for clock, key in (("tokens/s", "rates"), ("tokens per CPU-second", "cpu_rates")):
        med = {path: statistics.median(values) for path, values in result[key].items()}
        result["median"][key] = med
        print(f"  {clock}:")
        for path in paths:
            rounds = " ".join(f"{v:,.0f}" for v in result[key][path])
            print(f"    {path:<12} {med[path]:>8,.0f}   rounds: {rounds}")
        pairs = [("charlm fp32", "lean fp32"), ("charlm int8", "lean int8")]
        pairs += [("charlm int8", "charlm fp32"), ("lean int8", "lean fp32")]
        ratios = {f"{a} / {b}": med[a] / med[b] for a, b in pairs if a in med and b in med}
        print("    " + "   ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
        each = zip(result[key]["charlm fp32"], result[key]["lean fp32"], strict=True)
        print(f"    charlm / lean fp32 per round: {' '.join(f'{c / x:.2f}' for c, x in each)}")
        result["ratios"][key] = ratios
    bpc = result["bits_per_char"]
    line = f"  held-out bits/char: fp32 {bpc['fp32']:.4f}"
    if "int8" in bpc:
        line += f", int8 {bpc['int8']:.4f} ({bpc['int8'] - bpc['fp32']:+.4f})"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lstm-2x512,quickstart", help=", ".join(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--length", type=int, default=2000, help="tokens per timed sample")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument("--held-out", type=int, default=50_000, help="characters kept back")
    parser.add_argument("--threads", type=int, default=0, help="cap on threads (0: all)")
    parser.add_argument("--keep", type=Path, help="folder to keep (and reuse) the runs in")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(cpu_description())
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"quantized engine {torch.backends.quantized.engine}; load average before "
        f"{os.getloadavg()[0]:.2f}"
    )
    text, results = read_text(), []
    with contextlib.ExitStack() as stack:
        import tempfile

        work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            run, held = build_run(name, work, text, args)
            results.append(measure(name, run, held, args))
            report(results[-1])
    print(f"load average after {os.getloadavg()[0]:.2f}")
    if args.json:
        summary = {"cpu": cpu_description(), "torch": torch.__version__, "results": results}
        args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
