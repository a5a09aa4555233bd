"""Plain RNN vs GRU vs LSTM at equal parameter count on the lag task; writes docs/cells.md + plots.

For each lag L, `charlm.synth` makes a lag task (lines `K x1..xL = K`: remember the key K over
L noise letters) with its exact optimum; each cell is trained on it through `charlm.train.train`
and scored three ways: validation loss minus the exact optimum for charlm's evaluation split,
the recall loss (mean loss on the key after the cue '=': 0 at best, ln(keys) if forgotten), and
the gradient norm |d loss_T / d h_{T-k}| against k of the trained and the initial model.

Defaults take a few minutes on a 2-core CPU:
    python scripts/compare_cells.py
Larger settings (longer training, bigger models; tens of minutes):
    python scripts/compare_cells.py --steps 5000 --hidden 64 --work runs/cells-large
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from charlm.checkpoint import load_checkpoint
from charlm.config import ModelConfig
from charlm.gradients import BURN_IN, measure_model
from charlm.metrics import read_metrics
from charlm.model import GATES, RNNLanguageModel, count_parameters
from charlm.synth import CUE, read_truth, write_task
from charlm.tokenizer import Encoder

CELLS = ("rnn", "gru", "lstm")
ROOT = Path(__file__).resolve().parent.parent


def parameters(cell: str, hidden: int, embedding: int, vocab: int) -> int:
    """The model's trainable parameters (one layer), as `count_parameters` counts them."""
    recurrent = GATES[cell] * (hidden * embedding + hidden * hidden + 2 * hidden)
    return recurrent + vocab * embedding + hidden * vocab + vocab


def matched_hidden(cell: str, target: int, embedding: int, vocab: int) -> int:
    """The hidden size whose parameter count is closest to `target`."""
    return min(range(1, 2048), key=lambda h: abs(parameters(cell, h, embedding, vocab) - target))


def recall_loss(model: RNNLanguageModel, encoder: Encoder, text: str) -> tuple[float, float]:
    """Mean loss and accuracy on the character after each cue, reading `text` as one stream."""
    ids = torch.as_tensor(encoder.encode(text))
    cue = int(encoder.encode(CUE)[0])
    losses, hits = [], []
    state = model.initial_state(1)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ids) - 1, 2000):
            x = ids[start : start + 2000]
            y = ids[start + 1 : start + 2001]
            x = x[: len(y)]
            logits, state = model(x[:, None], state)  # (chunk, 1, vocab)
            logp = torch.log_softmax(logits[:, 0].float(), dim=-1)
            at = (x == cue).nonzero().flatten()
            losses.append(-logp[at, y[at]])
            hits.append(logp[at].argmax(dim=-1) == y[at])
    return float(torch.cat(losses).mean()), float(torch.cat(hits).float().mean())


def run_one(args: argparse.Namespace, task_dir: Path, cell: str, hidden: int, lag: int) -> dict:
    from charlm.train import train

    run_dir = args.work / f"lag{lag}-{cell}"
    seq_len = max(32, 2 * (lag + 4))  # a window holds a whole line, so the gradient can link them
    overrides = [
        f"model.cell={cell}",
        "model.layers=1",
        f"model.hidden_size={hidden}",
        f"model.embedding_dim={args.embedding}",
        # docs/cells.md was measured with charlm 0.1's defaults: keep them until it is rerun.
        "model.init=charlm",
        "model.forget_bias=1.0",
        "optim.name=adam",
        f"optim.lr={args.lr}",
        "optim.clip_norm=5.0",
        f"train.batch_size={args.batch}",
        f"train.seq_len={seq_len}",
        f"train.max_steps={args.steps}",
        f"train.eval_every={max(1, args.steps // 5)}",
        f"train.checkpoint_every={args.steps}",
        "train.keep_checkpoints=1",
        f"train.log_every={max(1, args.steps // 20)}",
        f"train.seed={args.seed}",
        "train.device=cpu",
        "train.threads=1",
    ]
    started = time.perf_counter()
    result = train(
        run_dir,
        text=task_dir / "train.txt",
        val_file=task_dir / "valid.txt",
        overrides=overrides,
        force=True,
        show_progress=False,
    )
    seconds = time.perf_counter() - started
    truth = read_truth(task_dir)
    loaded = load_checkpoint(run_dir, "best")
    model = loaded.build_model("cpu")
    from tokenizers import Tokenizer

    encoder = Encoder(Tokenizer.from_str(loaded.tokenizer_json), "char")
    valid = (task_dir / "valid.txt").read_text(encoding="utf-8")
    recall, accuracy = recall_loss(model, encoder, valid)
    ids = encoder.encode(valid)
    # The loss at the recall step (the key after the cue) is the one that needs the far past.
    recalls = np.flatnonzero(ids[:-1] == int(encoder.encode(CUE)[0])) + 1
    trained = measure_model(model, ids, max_lag=args.max_lag, batch=32, targets=recalls)
    val = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "val"]
    optimum = truth["valid_optimal_loss"][str(args.batch)]
    return {
        "lag": lag,
        "cell": cell,
        "hidden": hidden,
        "parameters": count_parameters(model),
        "best_val_loss": result.best_val_loss,
        "optimum": optimum,
        "excess": result.best_val_loss - optimum,
        "no_recall_excess": truth["no_recall_excess"],
        "recall_loss": recall,
        "recall_accuracy": accuracy,
        "recall_chance_loss": truth["recall_chance_loss"],
        "seconds": seconds,
        "val_curve": [(r["step"], r["val_loss"]) for r in val],
        "gradients": trained.as_dict(),
    }


