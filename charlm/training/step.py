"""One optimiser step on one batch: micro-batches, DDP, precision, AR/TAR, clipping, step guards.

`TrainStep` is the unit the loop calls once per step, and the place where a graph-captured step
would go. A step guard decides whether the step reaches the weights: `HostGuard` reads the loss
and gradient norm back every step (all processes agree); `DeviceStepGuard` decides on the device
and undoes a bad step there, read back only now and then. Both count into one `StepTally`, and
both stop the run through its one `check_streak`.
"""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from charlm.config import RunConfig
from charlm.data.batching import IGNORE_INDEX, to_tensors
from charlm.errors import TrainingStopped
from charlm.model.cells import State, map_state
from charlm.model.network import RNNLanguageModel, detach_state
from charlm.model.regularise import activation_penalty
from charlm.system.distributed import DistContext
from charlm.training.health import recovery_hint
from charlm.training.ntasgd import WeightAverager
from charlm.training.precision import with_precision

MicroBatch = tuple[np.ndarray, np.ndarray, slice]


def micro_batches(
    x: np.ndarray, y: np.ndarray, grad_accum: int, cut: bool = True
) -> list[MicroBatch]:
    """A process's batch (seq_len, batch_size * grad_accum) as grad_accum column groups.

    Each group keeps its own streams (and `slice` of the carried state); a group of sentences
    is cut to its own longest sentence, as the rows below it are padding that no target reads.
    """
    if grad_accum == 1:
        return [(x, y, slice(None))]
    width = x.shape[1] // grad_accum
    groups = []
    for index in range(grad_accum):
        columns = slice(index * width, (index + 1) * width)
        # The last row any target of the group reads (a masked line's scored targets can stop
        # before its padding; streams keep every row, as their carried state needs them all).
        rows = np.flatnonzero((y[:, columns] != IGNORE_INDEX).any(axis=1))
        length = (int(rows[-1]) + 1 if len(rows) else 1) if cut else len(y)
        x_part = np.ascontiguousarray(x[:length, columns])
        groups.append((x_part, np.ascontiguousarray(y[:length, columns]), columns))
    return groups


def step_tokens(
    dist: DistContext, parts: list[MicroBatch], is_stream: bool, device: torch.device
) -> int:
    """Targets in this step's global batch: every process's, all micro-batches."""
    local = sum(int(np.count_nonzero(y != IGNORE_INDEX)) for _, y, _ in parts)
    if is_stream:  # every process reads windows of the same shape
        return local * dist.world_size
    return int(dist.all_reduce_sum(torch.tensor(float(local), device=device)))


def _slice_state(state: State, columns: slice) -> State:
    if columns == slice(None):
        return state
    return map_state(lambda s: s[:, columns].contiguous(), state)


def _join_states(states: list[State]) -> State:
    if len(states) == 1:
        return states[0]
    return map_state(lambda *parts: torch.cat(parts, dim=1), *states)


def layer_grad_norms(model: torch.nn.Module) -> list[float | None]:
    """The norm of the current gradients of each recurrent layer's weights (None if not finite).

    Read before clipping, it shows which layer explodes or starves; training logs it at each
    evaluation as `grad_norm_layers` on the "val" record.
    """
    squares: dict[int, Tensor] = {}
    for name, param in model.named_parameters():
        layer = re.fullmatch(r"rnn\.\w+_l(\d+)\w*", name)
        if layer is not None and param.grad is not None:
            k = int(layer.group(1))
            squares[k] = squares.get(k, 0.0) + param.grad.detach().float().pow(2).sum()
    norms = [float(squares[k].sqrt()) for k in sorted(squares)]
    return [n if math.isfinite(n) else None for n in norms]


