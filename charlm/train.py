"""The training loop: RMSProp with clipping over truncated BPTT, validation, checkpoints, resume."""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from charlm.batching import IGNORE_INDEX, Cursor, SentenceBatcher, StreamBatcher, to_tensors
from charlm.checkpoint import (
    CHECKPOINTS,
    LoadedCheckpoint,
    TrainingState,
    has_checkpoint,
    is_run_dir,
    load_checkpoint,
    save_checkpoint,
)
from charlm.config import (
    RESUME_SAFE_KEYS,
    OptimConfig,
    RunConfig,
    build_config,
    config_differences,
    config_to_dict,
    config_to_yaml,
)
from charlm.device import resolve_device, set_threads
from charlm.distributed import DistContext, setup_distributed
from charlm.errors import CheckpointError, TrainingStopped, UsageError
from charlm.evaluate import EvalResult, evaluate_ids, make_result
from charlm.gradients import layer_grad_norms
from charlm.health import ExplosionWatch, all_finite, recovery_hint
from charlm.metrics import MetricsLog, Throughput, TrainingDisplay, stderr
from charlm.model import RNNLanguageModel, State, count_parameters, detach_state
from charlm.preflight import (
    DataPlan,
    check_memory,
    check_out_dir,
    check_still_latest,
    plan_data,
    vocab_estimate,
)
from charlm.prepare import PreparedData, PrepareSettings, load_prepared, prepare
from charlm.regularise import WeightAverager, activation_penalty, should_start_averaging
from charlm.runlock import RunLock
from charlm.stepguard import DeviceStepGuard
from charlm.threads import OPENMP_POLICY, LoadMeter, ThreadGovernor, step_macs

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_val_loss: float | None
    final: EvalResult | None


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if optim.name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=optim.lr, alpha=optim.alpha, eps=optim.eps, weight_decay=optim.weight_decay
        )
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=optim.lr, eps=optim.eps, weight_decay=optim.weight_decay)
    if optim.name == "asgd":  # plain SGD; the averaging is WeightAverager's, once triggered
        return torch.optim.SGD(params, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=optim.lr,
            momentum=optim.momentum,
            nesterov=optim.nesterov,
            weight_decay=optim.weight_decay,
        )
    if optim.name == "adamw":
        return torch.optim.AdamW(
            params, lr=optim.lr, eps=optim.eps, weight_decay=optim.weight_decay
        )
    raise UsageError(f"unknown optimiser optim.name={optim.name!r}")


def learning_rate(
    optim: OptimConfig, step: int, total_steps: int, epoch: int = 0, plateau_scale: float = 1.0
) -> float:
    """The rate for optimiser step `step` (0-based) after `epoch` completed epochs.

    A pure function of its arguments, so resume needs no state beyond the cursor and, for
    schedule=plateau, the scale that past plateaus left (`plateau_scale`, saved in checkpoints).
    """
    if optim.warmup_steps and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "decay":  # char-rnn: decay at the end of each epoch >= decay_after
        decays = max(0, epoch - max(1, math.ceil(optim.decay_after_epochs)) + 1)
        return optim.lr * optim.decay_rate**decays
    if optim.schedule == "plateau":
        return optim.lr * plateau_scale
    if optim.schedule == "cosine":
        span = max(1, total_steps - optim.warmup_steps)
        progress = min(1.0, (step - optim.warmup_steps) / span)
        floor = optim.lr * 0.1  # decay to a tenth, not to zero (as nanoGPT does)
        return floor + 0.5 * (optim.lr - floor) * (1 + math.cos(math.pi * progress))
    return optim.lr


def bptt_length(seq_len: int, seed: int, step: int) -> int:
    """AWD-LSTM's variable window: seq_len (p=0.95) or seq_len/2, then a normal draw around it
    (sd 5, at least 5 tokens), so windows start at ever-different offsets across epochs.

    Drawn from a generator seeded by (seed, step): every process draws the same length, and a
    resumed run draws what the uninterrupted one would have, without saving any state.
    """
    rng = np.random.default_rng([seed, step])
    base = seq_len if rng.random() < 0.95 else seq_len / 2
    return max(5, int(rng.normal(base, 5)))


def variable_bptt_steps(stream_len: int, seq_len: int, seed: int, epochs: float) -> int:
    """How many variable-length windows (`bptt_length`) it takes to cover `epochs` epochs of
    streams `stream_len` long: the steps of a run bounded by train.epochs (about 11 us each)."""
    step, epoch, position = 0, 0, 0
    while epoch + position / stream_len < epochs:
        end = min(position + bptt_length(seq_len, seed, step), stream_len)
        epoch, position = (epoch + 1, 0) if end >= stream_len else (epoch, end)
        step += 1
    return step