def initial_profiles(args: argparse.Namespace, task_dir: Path, hidden: dict) -> list[dict]:
    """Gradient profiles of the untrained models (seeded as training seeds them)."""
    from charlm.tokenizer import build_tokenizer

    text = (task_dir / "valid.txt").read_text(encoding="utf-8")
    tokenizer = build_tokenizer("char", [(task_dir / "train.txt").read_text(encoding="utf-8")], 0)
    ids = Encoder(tokenizer, "char").encode(text)
    out = []
    for cell in CELLS:
        torch.manual_seed(args.seed)
        config = ModelConfig(
            cell=cell,
            layers=1,
            hidden_size=hidden[cell],
            embedding_dim=args.embedding,
            init="charlm",
            forget_bias=1.0,
        )
        model = RNNLanguageModel(config, tokenizer.get_vocab_size())
        profile = measure_model(model, ids, max_lag=args.max_lag, batch=32, source=cell)
        out.append(profile.as_dict())
    return out


def plot_losses(rows: list[dict], lags: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_recall, ax_excess) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, cell in enumerate(CELLS):
        mine = [r for r in rows if r["cell"] == cell]
        ax_recall.plot(lags, [r["recall_loss"] for r in mine], "o-", color=f"C{i}", label=cell)
        ax_excess.plot(lags, [r["excess"] for r in mine], "o-", color=f"C{i}", label=cell)
    chance = rows[0]["recall_chance_loss"]
    ax_recall.axhline(
        chance, color="grey", ls="--", lw=1, label=f"forgot the key (ln {round(math.exp(chance))})"
    )
    ax_excess.plot(
        lags,
        [r["no_recall_excess"] for r in rows if r["cell"] == CELLS[0]],
        "--",
        color="grey",
        lw=1,
        label="forgot the key, else optimal",
    )
    ax_recall.set(
        xscale="log",
        xlabel="lag L",
        ylabel="nats",
        title="recall loss (key after '='; 0 = perfect)",
    )
    ax_excess.set(
        xscale="log",
        yscale="log",
        xlabel="lag L",
        ylabel="nats/char",
        title="validation loss minus exact optimum",
    )
    for ax in (ax_recall, ax_excess):
        ax.set_xticks(lags, [str(lag) for lag in lags])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def plot_gradients(rows: list[dict], initial: list[dict], lags: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("initialised", {p["cell"]: p for p in initial})]
    panels += [
        (
            f"trained, L={lag}: loss at the recall",
            {r["cell"]: r["gradients"] for r in rows if r["lag"] == lag},
        )
        for lag in lags
    ]
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(panels) / cols), cols, figsize=(12, 6.4), squeeze=False)
    for ax, (title, profiles) in zip(axes.flat, panels, strict=False):
        for i, cell in enumerate(CELLS):
            p = profiles[cell]
            ax.plot(p["lags"], p["grad_norm"][0], color=f"C{i}", label=cell)
        if title.startswith("trained"):
            lag = int(title.split("L=")[1].split(":")[0])
            ax.axvline(lag + 1, color="grey", ls=":", lw=1)  # where the key was read
        ax.set(yscale="log", title=title, xlabel="lag k")
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(panels) :]:
        ax.remove()
    axes[0][0].set_ylabel("|d loss_T / d h_{T-k}|")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    plt.close(fig)


def at(profile: dict, k: int) -> float:
    return profile["grad_norm"][0][min(k, len(profile["lags"])) - 1]