@dataclass
class StepTally:
    """What the guards counted: since the last log line (`loss_sum`, `steps`, `clipped`), over
    the run (`bad_steps`, `clipped_steps`, saved in checkpoints), the current run of bad steps
    and the longest since the last check, and the last good step's gradient norm."""

    loss_sum: Tensor  # float32 on the device, as the metrics' mean loss has always been summed
    steps: int = 0
    clipped: int = 0
    bad_steps: int = 0
    clipped_steps: int = 0
    bad_streak: int = 0
    longest_streak: int = 0
    last_grad_norm: float = 0.0

    def interval(self) -> tuple[float, float]:
        """The mean loss and clipped fraction since the last call, and start a new interval."""
        steps = max(self.steps, 1)
        mean, clipped = float(self.loss_sum) / steps, self.clipped / steps
        self.loss_sum.zero_()
        self.steps = self.clipped = 0
        return mean, clipped

    def check_streak(self, max_bad_steps: int, when: str, run_dir: Path, lr: float) -> None:
        """Stop the run after train.max_bad_steps non-finite steps in a row, naming the last
        finite checkpoint and the resume command (health.py)."""
        if self.longest_streak >= max_bad_steps:
            raise TrainingStopped(
                f"{self.longest_streak} non-finite steps in a row {when}; stopped; "
                + recovery_hint(run_dir, lr)
            )


def agree(
    dist: DistContext, loss: Tensor, grad_norm: Tensor, signum: int | None
) -> tuple[float, bool, int | None]:
    """One small all-reduce per step: the global batch's loss, whether any process saw a
    non-finite loss or gradient, and whether any got SIGINT/SIGTERM, so that all processes
    step, skip or stop together. Alone, it is the loop's one read-back per step.
    """
    flags = [signum == signal.SIGINT, signum == signal.SIGTERM]
    values = torch.cat(
        [
            loss.detach().double().reshape(1),
            (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).double().reshape(1),
            torch.tensor(flags, dtype=torch.float64, device=loss.device),
        ]
    )
    total, bad, interrupts, terminates = dist.all_reduce_sum(values).tolist()
    stop = signal.SIGTERM if terminates else signal.SIGINT if interrupts else None
    return total, bad == 0, stop


@dataclass
class GuardContext:
    """What every guard needs besides the step: the settings, the processes, the tally, and
    where to say what happened."""

    config: RunConfig
    dist: DistContext
    tally: StepTally
    run_dir: Path
    notify: Callable[[str], None]


class HostGuard:
    """`train.step_guard=host`: read the loss and gradient norm back every step, agreed by all
    processes, and step only when both are finite."""

    def __init__(self, context: GuardContext) -> None:
        self.context = context

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        loss: Tensor,
        grad_norm: Tensor,
        old_state: State,
        new_state: State,
        signum: int | None,
        step: int,
    ) -> tuple[State, int | None, bool]:
        """Step or skip; returns the state to carry, the agreed stop signal, whether it stepped."""
        c, tally = self.context, self.context.tally
        step_loss, is_finite, stop = agree(c.dist, loss, grad_norm, signum)
        if not is_finite:
            tally.bad_steps += 1
            tally.bad_streak += 1
            tally.longest_streak = max(tally.longest_streak, tally.bad_streak)
            c.notify(
                f"step {step + 1}: non-finite loss or gradient, step skipped "
                f"({tally.bad_streak} in a row)"
            )
            tally.check_streak(
                c.config.train.max_bad_steps, f"at step {step + 1}", c.run_dir, c.config.optim.lr
            )
            return detach_state(old_state), stop, False
        optimizer.step()
        tally.bad_streak = tally.longest_streak = 0
        tally.loss_sum += step_loss
        tally.steps += 1
        tally.last_grad_norm = float(grad_norm)
        clip = c.config.optim.clip_norm
        if clip and tally.last_grad_norm > clip:
            tally.clipped_steps += 1
            tally.clipped += 1
        return detach_state(new_state), stop, True

    def read(self, step: int) -> None:
        """Nothing to fetch: the host guard counts as it goes."""

    def current(self, optimizer: torch.optim.Optimizer) -> HostGuard:
        """The guard that decides this step: this one."""
        return self


@dataclass
class _DeviceCounts:
    """The device guard's counts since its last read, each a float64 tensor on the device."""

    loss_sum: Tensor
    good: Tensor
    clipped: Tensor
    bad: Tensor
    streak: Tensor  # the current run of bad steps (carries over reads)
    longest: Tensor
    last_norm: Tensor


