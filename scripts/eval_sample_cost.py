"""What the sample at each evaluation (train.sample_every_eval) costs: the time to draw
train.sample_length=200 characters from an untrained char GRU, one thread, as training draws it.

    python scripts/eval_sample_cost.py [TEXT]   (default: tiny Shakespeare in ../shared/data)

Prints the fastest and the median of 5 draws per model size, and the machine's load average
before and after (the figures are only comparable on an idle machine).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

from charlm.config import ModelConfig
from charlm.data.tokenizer import build_tokenizer
from charlm.model.network import RNNLanguageModel
from charlm.training.sample_at_eval import draw_sample

DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TEXT
    tokenizer = build_tokenizer("char", [path.read_text(encoding="utf-8")], 0)
    torch.set_num_threads(1)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for layers, hidden in ((2, 128), (2, 512)):
        model = RNNLanguageModel(
            ModelConfig(layers=layers, hidden_size=hidden), len(tokenizer.get_vocab())
        )
        times = []
        for step in range(6):  # the first draw warms up and is not counted
            start = time.perf_counter()
            draw_sample(
                model, tokenizer, "char", step=step, length=200, temperature=1.0, train_seed=1
            )
            times.append(time.perf_counter() - start)
        times = times[1:]
        print(
            f"gru {layers}x{hidden}: 200 characters in {min(times) * 1000:.0f} ms "
            f"(fastest of 5; median {statistics.median(times) * 1000:.0f} ms)"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
