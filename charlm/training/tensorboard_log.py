"""TensorBoard event files of a run's metrics records (train.tensorboard, the `tensorboard` extra).

`TensorBoardLog.write` takes the same records as metrics.jsonl, at the same steps: every number
of a "train" or "val" record becomes a scalar named KIND/FIELD (a list, such as
grad_norm_layers, one scalar per item: val/grad_norm_layers/0, ...), and a "sample" record
becomes the text "sample". The writer is torch's own `torch.utils.tensorboard.SummaryWriter`,
which needs the `tensorboard` package; watch a run with `tensorboard --logdir RUN_DIR/tensorboard`.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from charlm.errors import CharlmError

EXTRA = "pip install 'charlm-rnn[tensorboard]'"
SCALAR_KINDS = ("train", "val")
_NOT_SCALARS = {"kind", "step", "time"}


def check_tensorboard(wanted: bool) -> None:
    """Refuse train.tensorboard=true where the package is missing, before anything is written."""
    if wanted and importlib.util.find_spec("tensorboard") is None:
        raise CharlmError(
            f"train.tensorboard=true needs the tensorboard package: {EXTRA} "
            "(or --set train.tensorboard=false)"
        )


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of one record by TensorBoard tag; None, NaN and text are left out."""
    kind = record.get("kind")
    if kind not in SCALAR_KINDS:
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
                tag = f"{kind}/{key}" if not isinstance(value, list) else f"{kind}/{key}/{index}"
                found[tag] = float(item)
    return found


class TensorBoardLog:
    """Event files in `folder`. `purge_step` (a resume): TensorBoard hides what an earlier
    process logged from that step on, as metrics.jsonl drops records past the checkpoint."""

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        check_tensorboard(True)
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder)
        self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        if record.get("kind") == "sample":
            # Markdown: four spaces keep the text as it was generated (line breaks, spacing).
            text = "\n".join("    " + line for line in str(record.get("text", "")).split("\n"))
            self.writer.add_text("sample", text, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
