"""The metrics records of a run (`RUN_DIR/metrics.jsonl`, one JSON object per line)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from charlm.system.console import utc_now
from charlm.system.files import atomic_write_text, writing


def train_record(
    step: int,
    epoch: int,
    loss: float,
    lr: float,
    grad_norm: float,
    clipped_fraction: float,
    bad_steps: int,
    tokens_per_s: float,
    elapsed_s: float,
    threads: int,
    tokens: int | None = None,
) -> dict[str, Any]:
    """A "train" record, every train.log_every steps: the mean training loss (nats per token)
    since the last record, the learning rate, the last good step's gradient norm before
    clipping, the fraction of steps since the last record that were clipped, the non-finite
    steps skipped so far, tokens per second since the last record, seconds of training so far
    (continued across resumes: the checkpoint keeps it), the CPU threads it trained with
    (train.threads, charlm/system/threads.py), and the training targets read so far (every process,
    continued across resumes; null after resuming a checkpoint written by an earlier charlm that
    kept no count). With train.max_time the trainer adds time_fraction, the fraction of it the
    step's rate followed (training/budget.py)."""
    return {
        "kind": "train",
        "step": step,
        "epoch": epoch,
        "loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "clipped_fraction": clipped_fraction,
        "bad_steps": bad_steps,
        "tokens_per_s": tokens_per_s,
        "elapsed_s": elapsed_s,
        "threads": threads,
        "tokens": tokens,
    }


def val_record(
    step: int,
    val_loss: float,
    val_perplexity: float,
    val_bits_per_char: float,
    grad_norm_layers: list[float | None],
    elapsed_s: float,
    tokens: int | None = None,
) -> dict[str, Any]:
    """A "val" record, every train.eval_every steps and at the end: the validation loss (nats
    per token), its perplexity and bits per character, and each recurrent layer's gradient norm
    (before clipping, null if not finite) at the step just before; elapsed_s and tokens as in
    `train_record`."""
    return {
        "kind": "val",
        "step": step,
        "val_loss": val_loss,
        "val_perplexity": val_perplexity,
        "val_bits_per_char": val_bits_per_char,
        "grad_norm_layers": grad_norm_layers,
        "elapsed_s": elapsed_s,
        "tokens": tokens,
    }


class MetricsLog:
    """Append-only JSONL; each record is flushed so a crash loses at most the line being written.

    The records are `train_record`'s and `val_record`'s (non-finite numbers are written as
    null; a train record carries `warning` when the loss exploded), kind="sample" records (the
    text generated at an evaluation, evalsample.py), and at each start or resume of training one
    kind="start" record (step, seed, resumed). Every record gets `time`, the wall clock when it
    was written (`utc_now`). Records past `truncate_after` (a resumed run's checkpoint step) are
    dropped first, so a resumed run's log reads as if it had never stopped. `mirror` (an object
    with `write(record)` and `close()`, such as tblog.TensorBoardLog) gets every record too.
    """

    def __init__(
        self,
        path: Path,
        truncate_after: int | None = None,
        enabled: bool = True,
        mirror: Any = None,
    ) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.mirror = mirror
        self.failed = False  # a write failed (disk full): see close()
        if not enabled:
            return
        if truncate_after is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= truncate_after]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        clean.setdefault("time", utc_now())
        try:
            with writing(self.path):  # a full disk names metrics.jsonl, not "a file"
                self._file.write(json.dumps(clean) + "\n")
                self._file.flush()
        except OSError:
            self.failed = True
            raise
        if self.mirror is not None:
            self.mirror.write(clean)

    def close(self) -> None:
        """Close the file (and the mirror). After a failed write the file's buffer still holds
        the line that did not fit, and closing fails the same way again: that second failure
        is dropped, so the first one is what the caller reports."""
        try:
            if self.enabled:
                self._file.close()
        except OSError:
            if not self.failed:
                raise
        finally:
            if self.mirror is not None:
                self.mirror.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics file; a torn last line (killed writer) is skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records
