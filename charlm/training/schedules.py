"""The learning-rate and BPTT-length schedules, as functions of the step (and of the time
budget's fraction used, training/budget.py)."""

from __future__ import annotations

import math

import numpy as np

from charlm.config import OptimConfig


def learning_rate(
    optim: OptimConfig,
    step: int,
    total_steps: int,
    epoch: int = 0,
    plateau_scale: float = 1.0,
    time_fraction: float = 0.0,
) -> float:
    """The rate for optimiser step `step` (0-based) after `epoch` completed epochs.

    A pure function of its arguments, so resume needs no state beyond the cursor and, for
    schedule=plateau, the scale that past plateaus left (`plateau_scale`, saved in checkpoints).
    Cosine runs over the steps after the warm-up (`total_steps`, 0: no step limit) or, with a
    time budget, over `time_fraction` of train.max_time used (training/budget.py), whichever is
    further along. The warm-up counts steps; with a time budget cosine scales it too, so that a
    budget that ends within the warm-up (a slow machine) still ends the rate at lr/10.
    """
    if optim.warmup_steps and step < optim.warmup_steps:
        ramp = optim.lr * (step + 1) / optim.warmup_steps
        return (
            _cosine(ramp, time_fraction) if optim.schedule == "cosine" and time_fraction else ramp
        )
    if optim.schedule == "decay":  # char-rnn: decay at the end of each epoch >= decay_after
        decays = max(0, epoch - max(1, math.ceil(optim.decay_after_epochs)) + 1)
        return optim.lr * optim.decay_rate**decays
    if optim.schedule == "plateau":
        return optim.lr * plateau_scale
    if optim.schedule == "cosine":
        span = max(1, total_steps - optim.warmup_steps)
        steps = (step - optim.warmup_steps) / span if total_steps else 0.0
        return _cosine(optim.lr, max(steps, time_fraction))
    return optim.lr


def _cosine(lr: float, progress: float) -> float:
    """From `lr` at progress 0 to lr/10 at 1 (and after), not to zero, as nanoGPT does."""
    floor = lr * 0.1
    return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def bptt_length(seq_len: int, seed: int, step: int) -> int:
    """AWD-LSTM's variable window: seq_len (p=0.95) or seq_len/2, then a normal draw around it
    (sd 5, at least 5 tokens), so windows start at ever-different offsets across epochs.

    Drawn from a generator seeded by (seed, step): every process draws the same length, and a
    resumed run draws what the uninterrupted one would have, without saving any state.
    """
    rng = np.random.default_rng([seed, step])
    base = seq_len if rng.random() < 0.95 else seq_len / 2
    return max(5, int(rng.normal(base, 5)))


def variable_bptt_steps(stream_len: int, seq_len: int, seed: int, epochs: float) -> int:
    """How many variable-length windows (`bptt_length`) it takes to cover `epochs` epochs of
    streams `stream_len` long: the steps of a run bounded by train.epochs."""
    step, epoch, position = 0, 0, 0
    while epoch + position / stream_len < epochs:
        end = min(position + bptt_length(seq_len, seed, step), stream_len)
        epoch, position = (epoch + 1, 0) if end >= stream_len else (epoch, end)
        step += 1
    return step
