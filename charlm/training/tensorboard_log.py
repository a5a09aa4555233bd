"""TensorBoard event files of a run's metrics records (train.tensorboard, the `tensorboard` extra).

`TensorBoardLog.write` takes the same records as metrics.jsonl, at the same steps: every number
of a "train" or "val" record becomes a scalar tagged as tracking.py says (train/loss,
eval/loss, eval/bpc, ...), and a "sample" record becomes the text "sample". The writer is
torch's own `torch.utils.tensorboard.SummaryWriter`, which needs the `tensorboard` package;
watch a run with `tensorboard --logdir RUN_DIR/tensorboard`.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

from charlm.errors import CharlmError
from charlm.system.files import writing
from charlm.training.tracking import scalars

EXTRA = "pip install 'charlm-rnn[tensorboard]'"


def check_tensorboard(wanted: bool) -> None:
    """Refuse train.tensorboard=true where the package is missing, before anything is written."""
    if wanted and importlib.util.find_spec("tensorboard") is None:
        raise CharlmError(
            f"train.tensorboard=true needs the tensorboard package: {EXTRA} "
            "(or --set train.tensorboard=false)"
        )


class TensorBoardLog:
    """Event files in `folder`. `purge_step` (a resume): TensorBoard hides what an earlier
    process logged from that step on, as metrics.jsonl drops records past the checkpoint.

    A failed write (a full disk) is an OSError naming `folder`, raised by `write`; the writer's
    thread, where it happens, no longer prints it as a traceback (`_quiet_writer_thread`)."""

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        check_tensorboard(True)
        from torch.utils.tensorboard import SummaryWriter

        _quiet_writer_thread()
        self.folder = Path(folder)
        self.failed = False
        with writing(self.folder):
            self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        try:
            with writing(self.folder):
                for tag, value in scalars(record).items():
                    self.writer.add_scalar(tag, value, step)
                if record.get("kind") == "sample":
                    # Markdown: four spaces keep the text as generated (line breaks, spacing).
                    lines = str(record.get("text", "")).split("\n")
                    self.writer.add_text("sample", "\n".join("    " + x for x in lines), step)
                self.writer.flush()
        except OSError:
            self.failed = True
            raise

    def close(self) -> None:
        """After a failed write, closing flushes what did not fit and fails again: dropped."""
        try:
            with writing(self.folder):
                self.writer.close()
        except OSError:
            if not self.failed:
                raise


_quiet = threading.Lock()


def _quiet_writer_thread() -> None:
    """TensorBoard writes events in a thread of its own, which prints a failed write as
    "Exception in thread ..." with a traceback, then keeps the exception for the next
    `write`, which raises it in the training thread: the print alone is dropped (once per
    process; every other thread's exceptions reach the hook that was there before)."""
    with _quiet:
        if getattr(threading.excepthook, "charlm_quiet", False):
            return
        previous = threading.excepthook

        def hook(args: Any) -> None:
            if type(args.thread).__name__ != "_AsyncWriterThread":
                previous(args)

        hook.charlm_quiet = True  # type: ignore[attr-defined]
        threading.excepthook = hook
