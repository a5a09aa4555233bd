"""Run pytorch/examples word_language_model's own main.py for a fixed number of training tokens.

The reference side of the word-level comparison in docs/results.md: its recipe (SGD lr 20, clip
0.25, its init and dropout) on its own code, stopped after exactly ``--batches`` batches by cutting
the training split, so that its one epoch is that many batches; then its own validation line.
Nothing of its code is copied here: pass the folder of a checkout (``--wlm-dir``).

    python scripts/wlm_reference.py --wlm-dir ~/src/examples/word_language_model \
        --data ../shared/data/wikitext-2 --batches 800 --seed 1111
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wlm-dir", type=Path, required=True, help="word_language_model folder")
    parser.add_argument("--data", type=Path, required=True, help="train/valid/test.txt folder")
    parser.add_argument("--batches", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--bptt", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1111)
    args, extra = parser.parse_known_args()
    sys.path.insert(0, str(args.wlm_dir))
    import data  # the checkout's data.py

    keep = args.batch_size * (args.batches * args.bptt + 1)
    original = data.Corpus.__init__

    def cut(self, path):  # its Corpus, then the training ids cut to `keep`
        original(self, path)
        print(f"reference: training tokens cut {len(self.train):,} -> {keep:,}", flush=True)
        self.train = self.train[:keep]

    data.Corpus.__init__ = cut
    sys.argv = [
        "main.py",
        *("--data", str(args.data), "--epochs", "1", "--seed", str(args.seed)),
        *("--batch_size", str(args.batch_size), "--bptt", str(args.bptt)),
        *("--save", "/tmp/wlm_reference_model.pt", *extra),
    ]
    runpy.run_path(str(args.wlm_dir / "main.py"), run_name="__main__")


if __name__ == "__main__":
    main()
