"""What each validation decides: best, patience, plateau scaling, the NT-ASGD trigger."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from charlm.config import OptimConfig
from charlm.training.ntasgd import should_start_averaging


@dataclass(frozen=True)
class Verdict:
    """What one validation decided."""

    is_best: bool
    start_averaging: bool  # NT-ASGD's trigger fired
    stop: bool  # train.patience is spent


@dataclass
class ValidationPolicy:
    """What validation drives: the best loss, train.patience, the plateau schedule's scale and
    NT-ASGD's trigger. Its state is saved in every checkpoint (`state_dict`)."""

    optim: OptimConfig
    patience: int = 0
    best_val_loss: float | None = None
    evals_since_best: int = 0
    val_history: list[float] = field(default_factory=list)
    plateau_scale: float = 1.0
    plateau_bad_evals: int = 0

    def observe(self, val_loss: float, averaging: bool) -> Verdict:
        """Take one validation loss; `averaging`: whether NT-ASGD already averages."""
        # A non-finite loss is never "best" (and never replaces a finite best).
        is_best = math.isfinite(val_loss) and (
            self.best_val_loss is None or val_loss < self.best_val_loss
        )
        if is_best:
            self.best_val_loss = val_loss
        self.val_history.append(val_loss)
        optim = self.optim
        start = (
            optim.name == "asgd"
            and not averaging
            and should_start_averaging(self.val_history, optim.nonmono)
        )
        self.evals_since_best = 0 if is_best else self.evals_since_best + 1
        if optim.schedule == "plateau":
            self.plateau_bad_evals = 0 if is_best else self.plateau_bad_evals + 1
            if self.plateau_bad_evals >= optim.plateau_patience:
                self.plateau_scale *= optim.decay_rate
                self.plateau_bad_evals = 0
        stop = bool(self.patience) and self.evals_since_best >= self.patience
        return Verdict(is_best, start, stop)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_val_loss": self.best_val_loss,
            "evals_since_best": self.evals_since_best,
            "val_history": list(self.val_history),
            "plateau_scale": self.plateau_scale,
            "plateau_bad_evals": self.plateau_bad_evals,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_val_loss = state["best_val_loss"]
        self.evals_since_best = int(state["evals_since_best"])
        self.val_history = list(state["val_history"])
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_bad_evals = int(state["plateau_bad_evals"])
