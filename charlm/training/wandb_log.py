"""Weights & Biases logging of a run's metrics records (train.wandb, the `wandb` extra).

`WandbLog.write` takes the same records as metrics.jsonl, at the same steps, and logs the same
scalars as TensorBoard under the same tags (tracking.py: train/loss, eval/loss, eval/bpc, ...);
the run's resolved settings are the W&B run's config. The W&B run's id is kept in
RUN_DIR/wandb.json, so `--resume` continues that W&B run rather than starting another, and
`close` finishes it with the process's exit code (0, or 130/143 after Ctrl-C/SIGTERM, which
save a checkpoint first). W&B's own files go to RUN_DIR/wandb unless WANDB_DIR names a folder;
WANDB_MODE=offline keeps everything there (`wandb sync` uploads it later). This module imports
wandb only when a run asks for it: with train.wandb off, nothing of it is loaded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import secrets
import string
from pathlib import Path
from typing import Any

from charlm.config import RunConfig
from charlm.errors import CharlmError
from charlm.rundir.names import WANDB_RUN
from charlm.system.files import atomic_write_text
from charlm.training.tracking import scalars

EXTRA = "pip install 'charlm-rnn[wandb]'"


def check_wandb(wanted: bool) -> None:
    """Refuse train.wandb=true where the package is missing, before anything is written."""
    if wanted and importlib.util.find_spec("wandb") is None:
        raise CharlmError(
            f"train.wandb=true needs the wandb package: {EXTRA} (or --set train.wandb=false)"
        )


def run_id(run_dir: Path) -> str | None:
    """The W&B run id a run directory recorded (RUN_DIR/wandb.json), or None."""
    try:
        return str(json.loads((Path(run_dir) / WANDB_RUN).read_text(encoding="utf-8"))["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class WandbLog:
    """One W&B run for one charlm run: started (or resumed, by the id in RUN_DIR/wandb.json)
    when made, given every record, finished by `close` with `exit_code`."""

    def __init__(self, run_dir: Path, config: RunConfig, resumed: bool) -> None:
        check_wandb(True)
        import wandb

        run_dir = Path(run_dir)
        t = config.train
        known = run_id(run_dir) if resumed else None
        self.id = known or "".join(secrets.choice(_ID_LETTERS) for _ in range(8))
        # W&B puts its folder `wandb` (WANDB_DIR) inside `dir`: RUN_DIR/wandb.
        folder = None if os.environ.get("WANDB_DIR") else run_dir
        try:
            self.run = wandb.init(
                project=t.wandb_project,
                name=t.wandb_name or run_dir.resolve().name,
                id=self.id,
                resume="allow",
                config=dataclasses.asdict(config),
                dir=None if folder is None else str(folder),
                settings=wandb.Settings(console="off"),  # charlm's bar stays on the terminal
            )
        except Exception as error:  # W&B's own kinds: no login, a refused id, ...
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CharlmError(
                f"train.wandb=true: W&B did not start ({reason}); log in with `wandb login`, "
                "or set WANDB_MODE=offline to keep the run on this machine"
            ) from None
        record = {"id": self.id, "project": t.wandb_project, "name": self.run.name}
        atomic_write_text(run_dir / WANDB_RUN, json.dumps(record) + "\n")
        self.exit_code = 0

    def write(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if values:
            self.run.log(values, step=int(record.get("step", 0)))

    def close(self) -> None:
        self.run.finish(exit_code=self.exit_code)


_ID_LETTERS = string.ascii_lowercase + string.digits  # W&B's own run ids: 8 of these