class DeviceStepGuard:
    """`train.step_guard=device`: the step is taken, and undone on the device when it was bad.

    The host guard reads the loss and gradient norm back every step to decide whether to step;
    on a GPU that read stops the host from queueing the next step while this one runs. Here the
    decision stays a device tensor `ok`: the weights and the optimiser's state are copied before
    the step and chosen back with `where(ok, new, old)` after it (whatever a non-finite gradient
    made of them), so a bad step leaves them bit-identical to skipping it, and a good one is
    exactly the plain step. The counts accumulate on the device; `read()` fetches them in one
    transfer, at logging, evaluation and checkpoint steps only.

    The optimiser must already hold its state (after the first step): a first step that is
    undone would still have created it, so until then the host guard decides (`current`). Cost: one copy of
    the weights and optimiser state per step, which a GPU does in microseconds for these sizes.
    """

    def __init__(self, context: GuardContext, device: torch.device) -> None:
        self.context, self.host = context, HostGuard(context)
        self.clip_norm = context.config.optim.clip_norm
        self._ready = False
        self._counts = _DeviceCounts(
            *(torch.zeros((), dtype=torch.float64, device=device) for _ in range(7))
        )

    def ready(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether every parameter has optimiser state (so a step can be undone exactly); once
        true it stays true, so the check costs nothing after the first step."""
        if not self._ready:
            self._ready = all(
                optimizer.state.get(p) for group in optimizer.param_groups for p in group["params"]
            )
        return self._ready

    def current(self, optimizer: torch.optim.Optimizer) -> DeviceStepGuard | HostGuard:
        """The guard that decides this step: this one once `ready`, the host guard before."""
        return self if self.ready(optimizer) else self.host

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        loss: Tensor,
        grad_norm: Tensor,
        old_state: State,
        new_state: State,
        signum: int | None,
        step: int,
    ) -> tuple[State, int | None, bool]:
        """Step `optimizer` unless the loss or gradient is non-finite, deciding on the device.
        Returns the carried state to keep, the stop signal and True (a step was taken)."""
        ok = torch.isfinite(loss) & torch.isfinite(grad_norm)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        with torch.no_grad():
            saved = [
                (
                    p,
                    p.detach().clone(),
                    {k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)},
                )
                for p in params
            ]
            optimizer.step()
            for p, old, old_opt in saved:
                p.copy_(torch.where(ok, p, old))
                for key, value in old_opt.items():
                    current = optimizer.state[p][key]
                    current.copy_(torch.where(ok, current, value))
            self._count(ok, loss, grad_norm)
        state = map_state(lambda n, o: torch.where(ok, n, o).detach(), new_state, old_state)
        return state, signum, True

    def _count(self, ok: Tensor, loss: Tensor, grad_norm: Tensor) -> None:
        counts, norm, good = self._counts, grad_norm.detach().double(), ok.double()
        counts.loss_sum += torch.where(ok, loss.detach().double(), 0.0)
        counts.good += good
        if self.clip_norm:
            counts.clipped += (ok & (norm > self.clip_norm)).double()
        counts.bad += 1.0 - good
        counts.streak.copy_((counts.streak + 1.0) * (1.0 - good))
        counts.longest.copy_(torch.maximum(counts.longest, counts.streak))
        counts.last_norm.copy_(torch.where(ok, norm, counts.last_norm))

    def read(self, step: int) -> None:
        """Fold what happened since the last read into the tally (one transfer), then start a
        new interval; the current bad streak carries over."""
        c, tally, counts = self.context, self.context.tally, self._counts
        values = torch.stack(
            [counts.loss_sum, counts.good, counts.clipped, counts.bad, counts.streak]
            + [counts.longest, counts.last_norm]
        ).tolist()
        loss_sum, good, clipped, bad, streak, longest, last_norm = values
        for name in ("loss_sum", "good", "clipped", "bad"):
            getattr(counts, name).zero_()
        counts.longest.copy_(counts.streak)
        tally.loss_sum.add_(loss_sum)
        tally.steps += int(good)
        tally.clipped += int(clipped)
        tally.clipped_steps += int(clipped)
        tally.bad_steps += int(bad)
        tally.bad_streak = int(streak)
        tally.longest_streak = int(longest)
        if good:
            tally.last_grad_norm = last_norm
        if bad:
            c.notify(
                f"by step {step}: {int(bad)} non-finite step(s) skipped "
                f"({int(longest)} in a row at most)"
            )
        tally.check_streak(
            c.config.train.max_bad_steps, f"by step {step}", c.run_dir, c.config.optim.lr
        )


StepGuard = HostGuard | DeviceStepGuard


def make_guard(context: GuardContext, device: torch.device) -> StepGuard:
    """The guard train.step_guard asks for, where it can work."""
    config, dist = context.config, context.dist
    if config.train.step_guard != "device":
        return HostGuard(context)
    if dist.is_distributed or config.optim.name == "asgd":
        context.notify(
            "train.step_guard=device works for one process without NT-ASGD; "
            "checking every step on the host"
        )
        return HostGuard(context)
    return DeviceStepGuard(context, device)


@dataclass
class StepResult:
    state: State  # the carried state after the step
    stop_signal: int | None  # SIGINT/SIGTERM, agreed by all processes
    tokens: int  # targets in the global batch
    layer_norms: list[float | None] | None  # when asked for: per-layer gradient norms


class TrainStep:
    """One optimiser step on one batch, every process together."""

    def __init__(
        self,
        model: RNNLanguageModel,
        optimizer: torch.optim.Optimizer,
        config: RunConfig,
        dist: DistContext,
        device: torch.device,
        guard: StepGuard,
        averager: WeightAverager,
    ) -> None:
        self.model, self.optimizer, self.config, self.dist = model, optimizer, config, dist
        self.device, self.guard, self.averager = device, guard, averager
        self.ddp = dist.wrap(model)  # averages gradients over processes; `model` stays plain
        forward = self.ddp or model
        if config.train.compile:
            # Window lengths vary (sentences, variable BPTT, the last window): compile for
            # dynamic shapes at once rather than recompile for each new length.
            forward = torch.compile(forward, dynamic=True)
        self.forward = with_precision(forward, config.train.precision, device)

    def __call__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        state: State,
        step: int,
        *,
        carries_state: bool,
        signum: int | None,
        layer_norms: bool,
    ) -> StepResult:
        parts = micro_batches(x, y, self.config.train.grad_accum, cut=not carries_state)
        tokens = step_tokens(self.dist, parts, carries_state, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss, new_state = self._forward_backward(parts, state, tokens)
        norms = layer_grad_norms(self.model) if layer_norms else None  # before clipping
        grad_norm = self._clip()
        guard = self.guard.current(self.optimizer)
        state, stop, stepped = guard.step(
            self.optimizer, loss, grad_norm, state, new_state, signum, step
        )
        if stepped:
            self.averager.update()
        return StepResult(state, stop, tokens, norms)

    def _forward_backward(
        self, parts: list[MicroBatch], state: State, tokens: int
    ) -> tuple[Tensor, State]:
        """Gradients of the global batch's mean loss; returns this process's share of that loss
        and the new carried state."""
        t, vocab = self.config.train, self.model.vocab_size
        nll_sum = torch.zeros((), device=self.device)
        new_states: list[State] = []
        regularised = bool(t.ar_alpha or t.tar_beta)
        for index, (x_part, y_part, columns) in enumerate(parts):
            inputs, targets = to_tensors(x_part, y_part, self.device)
            part_state = _slice_state(state, columns)
            # DDP averages the gradients over processes after the last micro-batch only.
            is_last_part = index == len(parts) - 1
            with nullcontext() if self.ddp is None or is_last_part else self.ddp.no_sync():
                if regularised:
                    logits, part_state, output, dropped = self.forward(
                        inputs, part_state, return_hidden=True
                    )
                else:
                    logits, part_state = self.forward(inputs, part_state)  # (seq, batch, vocab)
                nll = F.cross_entropy(
                    logits.reshape(-1, vocab),
                    targets.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
                # Scaled so that the sum over micro-batches, averaged over processes by DDP,
                # is the mean over every target of the global batch.
                objective = nll * (self.dist.world_size / max(tokens, 1))  # masks: 0 is possible
                if regularised:  # the reported loss stays the plain cross-entropy
                    real = targets != IGNORE_INDEX  # sentence padding is no activation
                    penalty = activation_penalty(output, t.ar_alpha, t.tar_beta, dropped, real)
                    objective = objective + penalty / len(parts)
                objective.backward()
            nll_sum += nll.detach()
            new_states.append(part_state)
        return nll_sum / max(tokens, 1), _join_states(new_states)

    def _clip(self) -> Tensor:
        """Clip as optim.clip_norm / clip_value say; returns the norm before clipping."""
        optim, params = self.config.optim, self.model.parameters()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, optim.clip_norm or math.inf)
        if optim.clip_value:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), optim.clip_value)
        return grad_norm