def _after_validation(
    config: RunConfig,
    val_loss: float,
    is_best: bool,
    counters: dict[str, int],
    val_history: list[float],
    plateau: dict[str, float],
    averager: WeightAverager,
) -> bool:
    """Update what validation drives: NT-ASGD's trigger, the plateau schedule, the patience
    count. Returns whether train.patience is spent (stop now)."""
    val_history.append(val_loss)
    optim = config.optim
    if optim.name == "asgd" and not averager.is_active:
        if should_start_averaging(val_history, optim.nonmono):
            averager.start()
    counters["evals_since_best"] = 0 if is_best else counters["evals_since_best"] + 1
    if optim.schedule == "plateau":
        plateau["bad_evals"] = 0 if is_best else plateau["bad_evals"] + 1
        if plateau["bad_evals"] >= optim.plateau_patience:
            plateau["scale"] *= optim.decay_rate
            plateau["bad_evals"] = 0
    patience = config.train.patience
    return bool(patience) and counters["evals_since_best"] >= patience


def _state_tensors(state: State) -> dict[str, torch.Tensor]:
    if isinstance(state, tuple):
        return {"state_h": state[0], "state_c": state[1]}
    return {"state_h": state}


def _rng_snapshot() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    info = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    tensors = {"rng_torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng_cuda_{i}"] = s
    return info, tensors


