"""The plain PyTorch loop a sceptic would write: the yardstick charlm's defaults must beat.

Embedding -> nn.GRU/LSTM/RNN -> Linear, PyTorch's default initialisation, truncated BPTT over
a token stream cut into `batch` parallel columns, the hidden state carried and detached between
windows, gradient-norm clipping, the optimiser step. No charlm code is imported, so nothing
charlm does (threads, init, batching) leaks into the comparison.

    python scripts/plain_loop.py ids.npy --steps 300   # tokens/s and the last training loss

`train()` is what scripts/vs_plain_loop.py and scripts/threads_matrix.py call.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}


class Net(nn.Module):
    """`init="examples"` is pytorch/examples' word_language_model's init_weights: embedding and
    decoder U(+-0.1), zero decoder bias; `"pytorch"` keeps every module's own default."""

    def __init__(
        self, vocab: int, cell: str, layers: int, hidden: int, embedding: int, init: str
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)
        self.rnn = CELLS[cell](embedding, hidden, layers)
        self.out = nn.Linear(hidden, vocab)
        if init == "examples":
            nn.init.uniform_(self.embed.weight, -0.1, 0.1)
            nn.init.uniform_(self.out.weight, -0.1, 0.1)
            nn.init.zeros_(self.out.bias)

    def forward(self, x, state):  # noqa: ANN001, ANN201
        y, state = self.rnn(self.embed(x), state)
        return self.out(y), state


def make_optimizer(net: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(net.parameters(), lr=lr)
    if name == "adam":
        return torch.optim.Adam(net.parameters(), lr=lr)
    if name == "rmsprop-charrnn":  # karpathy/char-rnn's RMSProp: decay 0.95
        return torch.optim.RMSprop(net.parameters(), lr=lr, alpha=0.95, eps=1e-8)
    return torch.optim.RMSprop(net.parameters(), lr=lr, alpha=0.9, eps=1e-6)


def columns(ids: np.ndarray, batch: int) -> torch.Tensor:
    """(len, batch) time-major columns, as pytorch/examples' batchify."""
    n = len(ids) // batch
    return torch.from_numpy(np.asarray(ids[: n * batch], dtype=np.int64)).view(batch, n).t()


def evaluate(net: Net, ids: np.ndarray, batch: int, seq: int, windows: int = 0) -> float:
    """Mean loss over `ids` cut into `batch` columns, state carried (the first `windows`)."""
    data, state, total, count = columns(ids, batch), None, 0.0, 0
    net.eval()
    stop = len(data) - 1 if not windows else min(len(data) - 1, windows * seq)
    with torch.no_grad():
        for i in range(0, stop, seq):
            y = data[i + 1 : i + 1 + seq]
            x = data[i : i + len(y)]
            logits, state = net(x, state)
            total += nn.functional.cross_entropy(
                logits.view(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
            ).item()
            count += y.numel()
    net.train()
    return total / count


def train(
    train_ids: np.ndarray,
    vocab: int,
    *,
    cell: str = "gru",
    layers: int = 2,
    hidden: int = 128,
    embedding: int = 32,
    batch: int = 32,
    seq: int = 64,
    steps: int = 300,
    optimizer: str = "rmsprop",
    lr: float = 1e-3,
    clip: float = 5.0,
    clip_value: bool = False,
    seed: int = 1,
    warmup: int = 10,
    init: str = "pytorch",
    val_ids: np.ndarray | None = None,
    eval_at: tuple[int, ...] = (),
    eval_windows: int = 0,
) -> dict:
    """Train `steps` windows; tokens/s counts the steps after `warmup`. With `val_ids`, the
    validation loss after each step count in `eval_at` is in "curve" (step -> loss)."""
    torch.manual_seed(seed)
    net = Net(vocab, cell, layers, hidden, embedding, init)
    opt = make_optimizer(net, optimizer, lr)
    data, state, i, loss = columns(train_ids, batch), None, 0, torch.tensor(0.0)
    curve: dict[int, float] = {}
    start = time.perf_counter()
    for step in range(steps):
        if step in eval_at and val_ids is not None:
            curve[step] = evaluate(net, val_ids, batch, seq, eval_windows)
        if step == warmup:
            start = time.perf_counter()
        if i + seq + 1 > len(data):
            i, state = 0, None
        x, y = data[i : i + seq], data[i + 1 : i + 1 + seq]
        i += seq
        if state is not None:  # truncated BPTT: keep the values, cut the graph
            state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        logits, state = net(x, state)
        loss = nn.functional.cross_entropy(logits.view(-1, vocab), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        if clip_value:  # char-rnn clamps each element
            nn.utils.clip_grad_value_(net.parameters(), clip)
        else:
            nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
    seconds = time.perf_counter() - start
    timed = max(1, steps - warmup)
    if steps in eval_at and val_ids is not None:
        curve[steps] = evaluate(net, val_ids, batch, seq, eval_windows)
    rate = timed * batch * seq / seconds
    return {"tokens_per_s": rate, "loss": loss.item(), "net": net, "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids", help="a .npy file of token ids")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ids = np.load(args.ids)
    out = train(ids, int(ids.max()) + 1, steps=args.steps)
    print(f"{out['tokens_per_s']:,.0f} tokens/s, last loss {out['loss']:.4f}")


if __name__ == "__main__":
    main()