def write_doc(
    args: argparse.Namespace, rows: list[dict], initial: list[dict], info: dict, out: Path
) -> None:
    ln_keys = rows[0]["recall_chance_loss"]
    table = [
        "| L | cell | hidden | params | best val loss | optimum | excess | forgot-key excess | recall loss | recall acc. | grad norm at k=L+1 (trained) | seconds |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        k = min(r["lag"] + 1, args.max_lag)
        table.append(
            f"| {r['lag']} | {r['cell']} | {r['hidden']} | {r['parameters']:,} | {r['best_val_loss']:.4f} "
            f"| {r['optimum']:.4f} | {r['excess']:.4f} | {r['no_recall_excess']:.4f} | {r['recall_loss']:.3f} "
            f"| {r['recall_accuracy']:.2f} | {at(r['gradients'], k):.2e} | {r['seconds']:.0f} |"
        )
    grads = [
        "| cell | "
        + " | ".join(f"k={k}" for k in (1, 5, 10, 20, 50, 100) if k <= args.max_lag)
        + " |"
    ]
    grads.append("|---|" + "---:|" * (len(grads[0].split("|")) - 3))
    for p in initial:
        grads.append(
            f"| {p['cell']} (initial) | "
            + " | ".join(f"{at(p, k):.1e}" for k in (1, 5, 10, 20, 50, 100) if k <= args.max_lag)
            + " |"
        )
    # What came out, read from the numbers rather than written in advance.
    summary = []
    for cell in CELLS:
        held = [r["lag"] for r in rows if r["cell"] == cell and r["recall_loss"] < 0.5 * ln_keys]
        longest = max(held) if held else None
        summary.append(
            f"- **{cell}**: recall loss below half of chance (< {0.5 * ln_keys:.2f} nats) "
            + (f"up to L = {longest}" if longest else "at no lag tried")
            + f" (held at L = {', '.join(map(str, held)) or 'none'})."
        )
    text = f"""# Why gates work: RNN vs GRU vs LSTM on the lag task

Generated by `scripts/compare_cells.py`; every number below is what that command printed.

- command: `{info["command"]}`
- date: {info["date"]}; machine: {info["machine"]}; torch {info["torch"]}; total {info["minutes"]:.1f} minutes

## The task and its optimum

`charlm data synth lag --lag L` writes lines `K x1 .. xL = K`: a key `K` (one of {args.keys}
capitals), L noise letters (one of 8), a cue `=`, and the key again. The best achievable loss is
exact (`charlm/synth.py`): per line, only the key and the noise are unpredictable, so the entropy
rate is (ln {args.keys} + L ln 8) / (L + 4) nats per character, newlines counted. The "optimum"
column is sharper still: the loss of the Bayes-optimal predictor on the same validation text cut
into the same {args.batch} streams that charlm's evaluation uses (`truth.json`,
`valid_optimal_loss`), so *excess* = best validation loss - optimum is a like-for-like gap. A
model that is perfect except that it forgets the key has excess ln {args.keys} / (L + 4)
("forgot-key excess"). The recall loss isolates memory from counting: the mean loss on the key
after the cue, 0 for perfect recall and ln {args.keys} = {ln_keys:.3f} for none.

## Set-up

One layer, embedding {args.embedding}, hidden sizes chosen so that every cell has about as many
parameters as the LSTM with hidden {args.hidden}; Adam lr {args.lr}, gradient norm clipped at 5,
batch {args.batch}, {args.steps} steps, BPTT window max(32, 2(L+4)) so a window holds whole
lines; {args.length:,} training and {args.valid_length:,} validation characters per lag; seed
{args.seed}; the best checkpoint by validation loss is scored. Gradient curves: mean over 32
windows of |d loss_T / d h_(T-k)| (`charlm gradients`, after {BURN_IN} steps of burn-in); for the
trained models the windows end at a recall step, so loss_T is the loss on the repeated key and
k = L + 1 is the step that read the key (the table's grad norm column; the dotted line in the plot).
The initial models are measured at random positions. "seconds" is the wall-clock time of each
training run; on a shared machine it includes waiting for the CPU.

## Results

{chr(10).join(table)}

What came out:
{chr(10).join(summary)}

![recall loss and excess over the optimum](cells_loss.png)

Gradient norm against lag at initialisation:

{chr(10).join(grads)}

![gradient norm against lag](cells_gradients.png)

## Reading it

A plain tanh RNN's gradient to a state k steps back is a product of k Jacobians
diag(1 - h^2) W, so it shrinks (or grows) geometrically with k; the LSTM's cell state is updated
additively (c_t = f * c_(t-1) + i * g), so with the forget gate near 1 the gradient along it is
close to a product of forget-gate values, not of squashed weight matrices; the GRU interpolates
(h_t = (1 - z) n + z h_(t-1)), the same additive path through its update gate. The recall
columns measure whether that difference in gradient flow becomes a difference in what is
learnt at each lag with this budget. The numbers come from one seed and a small budget: treat
small differences as noise and rerun with `--seed` to check.

**Forget-gate bias.** charlm initialises the LSTM forget-gate bias to `model.forget_bias` = 1.0
(one bias in total: PyTorch adds b_ih and b_hh, so b_ih holds it and b_hh is zero there). Gers,
Schmidhuber and Cummins (2000, "Learning to Forget: Continual Prediction with LSTM", Neural
Computation 12(10):2451-2471) introduced the forget gate, which multiplies the cell state each
step: a gate near 0 at the start erases the memory before anything is learnt, which is the
argument for starting it open with a positive bias. Jozefowicz, Zaremba and Sutskever (2015, "An Empirical Exploration of
Recurrent Network Architectures", ICML) report that "adding a bias of 1 to the LSTM's forget gate
closes the gap between the LSTM and the GRU" in their search over ten thousand architectures;
that is where the value 1.0 comes from (PyTorch itself initialises all LSTM biases at random).
Other options the write-ups discuss: `model.recurrent_init=identity` (IRNN, Le, Jaitly
and Hinton 2015) or `orthogonal`, `model.leak` (leaky plain-RNN units), `optim.clip_norm` and
`optim.clip_value`.

## Reproduce

```
{info["command"]}
# larger settings (not run for this page; expect several times the time above):
python scripts/compare_cells.py --steps 5000 --hidden 64 --work runs/cells-large
```
"""
    out.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lags", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument("--steps", type=int, default=1500, help="training steps per run")
    parser.add_argument(
        "--hidden", type=int, default=32, help="LSTM hidden size; others match its parameters"
    )
    parser.add_argument("--embedding", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32, choices=[1, 8, 16, 32, 64])
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--length", type=int, default=200_000, help="training characters per lag")
    parser.add_argument("--valid-length", type=int, default=20_000)
    parser.add_argument("--max-lag", type=int, default=110, help="gradient curves: lags 1..K")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("runs/cells"), help="runs and task data")
    parser.add_argument(
        "--docs", type=Path, default=ROOT / "docs", help="where cells.md and PNGs go"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows: list[dict] = []
    initial: list[dict] = []
    for lag in args.lags:
        task_dir = args.work / f"lag{lag}-data"
        write_task(
            task_dir,
            "lag",
            lag=lag,
            keys=args.keys,
            length=args.length,
            valid_length=args.valid_length,
            seed=args.seed,
            score="all",  # every character scored, as this comparison was measured
        )
        vocab = 1 + len(read_truth(task_dir)["alphabet"])  # + charlm's unknown-character token
        target = parameters("lstm", args.hidden, args.embedding, vocab)
        hidden = {cell: matched_hidden(cell, target, args.embedding, vocab) for cell in CELLS}
        if not initial:
            initial = initial_profiles(args, task_dir, hidden)
        for cell in CELLS:
            row = run_one(args, task_dir, cell, hidden[cell], lag)
            rows.append(row)
            print(
                f"L={lag:3d} {cell:4s} h={row['hidden']:3d} params={row['parameters']:,} "
                f"val={row['best_val_loss']:.4f} optimum={row['optimum']:.4f} excess={row['excess']:.4f} "
                f"recall={row['recall_loss']:.3f} acc={row['recall_accuracy']:.2f} {row['seconds']:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    info = {
        "command": "python " + shlex.join(sys.argv),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, no GPU used",
        "torch": torch.__version__,
        "minutes": (time.perf_counter() - started) / 60,
    }
    args.docs.mkdir(parents=True, exist_ok=True)
    plot_losses(rows, args.lags, args.docs / "cells_loss.png")
    plot_gradients(rows, initial, args.lags, args.docs / "cells_gradients.png")
    write_doc(args, rows, initial, info, args.docs / "cells.md")
    (args.work / "results.json").write_text(
        json.dumps({"info": info, "rows": rows, "initial": initial}) + "\n"
    )
    print(
        json.dumps(
            [{k: v for k, v in r.items() if k not in ("gradients", "val_curve")} for r in rows]
        )
    )


if __name__ == "__main__":
    main()
