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

from charlm.errors import DataError, UsageError
from charlm.system.files import atomic_write_bytes

CUE = "="  # lag task: the character before the scored key
SCORES = ("all", "task")  # what the loss counts: every character, or the task's positions only
MASK_SUFFIX = ".mask"
LOSS_BIT = 1
MAX_GROUPS = 127
# Tasks with scored positions, and what those positions are.
SCORED_TASKS = {"lag": "recall", "copy": "copy"}


def default_score(task: str) -> str:
    """`task` for a task with a scored position (lag: the key after the cue), else `all`."""
    return "task" if task in SCORED_TASKS else "all"


def score_mask(text: str, truth: dict[str, Any]) -> np.ndarray:
    """True where text[i] is a scored target of the task `truth` describes (truth.json's dict).

    lag: the character right after each cue '=' (the recalled key); copy: the
    `settings.copy_length` characters after each cue (the copied string); a task without a
    scored position (markov, brackets): every character. Position 0 is never a target, so never
    True for lag or copy. The rule ignores truth's `score` choice: it says where the task is
    measured, not what a run's loss counts.
    """
    task = truth.get("task")
    if task not in SCORED_TASKS:
        return np.ones(len(text), dtype=bool)
    rule = truth.get("score")
    cue = rule.get("cue", CUE) if isinstance(rule, dict) else CUE
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    after = int(truth.get("settings", {}).get("copy_length", 1)) if task == "copy" else 1
    mask = np.zeros(len(codes), dtype=bool)
    cues = np.flatnonzero(codes == ord(cue))
    for offset in range(1, after + 1):
        where = cues + offset
        mask[where[where < len(codes)]] = True
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
    """One uint8 per character, written whole or not at all."""
    atomic_write_bytes(path, np.asarray(mask, dtype=np.uint8).tobytes())


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


# -- what a prepared folder's masks provide (meta.json "task") ------------------------------------

METRICS = {"val_loss": "min", "recall_loss": "min", "recall_accuracy": "max"}  # name: direction
TASK_METRICS = ("recall_loss", "recall_accuracy")  # measured per group, at its task positions


def mask_info(truth: dict[str, Any] | None, mask: np.ndarray) -> dict[str, Any]:
    """meta.json's "task": the groups present (id -> name), the curriculum, the target group.

    Names, curriculum and held-out groups come from truth.json's "score" block when the mask was
    written by `charlm data synth`; a hand-made mask gets groups "group1", "group2", ..."""
    rule = truth.get("score") if truth else None
    rule = rule if isinstance(rule, dict) else {}
    present = sorted(int(g) for g in np.unique(groups(mask)) if g)
    names = {str(g): rule.get("groups", {}).get(str(g), f"group{g}") for g in present}
    curriculum = [name for name in rule.get("curriculum", []) if name in names.values()]
    heldout = [name for name in rule.get("heldout", []) if name in names.values()]
    trained = [name for name in names.values() if name not in heldout]
    target = curriculum[-1] if curriculum else (trained[-1] if trained else None)
    return {
        "mask": True,
        "score": rule.get("mode", "mask"),
        "groups": names,
        "curriculum": curriculum,
        "heldout": heldout,
        "target": target,
    }


def provided_metrics(info: dict[str, Any] | None) -> list[str]:
    """The metric names a run on data with this "task" info can report."""
    return ["val_loss", *(TASK_METRICS if info and info.get("target") else ())]


def check_task_settings(
    best_by: str, curriculum_metric: str, info: dict[str, Any] | None, source: str
) -> None:
    """Refuse (one line, before anything is written) a metric the data cannot provide."""
    metrics = provided_metrics(info)
    if best_by not in metrics:
        raise UsageError(
            f"train.best_by={best_by}: {source} has no task positions (no mask with groups; "
            f"make it with `charlm data synth lag`), so it provides only {', '.join(metrics)}"
        )
    if curriculum_metric == "off":
        return
    if not (info and info.get("curriculum")):
        raise UsageError(
            f"train.curriculum_metric={curriculum_metric}: {source} has no curriculum stages; "
            "make a staged task (`charlm data synth lag --lags 5,10,20`) or set "
            "train.curriculum_metric=off"
        )


def group_span(
    mask: np.ndarray, ids: np.ndarray, newline_id: int | None, name: str, info: dict[str, Any]
) -> slice:
    """The whole lines holding the task positions of group `name`: from the line of its first
    position to the line end after its last (synth writes each stage as one block of lines)."""
    group = next(int(g) for g, n in info["groups"].items() if n == name)
    where = np.flatnonzero(groups(mask) == group)
    if not len(where):
        raise DataError(
            f"mask group {name} has no task position in this split; make the task again with "
            "`charlm data synth` (every stage needs lines in train.txt and valid.txt)"
        )
    first, last = int(where[0]), int(where[-1])
    ids = np.asarray(ids)
    before = np.flatnonzero(ids[:first] == newline_id) if newline_id is not None else []
    after = np.flatnonzero(ids[last:] == newline_id) if newline_id is not None else []
    start = int(before[-1]) + 1 if len(before) else 0
    stop = last + int(after[0]) + 1 if len(after) else len(ids)
    return slice(start, stop)