def _rng_restore(info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = info["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(tensors["rng_torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _SignalFlag:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps, so saves are never torn."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalFlag:
        for sig in SIGNAL_EXIT_CODES:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test runner thread)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _prepare_settings(
    config: RunConfig, val_file: Path | None, errors: str = "strict"
) -> PrepareSettings:
    return PrepareSettings(
        level=config.data.level,
        vocab_size=config.data.vocab_size,
        val_fraction=config.data.val_fraction,
        val_file=val_file,
        csv_column=config.data.csv_column,
        errors=errors,
        lowercase=config.data.lowercase,
        segments=config.data.segments,
        word_split=config.data.word_split,
    )


def _refuse_unsafe_changes(saved: RunConfig, wanted: RunConfig, run_dir: Path) -> None:
    changed = [
        d for d in config_differences(saved, wanted) if d.split(":")[0] not in RESUME_SAFE_KEYS
    ]
    if changed:
        raise UsageError(
            f"{run_dir}: cannot resume with settings that change the model or data: "
            + "; ".join(changed)
            + " (start a new run with another --out, or drop these overrides)"
        )


def _clear_run(run_dir: Path) -> None:
    """--force: remove what a previous run wrote (checkpoints, metrics, config), keep data/."""
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    for name in ("metrics.jsonl", "config.yaml"):
        (run_dir / name).unlink(missing_ok=True)


def train(
    run_dir: Path,
    *,
    text: Path | None = None,
    data_dir: Path | None = None,
    val_file: Path | None = None,
    config_file: Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    resume: bool = False,
    force: bool = False,
    show_progress: bool = True,
    errors: str = "strict",
) -> TrainResult:
    """Train a model into `run_dir`, or continue the run there with `resume`.

    Data comes from `data_dir` (made by `charlm prepare`), else `text` is prepared into
    RUN_DIR/data (cached; `errors="replace"` accepts invalid UTF-8), else the built-in corpus is.
    """
    run_dir = Path(run_dir)
    if resume and force:
        raise UsageError("--resume and --force contradict each other; pass one")
    check_out_dir(run_dir)
    loaded: LoadedCheckpoint | None = None
    if resume:
        if not has_checkpoint(run_dir):
            raise CheckpointError(
                f"{run_dir}: no checkpoint to resume from; start the run without --resume"
                + (" (add --force to replace what is there)" if is_run_dir(run_dir) else "")
            )
        loaded = load_checkpoint(run_dir, "latest")
        config = build_config(
            base=config_to_dict(loaded.config), config_file=config_file, overrides=overrides
        )
        _refuse_unsafe_changes(loaded.config, config, run_dir)
        loaded.preload_optimizer_state()  # a damaged or unsafe file is refused now
    else:
        if data_dir is not None:
            # Prepared data says what it is: its level overrides the config file's (an
            # explicit --set data.level still wins, and must then agree).
            overrides = [*_prepared_settings(Path(data_dir)), *overrides]
        config = build_config(config_file=config_file, overrides=overrides)
        if is_run_dir(run_dir) and not force:
            raise UsageError(
                f"{run_dir} already holds a run; pass --resume to continue it, "
                "--force to start over (its checkpoints are deleted), or another --out"
            )
    # Every refusal is decided here, before the run directory is touched (docs: README,
    # "Resuming and recovering").
    check_memory(config, vocab_estimate(config, loaded, data_dir))
    plan = plan_data(
        run_dir,
        config,
        loaded,
        text,
        data_dir,
        _prepare_settings(config, val_file, errors),
        show_progress and is_main_process(),
    )
    dist = setup_distributed(config.train.device, config.train.dist_timeout_s)
    try:
        if loaded is not None:
            _check_global_batch(loaded, config, dist.world_size, run_dir)
        device = resolve_device(config.train.device, dist.local_rank)
        with_precision(lambda *a: (), config.train.precision, device)  # refuses bf16 off CUDA
        with _run_lock(run_dir, dist, loaded):
            result = _train(run_dir, config, dist, loaded, plan, force, show_progress)
    except RuntimeError as exc:
        if dist.is_peer_failure(exc):  # a collective failed: another rank died or hung
            # No orderly teardown of a broken group: it can block on the dead peer.
            raise dist.peer_failure(exc) from None
        dist.close()
        raise
    except BaseException:
        dist.close()
        raise
    dist.close()
    return result


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a process alone (before the process group exists)."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def _run_lock(run_dir: Path, dist: DistContext, loaded: LoadedCheckpoint | None) -> Iterator[None]:
    """The main process holds the run's lock (runlock.py) for the whole of training."""
    if not dist.is_main:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        check_still_latest(run_dir, loaded)
        yield


def _prepared_settings(data_dir: Path) -> list[str]:
    """The data.* settings a prepared folder was made with, as overrides (absent: defaults)."""
    meta = load_prepared(data_dir).meta
    settings = meta.get("settings", {})
    keys = ("lowercase", "segments", "word_split") if meta["level"] == "word" else ()
    return [f"data.level={meta['level']}"] + [
        f"data.{key}={settings[key]}" for key in keys if key in settings
    ]


def _load_data(
    config: RunConfig,
    dist: DistContext,
    loaded: LoadedCheckpoint | None,
    plan: DataPlan,
    show: bool,
) -> PreparedData:
    """The run's data, prepared into RUN_DIR/data first if the plan says so (main process)."""
    if plan.prepare is not None:
        if dist.is_main:
            prepare(
                None, plan.data_dir, plan.prepare.settings, show_progress=show, plan=plan.prepare
            )
        dist.barrier()
    data = load_prepared(plan.data_dir)
    if loaded is not None and data.meta.get("cache_key") != loaded.meta.get("cache_key"):
        raise UsageError(  # checked before (preflight); this catches a change since
            f"{plan.data_dir}: this is not the data the run was trained on; resume with the "
            "original text or --data folder"
        )
    return data


def _make_batcher(
    config: RunConfig, data: PreparedData, dist: DistContext
) -> StreamBatcher | SentenceBatcher:
    t = config.train
    if config.data.batching == "sentence":
        special = data.meta["special_ids"]
        return SentenceBatcher(
            data.train_ids,
            special["start"],
            special["end"],
            t.batch_size * t.grad_accum,
            seed=t.seed,
            rank=dist.rank,
            world_size=dist.world_size,
        )
    return StreamBatcher(
        data.train_ids, t.batch_size * t.grad_accum, t.seq_len, dist.rank, dist.world_size
    )


def _micro_batches(
    x: np.ndarray, y: np.ndarray, grad_accum: int
) -> list[tuple[np.ndarray, np.ndarray, slice]]:
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
        length = int(np.count_nonzero(y[:, columns] != IGNORE_INDEX, axis=0).max())
        groups.append(
            (
                np.ascontiguousarray(x[:length, columns]),
                np.ascontiguousarray(y[:length, columns]),
                columns,
            )
        )
    return groups


def _step_tokens(
    dist: DistContext,
    micro_batches: list[tuple[np.ndarray, np.ndarray, slice]],
    is_stream: bool,
    device: torch.device,
) -> int:
    """Targets in this step's global batch: every process's, all micro-batches."""
    local = sum(int(np.count_nonzero(y != IGNORE_INDEX)) for _, y, _ in micro_batches)
    if is_stream:  # every process reads windows of the same shape
        return local * dist.world_size
    return int(dist.all_reduce_sum(torch.tensor(float(local), device=device)))


def _slice_state(state: State, columns: slice) -> State:
    if columns == slice(None):
        return state
    if isinstance(state, tuple):
        return tuple(s[:, columns].contiguous() for s in state)  # type: ignore[return-value]
    return state[:, columns].contiguous()


def _join_states(states: list[State]) -> State:
    if len(states) == 1:
        return states[0]
    if isinstance(states[0], tuple):
        pairs = zip(*states, strict=True)
        return tuple(torch.cat(parts, dim=1) for parts in pairs)  # type: ignore[return-value]
    return torch.cat(states, dim=1)  # type: ignore[arg-type]


def _gather_state(dist: DistContext, state: State) -> State:
    """The carried state of every stream of the job, in global stream order (for checkpoints)."""
    if isinstance(state, tuple):
        return tuple(dist.gather_columns(s) for s in state)  # type: ignore[return-value]
    return dist.gather_columns(state)


def _shard_state(
    tensors: dict[str, torch.Tensor], first: int, count: int, device: torch.device
) -> State:
    """This process's streams [first, first + count) of a checkpoint's carried state."""
    h = tensors["state_h"][:, first : first + count].contiguous().to(device)
    if "state_c" in tensors:
        return (h, tensors["state_c"][:, first : first + count].contiguous().to(device))
    return h


def with_precision(
    forward: Callable[..., tuple], precision: str, device: torch.device
) -> Callable[..., tuple]:
    """`forward` under bf16 autocast on CUDA (`train.precision=bf16`), else `forward` itself.

    The logits, state and hidden outputs come back in fp32: the loss, the carried state and the
    checkpoints stay fp32 whatever the precision. On a CPU, autocast leaves GRU/LSTM in fp32
    (FACTS.md), so bf16 would change only the decoder, at a cost in accuracy: refused.
    """
    if precision == "fp32":
        return forward
    if device.type != "cuda":
        raise UsageError(
            f"train.precision={precision} needs a CUDA device (this run is on {device.type}, "
            "where autocast leaves GRU/LSTM in fp32); use --set train.precision=fp32"
        )

    def run(*args: Any, **kwargs: Any) -> tuple:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, state, *hidden = forward(*args, **kwargs)
        if isinstance(state, tuple):
            state = tuple(s.float() for s in state)
        else:
            state = state.float()
        return (logits.float(), state, *(h.float() for h in hidden))

    return run


def _agree(
    dist: DistContext, loss: torch.Tensor, grad_norm: torch.Tensor, signum: int | None
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


def _check_global_batch(
    loaded: LoadedCheckpoint, config: RunConfig, world_size: int, run_dir: Path
) -> None:
    """Resume on any number of processes that keeps the global batch (so the streams)."""
    old, new = loaded.config.train, config.train
    saved_world = int(loaded.info.get("world_size", 1))
    saved = old.batch_size * saved_world * old.grad_accum
    wanted = new.batch_size * world_size * new.grad_accum
    if saved == wanted:
        return
    per_step = new.batch_size * world_size
    hint = (
        f"--set train.grad_accum={saved // per_step}"
        if saved % per_step == 0
        else f"train.batch_size x processes x train.grad_accum = {saved}"
    )
    raise UsageError(
        f"{run_dir}: the run's global batch is {saved} (batch_size {old.batch_size} x "
        f"{saved_world} processes x grad_accum {old.grad_accum}) but this resume makes it "
        f"{wanted} ({new.batch_size} x {world_size} x {new.grad_accum}), which would change "
        f"the data layout; keep it, e.g. {hint}"
    )


def _restore_rank_rng(
    tensors: dict[str, torch.Tensor], dist: DistContext, device: torch.device, seed: int, step: int
) -> None:
    """Each process's own torch generators (its dropout masks), saved by rank.

    A process the saved run did not have starts a fresh generator from (seed, rank, step).
    """
    saved = tensors.get("rng_torch_ranks")
    if saved is None:  # a checkpoint from before per-rank states: rank 0's state is restored
        return
    if dist.rank >= saved.shape[0]:
        torch.manual_seed(int(np.random.SeedSequence([seed, dist.rank, step]).generate_state(1)[0]))
        return
    # clone(): set_rng_state reads a row of the stacked states from its storage's start.
    torch.set_rng_state(saved[dist.rank].clone())
    saved_cuda = tensors.get("rng_cuda_ranks")
    if saved_cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(saved_cuda[dist.rank].clone(), device)


def _thread_governor(
    config: RunConfig,
    vocab_size: int,
    local_batch: int,
    dist: DistContext,
    device: torch.device,
    meter: LoadMeter,
) -> ThreadGovernor:
    """train.threads on a CPU (charlm/threads.py); processes of one machine share its cores."""
    m = config.model
    macs = step_macs(m.cell, m.layers, m.hidden_size, m.embedding_dim, vocab_size, local_batch)
    if device.type != "cpu":
        macs = 0  # the host only launches work: one thread
    requested = config.train.threads
    if dist.is_distributed and not requested:  # torchrun: a fixed share of the cores each
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
        requested = max(1, torch.get_num_threads() // max(1, local))
    return ThreadGovernor(requested, macs, set_threads, torch.get_num_threads(), meter)


def _evaluate_split(
    model: RNNLanguageModel,
    ids: np.ndarray,
    config: RunConfig,
    dist: DistContext,
    device: torch.device,
    special: dict,
) -> tuple[float, int]:
    """Summed loss and predicted tokens over a split, computed once by all processes together.

    Streams: each process scores its share of the same streams the global batch has, so the
    result does not depend on how the batch is split. Sentences: each process scores a
    contiguous share of the sentences (cut at sentence starts, so no process is handed an
    empty batch); sentences start from a zero state, so the sum is the same either way.
    """
    t = config.train
    if config.data.batching != "sentence" or not dist.is_distributed:
        return evaluate_ids(
            model,
            ids,
            batching=config.data.batching,
            batch_size=t.batch_size * t.grad_accum,
            seq_len=t.seq_len,
            device=device,
            special_ids=special,
            max_batches=t.eval_batches,
            rank=dist.rank,
            world_size=dist.world_size,
            reduce=dist.all_reduce_sum,
        )
    starts = np.flatnonzero(np.asarray(ids) == special["start"])
    limit = len(starts)
    if t.eval_batches:  # the sentences that many global batches hold, as one process scores
        limit = min(limit, t.eval_batches * t.batch_size * t.grad_accum * dist.world_size)
    share = -(-limit // dist.world_size)  # sentences per process; the last may get fewer
    first, stop = dist.rank * share, min((dist.rank + 1) * share, limit)
    nll, predicted = 0.0, 0
    if first < stop:
        end = int(starts[stop]) if stop < len(starts) else len(ids)
        nll, predicted = evaluate_ids(
            model,
            ids[int(starts[first]) : end],
            batching="sentence",
            batch_size=t.batch_size * t.grad_accum,
            seq_len=t.seq_len,
            device=device,
            special_ids=special,
        )
    total = dist.all_reduce_sum(torch.tensor([nll, predicted], dtype=torch.float64, device=device))
    return float(total[0]), int(total[1])


def _train(
    run_dir: Path,
    config: RunConfig,
    dist: DistContext,
    loaded: LoadedCheckpoint | None,
    plan: DataPlan,
    force: bool,
    show_progress: bool,
) -> TrainResult:
    t = config.train
    show = show_progress and dist.is_main
    device = resolve_device(t.device, dist.local_rank)
    load_meter = LoadMeter()  # judges the machine's load while the data loads
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if force:
            _clear_run(run_dir)
    data = _load_data(config, dist, loaded, plan, show)
    if config.data.batching == "sentence" and device.type == "cpu":
        # oneDNN re-plans its RNN kernel for every new sequence length: ~3.5x slower on
        # sentence batches (measured, FACTS.md). The native kernel has no such cost.
        torch.backends.mkldnn.enabled = False
    batcher = _make_batcher(config, data, dist)
    local_batch = t.batch_size * t.grad_accum  # streams (or sentences) of this process per step
    global_batch = local_batch * dist.world_size
    steps_per_epoch = max(1, batcher.steps_per_epoch)
    total_steps = t.max_steps or math.inf
    if t.epochs and t.variable_bptt:  # windows average ~0.975 x seq_len: count them exactly
        total_steps = min(
            total_steps, variable_bptt_steps(batcher.stream_len, t.seq_len, t.seed, t.epochs)
        )
    elif t.epochs:
        total_steps = min(total_steps, math.ceil(t.epochs * steps_per_epoch))
    total_steps = int(total_steps)

    vocab_size = int(data.meta["vocab_size"])
    threads = _thread_governor(config, vocab_size, local_batch, dist, device, load_meter)
    threads.start()
    seed_everything(t.seed)
    model = RNNLanguageModel(config.model, vocab_size)
    if config.model.unigram_bias and loaded is None:
        model.init_output_bias(data.train_ids, config.model.unigram_bias)
    model = model.to(device)
    optimizer = build_optimizer(model, config.optim)
    seed_everything(t.seed + dist.rank)  # dropout differs per rank; the weights do not

    step, cursor = 0, Cursor()
    best_val: float | None = None
    counters = {"bad_steps": 0, "clipped_steps": 0, "evals_since_best": 0}
    averager = WeightAverager(model)  # stays idle unless optim.name=asgd triggers it
    val_history: list[float] = []  # every validation loss, for NT-ASGD's trigger
    plateau = {"scale": 1.0, "bad_evals": 0}  # schedule=plateau's state
    state: State = model.initial_state(local_batch, device)
    if loaded is not None:
        model.load_state_dict(loaded.build_model(device).state_dict())
        optimizer.load_state_dict(loaded.optimizer_state())
        for group in optimizer.param_groups:  # resume-safe optimiser settings may have changed
            group["eps"] = config.optim.eps
        info, tensors = loaded.info, loaded.train_tensors()
        step = int(info["step"])
        cursor = Cursor(**info["cursor"])
        best_val = info.get("best_val_loss")
        if best_val is not None and not math.isfinite(best_val):
            best_val = None  # saved by a version that let NaN be "best"
        counters.update(info.get("counters", {}))
        val_history = list(info.get("val_history", []))
        plateau.update(info.get("plateau", {}))
        raw = loaded.raw_weights()
        if raw is not None:  # averaging: model.safetensors held the mean, this the raw weights
            average = {n: p.detach().clone() for n, p in model.named_parameters()}
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(raw[name])
            averager.load(average, int(info["averaged_steps"]))
        if batcher.carries_state:  # the same streams, whatever the split: re-shard exactly
            state = _shard_state(tensors, dist.rank * local_batch, local_batch, device)
        _rng_restore(info["rng"], tensors)
        _restore_rank_rng(tensors, dist, device, t.seed, step)
    ddp = dist.wrap(model)  # averages gradients over processes; `model` stays the plain module
    forward = ddp or model
    if t.compile:
        # Window lengths vary (sentences, variable BPTT, the last window): compile for dynamic
        # shapes at once rather than recompile for each new length.
        forward = torch.compile(forward, dynamic=True)
    forward = with_precision(forward, t.precision, device)

    if dist.is_main:
        (run_dir / "config.yaml").write_text(config_to_yaml(config), encoding="utf-8")
    metrics = MetricsLog(
        run_dir / "metrics.jsonl", truncate_after=step if loaded else None, enabled=dist.is_main
    )
    metrics.write({"kind": "start", "step": step, "seed": t.seed, "resumed": loaded is not None})
    params = count_parameters(model)
    if show:
        stderr.print(
            f"charlm: {config.model.cell} {config.model.layers}x{config.model.hidden_size}, "
            f"{params:,} parameters; {data.meta['level']} vocabulary {vocab_size:,}; "
            f"{len(data.train_ids):,} training tokens, {steps_per_epoch:,} steps per epoch; "
            f"{'resuming at step ' + str(step) + ', ' if loaded else ''}"
            f"{total_steps:,} steps on {device.type}, seed {t.seed}"
            + (f" x {dist.world_size} processes" if dist.is_distributed else ""),
            highlight=False,
        )
        unit = "streams" if batcher.carries_state else "sentences"
        mean_length = batcher.tokens_per_epoch / max(getattr(batcher, "sentences", 1), 1)
        tokens = (
            f"{global_batch * t.seq_len:,}"
            if batcher.carries_state
            else f"about {global_batch * mean_length:,.0f}"
        )
        stderr.print(
            f"global batch: {t.batch_size} x {dist.world_size} process(es) x grad_accum "
            f"{t.grad_accum} = {global_batch} {unit}, {tokens} tokens per step",
            highlight=False,
        )
        if device.type == "cpu":
            stderr.print(f"cpu: {threads.describe()}; {OPENMP_POLICY}", highlight=False)

    special = data.meta.get("special_ids", {})
    tokenizer_json = (data.data_dir / "tokenizer.json").read_text(encoding="utf-8")

    def validate() -> EvalResult:
        with averager.applied():  # NT-ASGD: score the averaged weights
            return _validate()

    def _validate() -> EvalResult:
        nll, predicted = _evaluate_split(model, data.val_ids, config, dist, device, special)
        # Bits per character uses the split's tokens-per-character ratio, which also holds
        # for the prefix that eval_batches scores.
        return make_result(nll, predicted, data.meta["val_tokens"], data.meta["val_chars"])

    def checkpoint(is_best: bool) -> None:
        if not all_finite(model, optimizer):  # never saved as progress (README)
            raise TrainingStopped(
                f"step {step}: the weights are no longer finite, so they were not saved; "
                + recovery_hint(run_dir, config.optim.lr)
            )
        # Every process takes part: rank 0 saves the carried state of all streams and each
        # process's torch generator, so that a resume on another number of processes re-shards.
        carried = _gather_state(dist, state) if batcher.carries_state else state
        rank_rng = {"rng_torch_ranks": dist.all_gather(torch.get_rng_state())}
        if device.type == "cuda":
            rank_rng["rng_cuda_ranks"] = dist.all_gather(torch.cuda.get_rng_state(device))
        if not dist.is_main:
            # Wait for the save: a rank that exits first makes torchrun stop rank 0 mid-write.
            dist.barrier()
            return
        rng_info, rng_tensors = _rng_snapshot()
        info = {
            "cursor": {"epoch": cursor.epoch, "position": cursor.position},
            "best_val_loss": best_val,
            "last_val_loss": last_val.loss if last_val else None,
            "counters": counters,
            "val_history": val_history,
            "plateau": plateau,
            "averaged_steps": averager.count,
            "rng": rng_info,
            "world_size": dist.world_size,
            "global_batch": global_batch,
            "data_dir": str(data.data_dir.resolve()),
            "parameters": params,
        }
        # Averaging: model.safetensors gets the mean (what sample and evaluate load), the
        # raw weights go beside it for resume.
        raw = averager.raw_weights() if averager.is_active else None
        with averager.applied():
            save_checkpoint(
                run_dir,
                model,
                optimizer,
                config,
                tokenizer_json,
                data.meta,
                TrainingState(step, info, {**_state_tensors(carried), **rng_tensors, **rank_rng}),
                is_best=is_best,
                keep=t.keep_checkpoints,
                raw_weights=raw,
            )
        dist.barrier()

    display = TrainingDisplay(total_steps, step, enabled=show)
    explosion = ExplosionWatch(vocab_size)
    throughput = Throughput()
    started = time.perf_counter()
    last_val: EvalResult | None = None
    loss_sum = torch.zeros((), device=device)
    interval_steps = interval_clipped = bad_streak = 0
    last_grad_norm = 0.0
    layer_norms: list[float | None] = []  # per recurrent layer, at the last eval step
    stop_signal: int | None = None  # a signal every process has agreed on
    guard = None
    if t.step_guard == "device":
        if dist.is_distributed or config.optim.name == "asgd":
            display.message(
                "train.step_guard=device works for one process without NT-ASGD; "
                "checking every step on the host"
            )
        else:
            guard = DeviceStepGuard(device, config.optim.clip_norm)

    def read_guard() -> None:
        """Fold what the device guard counted into the host's tallies (one read-back)."""
        nonlocal interval_steps, interval_clipped, bad_streak, last_grad_norm
        seen = guard.read()  # type: ignore[union-attr]
        loss_sum.add_(seen["loss_sum"])
        interval_steps += seen["good_steps"]
        interval_clipped += seen["clipped_steps"]
        counters["clipped_steps"] += seen["clipped_steps"]
        counters["bad_steps"] += seen["bad_steps"]
        bad_streak = seen["bad_streak"]
        if seen["good_steps"]:
            last_grad_norm = seen["last_grad_norm"]
        if seen["bad_steps"]:
            display.message(
                f"by step {step}: {seen['bad_steps']} non-finite step(s) skipped "
                f"({seen['longest_streak']} in a row at most)"
            )
        if seen["longest_streak"] >= t.max_bad_steps:
            raise TrainingStopped(
                f"{seen['longest_streak']} non-finite steps in a row by step {step}; stopped; "
                + recovery_hint(run_dir, config.optim.lr)
            )

    model.train()
    try:
        with _SignalFlag() as flag:
            while step < total_steps:
                if stop_signal is not None:
                    checkpoint(is_best=False)
                    name = signal.Signals(stop_signal).name
                    raise TrainingStopped(
                        f"{name} at step {step}: checkpoint saved; continue with "
                        f"`charlm train --out {run_dir} --resume`",
                        exit_code=SIGNAL_EXIT_CODES[stop_signal],
                    )
                length = bptt_length(t.seq_len, t.seed, step) if t.variable_bptt else None
                x, y, next_cursor = batcher.batch(cursor, length)
                if cursor.position == 0 or not batcher.carries_state:
                    state = model.initial_state(x.shape[1], device)
                lr = learning_rate(config.optim, step, total_steps, cursor.epoch, plateau["scale"])
                if length is not None:  # AWD-LSTM: a longer window takes a larger step
                    lr *= length / t.seq_len
                for group in optimizer.param_groups:
                    group["lr"] = lr
                micro_batches = _micro_batches(x, y, t.grad_accum)
                step_tokens = _step_tokens(dist, micro_batches, batcher.carries_state, device)
                optimizer.zero_grad(set_to_none=True)
                nll_sum = torch.zeros((), device=device)
                new_states: list[State] = []
                for index, (x_part, y_part, columns) in enumerate(micro_batches):
                    inputs, targets = to_tensors(x_part, y_part, device)
                    part_state = _slice_state(state, columns)
                    # DDP averages the gradients over processes after the last micro-batch only.
                    is_last_part = index == len(micro_batches) - 1
                    with nullcontext() if ddp is None or is_last_part else ddp.no_sync():
                        if t.ar_alpha or t.tar_beta:
                            logits, part_state, output, dropped = forward(
                                inputs, part_state, return_hidden=True
                            )
                        else:
                            logits, part_state = forward(inputs, part_state)  # (seq, batch, vocab)
                        nll = F.cross_entropy(
                            logits.reshape(-1, vocab_size),
                            targets.reshape(-1),
                            ignore_index=IGNORE_INDEX,
                            reduction="sum",
                        )
                        # Scaled so that the sum over micro-batches, averaged over processes by
                        # DDP, is the mean over every target of the global batch.
                        objective = nll * (dist.world_size / step_tokens)
                        if t.ar_alpha or t.tar_beta:  # reported loss stays the plain cross-entropy
                            real = targets != IGNORE_INDEX  # sentence padding is no activation
                            penalty = activation_penalty(
                                output, t.ar_alpha, t.tar_beta, dropped, real
                            )
                            objective = objective + penalty / len(micro_batches)
                        objective.backward()
                    nll_sum += nll.detach()
                    new_states.append(part_state)
                new_state = _join_states(new_states)
                loss = nll_sum / step_tokens  # this process's share of the global batch's loss
                if (step + 1) % t.eval_every == 0 or step + 1 >= total_steps:
                    layer_norms = layer_grad_norms(model)  # before clipping; logged at eval
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), config.optim.clip_norm or math.inf
                )  # the norm before clipping
                if config.optim.clip_value:
                    torch.nn.utils.clip_grad_value_(model.parameters(), config.optim.clip_value)
                if guard is not None and guard.ready(optimizer):
                    # Decided on the device, read back at logging steps (see stepguard.py).
                    state = guard.step(optimizer, loss, grad_norm, state, new_state)
                    averager.update()
                    stop_signal = flag.received
                else:
                    # One read-back per step, agreed by all processes: a non-finite step must
                    # never reach the weights, and a signal to any process stops all together.
                    step_loss, is_finite, stop_signal = _agree(dist, loss, grad_norm, flag.received)
                    if is_finite:
                        optimizer.step()
                        averager.update()
                        state = detach_state(new_state)
                        bad_streak = 0
                        loss_sum += step_loss
                        interval_steps += 1
                        last_grad_norm = float(grad_norm)
                        if config.optim.clip_norm and last_grad_norm > config.optim.clip_norm:
                            counters["clipped_steps"] += 1
                            interval_clipped += 1
                    else:
                        counters["bad_steps"] += 1
                        bad_streak += 1
                        state = detach_state(state)
                        display.message(
                            f"step {step + 1}: non-finite loss or gradient, step skipped "
                            f"({bad_streak} in a row)"
                        )
                        if bad_streak >= t.max_bad_steps:
                            raise TrainingStopped(
                                f"{bad_streak} non-finite steps in a row at step {step + 1}; "
                                "stopped; " + recovery_hint(run_dir, config.optim.lr)
                            )
                throughput.add(step_tokens)
                cursor = next_cursor
                step += 1
                is_last = step >= total_steps
                is_log_step = step % t.log_every == 0 or is_last
                if guard is not None and (
                    is_log_step
                    or step % t.eval_every == 0
                    or step % t.checkpoint_every == 0
                    or stop_signal is not None
                ):
                    read_guard()
                if is_log_step:
                    mean_loss = float(loss_sum) / max(interval_steps, 1)
                    rate = throughput.read()
                    record = {
                        "kind": "train",
                        "step": step,
                        "epoch": cursor.epoch,
                        "loss": mean_loss,
                        "lr": lr,
                        "grad_norm": last_grad_norm,
                        "clipped_fraction": interval_clipped / max(interval_steps, 1),
                        "bad_steps": counters["bad_steps"],
                        "tokens_per_s": rate,
                        "elapsed_s": time.perf_counter() - started,
                        "threads": threads.threads,
                    }
                    warning = explosion.check(step, mean_loss)
                    if warning:
                        record["warning"] = warning
                        display.message(warning)
                    metrics.write(record)
                    change = threads.check()
                    if change is not None:
                        display.message(f"cpu: {change.threads} thread(s): {change.reason}")
                    display.update(
                        step,
                        f"loss {mean_loss:.3f}  {rate:,.0f} tok/s  |g| {last_grad_norm:.2f}  "
                        f"clipped {record['clipped_fraction']:.0%}",
                        is_log_step=True,
                    )
                    loss_sum.zero_()
                    interval_steps = interval_clipped = 0
                elif display.is_terminal:
                    display.update(step, "", is_log_step=False)
                is_best = is_patience_spent = False
                if step % t.eval_every == 0 or is_last:
                    last_val = validate()
                    # A non-finite loss is never "best" (and never replaces a finite best).
                    is_best = math.isfinite(last_val.loss) and (
                        best_val is None or last_val.loss < best_val
                    )
                    if is_best:
                        best_val = last_val.loss
                    was_averaging = averager.is_active
                    is_patience_spent = _after_validation(
                        config, last_val.loss, is_best, counters, val_history, plateau, averager
                    )
                    if averager.is_active and not was_averaging:
                        display.message(f"step {step}: validation stalled; averaging weights")
                    metrics.write(
                        {
                            "kind": "val",
                            "step": step,
                            "val_loss": last_val.loss,
                            "val_perplexity": last_val.perplexity,
                            "val_bits_per_char": last_val.bits_per_char,
                            "grad_norm_layers": layer_norms,
                            "elapsed_s": time.perf_counter() - started,
                        }
                    )
                    display.message(
                        f"step {step}: val loss {last_val.loss:.4f}, perplexity "
                        f"{last_val.perplexity:.2f}, {last_val.bits_per_char:.3f} bits/char"
                        + ("  (best)" if is_best else "")
                    )
                if is_best or step % t.checkpoint_every == 0 or is_last or is_patience_spent:
                    checkpoint(is_best)
                if is_patience_spent:
                    display.message(
                        f"step {step}: no better validation loss in {t.patience} evaluations; "
                        "stopped early (train.patience)"
                    )
                    break
    finally:
        display.close()
        metrics.close()
    return TrainResult(run_dir, step, best_val, last_val)
