"""A run's task side: the curriculum stage, task metrics per mask group, and train.best_by.

Prepared data with a mask (charlm/tasks/masks.py) carries meta.json's "task": its groups (e.g. one per
lag of a staged `lag` task), the curriculum (the groups to train on, in order), the held-out
groups (validated, never trained on) and the target group (the last stage). At each evaluation
`TaskRun.evaluate` scores every group on its own lines of the validation split: the recall loss
(mean nats at the group's task positions) and the recall accuracy (the share of them the model
ranks first). `TaskRun.observe` then says whether this is the best checkpoint by
`train.best_by`, and advances the curriculum when the current stage's `train.curriculum_metric`
passes `train.curriculum_threshold`. Both states are saved in RunState (rundir/checkpoint.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from charlm.config import RunConfig
from charlm.tasks.masks import METRICS, group_span, groups

Evaluator = Callable[..., tuple[float, int]]


@dataclass
class Advance:
    """What one evaluation decided: a new best checkpoint, and the stage moved to (or None)."""

    is_best: bool
    new_stage: str | None = None


class TaskRun:
    """The curriculum stage, the best_by tracker and the task metrics of one training run."""

    def __init__(self, config: RunConfig, meta: dict[str, Any], newline_id: int | None) -> None:
        t = config.train
        self.info: dict[str, Any] | None = meta.get("task")
        self.newline_id = newline_id
        self.best_by, self.direction = t.best_by, METRICS[t.best_by]
        self.best: float | None = None  # best_by's best value (val_loss: the policy keeps it)
        self.metric, self.threshold = t.curriculum_metric, t.curriculum_threshold
        on = self.metric != "off" and bool(self.info and self.info.get("curriculum"))
        self.stages: list[str] = list(self.info["curriculum"]) if on else []
        self.stage = 0

    @property
    def stage_name(self) -> str | None:
        return self.stages[self.stage] if self.stages else None

    def train_span(self, mask: np.ndarray | None, ids: np.ndarray) -> slice:
        """The training ids of the current stage (its block of lines), or all of them."""
        if not self.stages or mask is None:
            return slice(None)
        return group_span(mask, ids, self.newline_id, self.stage_name, self.info)

    def evaluate(
        self, ids: np.ndarray, mask: np.ndarray | None, evaluate: Evaluator
    ) -> dict[str, Any]:
        """The validation record's task fields: per group, and flat for the target group.

        `evaluate(ids, mask=..., correct=...)` scores like validation does (evaluate_ids)."""
        if not self.info or mask is None or not self.info.get("groups"):
            return {}
        per_group = {}
        present = set(np.unique(groups(mask)).tolist())
        for group, name in self.info["groups"].items():
            if int(group) not in present:  # a text without this group's lines
                continue
            span = group_span(mask, ids, self.newline_id, name, self.info)
            positions = (groups(mask[span]) == int(group)).astype(np.uint8)
            correct: list[int] = []
            nll, count = evaluate(ids[span], mask=positions, correct=correct)
            per_group[name] = {
                "recall_loss": nll / max(count, 1),
                "recall_accuracy": correct[0] / max(count, 1),
                "positions": count,
            }
        fields: dict[str, Any] = {"groups": per_group}
        target = per_group.get(self.info.get("target") or "")
        if target is not None:
            fields.update(recall_loss=target["recall_loss"])
            fields.update(recall_accuracy=target["recall_accuracy"])
        if self.stages:
            fields["stage"] = self.stage_name
        return fields

    def observe(self, fields: dict[str, Any], val_loss: float, policy_best: bool) -> Advance:
        """Best checkpoint by train.best_by; advance the stage once its metric passes."""
        is_best = policy_best
        if self.best_by != "val_loss":
            value = fields[self.best_by]
            better = self.best is None or (
                value < self.best if self.direction == "min" else value > self.best
            )
            is_best = math.isfinite(value) and math.isfinite(val_loss) and better
            self.best = value if is_best else self.best
        if not self.stages or self.stage + 1 >= len(self.stages):
            return Advance(is_best)
        stage = fields["groups"].get(self.stage_name)
        if stage is None:
            return Advance(is_best)
        value = stage[self.metric]
        passed = (
            value <= self.threshold if METRICS[self.metric] == "min" else value >= self.threshold
        )
        if not passed:
            return Advance(is_best)
        self.stage += 1
        return Advance(is_best, self.stage_name)

    def state_dict(self) -> dict[str, Any]:
        return {"curriculum_stage": self.stage if self.stages else None, "best_metric": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage = int(state.get("curriculum_stage") or 0)
        self.best = state.get("best_metric")
