"""The scalar tags the experiment trackers share (TensorBoard, W&B) and the fan-out to them.

One scheme, Hugging Face Trainer's: a "train" record's numbers are `train/FIELD` (train/loss,
train/lr, train/grad_norm, ...), a "val" record's are `eval/FIELD` without its `val_` prefix
(eval/loss, eval/perplexity, and eval/bpc for val_bits_per_char); a list, such as
grad_norm_layers, is one scalar per item (eval/grad_norm_layers/0, ...).
"""

from __future__ import annotations

import math
from typing import Any

PREFIXES = {"train": "train", "val": "eval"}  # a record's kind -> its tags' prefix
_RENAMED = {"val_bits_per_char": "bpc"}
_NOT_SCALARS = {"kind", "step", "time"}


def tag(kind: str, field: str) -> str:
    """The tag of one field of a "train" or "val" record: train/loss, eval/loss, eval/bpc."""
    name = _RENAMED.get(field, field.removeprefix("val_") if kind == "val" else field)
    return f"{PREFIXES[kind]}/{name}"


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of one record by tag; None, NaN, booleans and text are left out."""
    kind = record.get("kind")
    if kind not in PREFIXES:
        return {}
    found: dict[str, float] = {}
    for key, value in record.items():
        if key in _NOT_SCALARS:
            continue
        values = value if isinstance(value, list) else [value]
        for index, item in enumerate(values):
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if math.isfinite(item):
                name = tag(kind, key)
                found[name if not isinstance(value, list) else f"{name}/{index}"] = float(item)
    return found


class Trackers:
    """Several mirrors of metrics.jsonl as one (`MetricsLog(mirror=...)`): each gets every
    record; `close` closes them all, in order, and raises the first failure after."""

    def __init__(self, mirrors: list[Any]) -> None:
        self.mirrors = mirrors

    def write(self, record: dict[str, Any]) -> None:
        for mirror in self.mirrors:
            mirror.write(record)

    def close(self) -> None:
        failure: BaseException | None = None
        for mirror in self.mirrors:
            try:
                mirror.close()
            except Exception as error:  # the others still close
                failure = failure or error
        if failure is not None:
            raise failure
