"""Scored positions of a task's text: the score rule, the per-character mask file, mask groups.

A *mask file* sits next to a text file with the same stem and the suffix `.mask` (train.txt ->
train.mask): one byte per character of the text (per code point, as the char level counts),

    bit 0      1 = the loss counts this character as a target, 0 = it is input only
    bits 1-7   g = 1..127: the character is a task position of group g (e.g. the recall of a
               lag-20 line, group names in truth.json's "score"), 0 = no task position

so a plain 0/1 file is a loss mask without groups. `charlm prepare` (char level) copies the mask
of each part next to its ids; training and evaluation then average the loss over the targets
whose bit 0 is set, and report the task metrics per group at the positions of that group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from charlm.errors import DataError

CUE = "="  # lag task: the character before the scored key
SCORES = ("all", "task")  # what the loss counts: every character, or the task's positions only
MASK_SUFFIX = ".mask"
LOSS_BIT = 1
MAX_GROUPS = 127
SCORED_TASKS = {"lag": "recall"}  # tasks with a scored position, and what that position is


def default_score(task: str) -> str:
    """`task` for a task with a scored position (lag: the key after the cue), else `all`."""
    return "task" if task in SCORED_TASKS else "all"


def score_mask(text: str, truth: dict[str, Any]) -> np.ndarray:
    """True where text[i] is a scored target of the task `truth` describes (truth.json's dict).

    lag: the character right after each cue '=' (the recalled key); a task without a scored
    position (markov, brackets): every character. Position 0 is never a target, so never True
    for lag. The rule ignores truth's `score` choice: it says where the task is measured, not
    what a run's loss counts.
    """
    task = truth.get("task")
    if task not in SCORED_TASKS:
        return np.ones(len(text), dtype=bool)
    rule = truth.get("score")
    cue = rule.get("cue", CUE) if isinstance(rule, dict) else CUE
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    mask = np.zeros(len(codes), dtype=bool)
    mask[1:] = codes[:-1] == ord(cue)
    return mask


def mask_bytes(scored: np.ndarray, loss: np.ndarray, group: int = 1) -> np.ndarray:
    """A mask file's bytes: `loss` (bool) in bit 0, `group` at the `scored` (bool) positions."""
    if not 0 <= group <= MAX_GROUPS:
        raise DataError(f"mask group {group} must be in 0..{MAX_GROUPS}")
    return (np.asarray(loss, dtype=np.uint8) & LOSS_BIT) | (
        np.asarray(scored, dtype=np.uint8) * np.uint8(group << 1)
    )


def loss_mask(mask: np.ndarray) -> np.ndarray:
    """Bool: the targets the loss counts."""
    return (np.asarray(mask) & LOSS_BIT).astype(bool)


def groups(mask: np.ndarray) -> np.ndarray:
    """uint8: the task-position group of each character (0 = none)."""
    return np.asarray(mask) >> 1


def mask_path(text_path: Path) -> Path:
    """Where the mask of a text file lives: same folder, same stem, suffix `.mask`."""
    return Path(text_path).with_suffix(MASK_SUFFIX)


def write_mask(path: Path, mask: np.ndarray) -> None:
    np.asarray(mask, dtype=np.uint8).tofile(path)


def read_mask(path: Path, chars: int) -> np.ndarray:
    """The mask of a text of `chars` characters, or a DataError naming the file and the fix."""
    path = Path(path)
    try:
        mask = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise DataError(f"{path}: cannot read the mask file ({error.strerror})") from None
    if len(mask) != chars:
        raise DataError(
            f"{path}: {len(mask):,} bytes but its text has {chars:,} characters (one byte per "
            "character); write the text and its mask together (`charlm data synth`) or delete it"
        )
    return mask
