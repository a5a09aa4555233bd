"""Score a nanoGPT character checkpoint on a whole text, as `charlm evaluate --text` scores charlm's.

The nanoGPT side of docs/results.md, "Side by side with nanoGPT": its `train.py` writes
`out-shakespeare-char/ckpt.pt`; this loads that checkpoint with the checkout's own `model.py`
(pass its folder, ``--nanogpt-dir``; nothing of its code is copied here) and prints the mean loss
in nats per character over every character of ``--text`` after the first. A transformer sees at
most its block: with ``--stride S`` each window of ``block_size`` characters scores only its last
S (the first window scores all), so every character is predicted from at least block_size - S
characters before it (or all of them, near the start); ``--stride`` equal to the block scores
disjoint blocks, as nanoGPT's own estimate does (contexts of 0 to block_size - 1).

    python scripts/nanogpt_score.py --nanogpt-dir ~/src/nanoGPT \
        --checkpoint ~/src/nanoGPT/out-shakespeare-char/ckpt.pt \
        --train input.txt --text last10.txt --stride 16
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def load(nanogpt_dir: Path, checkpoint: Path) -> torch.nn.Module:
    sys.path.insert(0, str(nanogpt_dir))
    from model import GPT, GPTConfig  # the checkout's model.py

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**saved["model_args"]))
    state = {k.removeprefix("_orig_mod."): v for k, v in saved["model"].items()}
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def score(model: torch.nn.Module, ids: torch.Tensor, block: int, stride: int) -> tuple[float, int]:
    """Total loss over ids[1:], each target predicted once, and the number of targets."""
    total, count, done = 0.0, 0, 0  # done: targets scored so far are ids[1 : done + 1]
    start = 0
    while done < len(ids) - 1:
        end = min(start + block, len(ids) - 1)
        x, y = ids[start:end], ids[start + 1 : end + 1]
        logits, _ = model(x[None], y[None])
        first = done - start  # targets before this index were scored by an earlier window
        losses = F.cross_entropy(logits[0], y, reduction="none")[first:]
        total += losses.sum().item()
        count += len(losses)
        done = end
        start = max(0, min(start + stride, len(ids) - 1 - block))
        if end == len(ids) - 1:
            break
    return total, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument(
        "--train", type=Path, required=True, help="the text its vocabulary came from"
    )
    parser.add_argument("--text", type=Path, required=True)
    parser.add_argument("--stride", type=int, default=0, help="0: the block (disjoint blocks)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load(args.nanogpt_dir, args.checkpoint)
    chars = sorted(set(args.train.read_text()))  # its prepare.py's vocabulary
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in args.text.read_text()])
    block = model.config.block_size
    total, count = score(model, ids, block, args.stride or block)
    loss = total / count
    print(
        json.dumps(
            {
                "loss": round(loss, 4),
                "bits_per_char": round(loss / math.log(2), 4),
                "targets": count,
                "block_size": block,
                "stride": args.stride or block,
            }
        )
    )


if __name__ == "__main__":
    main()
