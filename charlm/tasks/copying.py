"""The copy task: lines `S1..SM x1..xL = S1..SM`, a random string copied after a delay, with its truth.

The lag task with a string for a key: M symbols (each one of `keys` capitals, uniform and
independent), L noise letters (one of `alphabet` lowercase letters each), the cue `=`, the same
M symbols again, a newline. The copy is scored at the M positions after the cue (masks.py); a
char model reads each copied symbol once it has predicted it, as it reads every character, so
the first copied symbol needs a memory of L + M steps and the last of L + 1 + M. A model that
remembers nothing of the string pays ln(keys) nats on every copied symbol (the symbols are
independent, so the copied ones before it say nothing): that is the memoryless baseline, the
copy task's `recall_chance_loss` (Arjovsky, Shah and Bengio 2016 give it per output position
of their layout as 10 ln 8 / (T + 20): 10 symbols of 8, copied after T blanks, over the
T + 20 outputs). The best loss is 0 at the copies; per character of a line it is the entropy
of the string and the noise over the line's length.

The string's states are too many for the automaton of synth.py (keys^M), so the task is sampled
and its truth computed directly; a copy task's texts are whole lines from a line start.
"""

from __future__ import annotations

import math
import string
from typing import Any

import numpy as np

from charlm.errors import UsageError
from charlm.tasks.masks import CUE

MAX_COPY = 100  # symbols per line


def copy_settings(lag: int, keys: int, alphabet: int, copy_length: int) -> dict[str, Any]:
    """The checked settings of a copy task (alphabet 0: 8 noise letters), or a UsageError."""
    alphabet = alphabet or 8
    for name, value, low, high in (
        ("lag", lag, 1, None),
        ("keys", keys, 1, 26),
        ("alphabet", alphabet, 1, 26),
        ("copy-length", copy_length, 1, MAX_COPY),
    ):
        if value < low or (high is not None and value > high):
            bound = f"in [{low}, {high}]" if high is not None else f"at least {low}"
            raise UsageError(f"--{name} must be {bound} (got {value})")
    return {"lag": lag, "keys": keys, "alphabet": alphabet, "copy_length": copy_length}


def line_length(settings: dict[str, Any]) -> int:
    """Characters per line, the newline included: M + L + 1 + M + 1."""
    return 2 * settings["copy_length"] + settings["lag"] + 2


def copy_lines(settings: dict[str, Any], chars: int, rng: np.random.Generator) -> str:
    """About `chars` characters of whole copy lines (at least one)."""
    m, lag = settings["copy_length"], settings["lag"]
    lines = max(1, chars // line_length(settings))
    keys = np.frombuffer(string.ascii_uppercase[: settings["keys"]].encode(), np.uint8)
    noise = np.frombuffer(string.ascii_lowercase[: settings["alphabet"]].encode(), np.uint8)
    symbols = keys[rng.integers(0, len(keys), size=(lines, m))]
    delay = noise[rng.integers(0, len(noise), size=(lines, lag))]
    cue = np.full((lines, 1), ord(CUE), np.uint8)
    end = np.full((lines, 1), ord("\n"), np.uint8)
    return np.hstack([symbols, delay, cue, symbols, end]).tobytes().decode("ascii")


def copy_rate(settings: dict[str, Any]) -> float:
    """Nats per character of the best predictor (the string and the noise are all there is to
    predict; the cue, the copy and the newline are certain for a model that remembers)."""
    information = settings["copy_length"] * math.log(settings["keys"])
    information += settings["lag"] * math.log(settings["alphabet"])
    return information / line_length(settings)


def copy_truth(settings: dict[str, Any], seed: int, valid_chars: int) -> dict[str, Any]:
    """truth.json's fields of a single-lag copy task."""
    rate = copy_rate(settings)
    m, keys = settings["copy_length"], settings["keys"]
    return {
        "task": "copy",
        "settings": settings,
        "seed": seed,
        "alphabet": alphabet_of(settings),
        "best_loss": rate,
        "best_bits_per_char": rate / math.log(2),
        "best_loss_note": (
            "nats per character (every character counted, newlines included) of the best "
            "predictor: the string's and the noise's entropy over the line's length"
        ),
        "valid_chars": valid_chars,
        "recall_chance_loss": math.log(keys),
        "no_recall_excess": m * math.log(keys) / line_length(settings),
        "copy_note": (
            "recall_chance_loss: the memoryless baseline, ln(keys) nats on each copied symbol "
            "(0 for a perfect copy); no_recall_excess: what forgetting the string adds per "
            "character of a line, the baseline of a run scored on every character"
        ),
    }


def alphabet_of(settings: dict[str, Any]) -> str:
    """The characters a copy task writes: newline, cue, the key capitals, the noise letters."""
    keys = string.ascii_uppercase[: settings["keys"]]
    return "\n" + CUE + keys + string.ascii_lowercase[: settings["alphabet"]]
