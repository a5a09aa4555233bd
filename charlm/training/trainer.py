"""The Trainer: one run set up in named parts (data, model, restore, step), then the loop.

Its setup is `_setup_data`, `_setup_model`, `_restore`, `_setup_step`; the loop calls
`TrainStep` (step.py) once per step, then `_log`, `_validate`, `_sample` and `_save` as the
settings say. `train()` (run.py) opens the run and hands it here. Exact resume lives in
resume.py, the schedules in schedules.py, where the run ends (steps, train.max_time) in
budget.py, validation's decisions in validation.py.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from charlm.config import RunConfig, config_to_yaml
from charlm.data.batching import (
    Batcher,
    Cursor,
    SentenceBatcher,
    StreamBatcher,
    make_batcher,
)
from charlm.data.prepare import PreparedData, load_prepared, prepare
from charlm.data.tokenizer import transformers_files
from charlm.errors import TrainingStopped, UsageError
from charlm.inference.evaluate import EvalResult, evaluate_ids, make_result
from charlm.model.cells import CELLS, State
from charlm.model.network import RNNLanguageModel, count_parameters
from charlm.rundir.checkpoint import (
    LoadedCheckpoint,
    RunState,
    TrainingState,
    save_checkpoint,
)
from charlm.rundir.names import CHECKPOINTS, CONFIG, METRICS, TENSORBOARD, TOKENIZER, WANDB_RUN
from charlm.rundir.records import MetricsLog, train_record, val_record
from charlm.system.console import print_line
from charlm.system.device import resolve_device, set_threads
from charlm.system.distributed import DistContext
from charlm.system.files import atomic_write_text
from charlm.system.threads import LoadMeter, ThreadGovernor, openmp_policy, step_macs
from charlm.tasks.curriculum import TaskRun
from charlm.training.budget import Budget, rank0_reading
from charlm.training.display import Throughput, TrainingDisplay, status_line
from charlm.training.health import ExplosionWatch, all_finite, recovery_hint
from charlm.training.ntasgd import WeightAverager
from charlm.training.optimizers import build_optimizer, patch_resumed_optimizer
from charlm.training.precision import precision_note
from charlm.training.preflight import (
    DataPlan,
)
from charlm.training.resume import (
    check_global_batch,
    gather_state,
    rank_rng,
    restore_averaging,
    restore_rank_rng,
    rng_restore,
    rng_snapshot,
    seed_everything,
    shard_state,
    state_tensors,
)
from charlm.training.sample_at_eval import draw_sample
from charlm.training.schedules import bptt_length, learning_rate, variable_bptt_steps
from charlm.training.step import GuardContext, StepTally, TrainStep, make_guard
from charlm.training.tensorboard_log import TensorBoardLog
from charlm.training.tracking import Trackers
from charlm.training.validation import ValidationPolicy
from charlm.training.warmstart import WarmStart, describe

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_val_loss: float | None
    final: EvalResult | None


def total_steps(config: RunConfig, batcher: StreamBatcher | SentenceBatcher) -> int:
    """Steps of the run: train.max_steps, or fewer when train.epochs ends it sooner; 0: no step
    limit (train.max_time alone ends it)."""
    t = config.train
    total = t.max_steps or math.inf
    if t.epochs and t.variable_bptt:  # windows average ~0.975 x seq_len: count them exactly
        total = min(total, variable_bptt_steps(batcher.stream_len, t.seq_len, t.seed, t.epochs))
    elif t.epochs:
        total = min(total, math.ceil(t.epochs * max(1, batcher.steps_per_epoch)))
    return 0 if total == math.inf else int(total)


class Trainer:
    """One training run, set up in named parts, then the loop."""

    def __init__(
        self,
        run_dir: Path,
        config: RunConfig,
        dist: DistContext,
        loaded: LoadedCheckpoint | None,
        plan: DataPlan,
        force: bool,
        show_progress: bool,
        warm: WarmStart | None = None,
    ) -> None:
        self.run_dir, self.config, self.dist, self.loaded = run_dir, config, dist, loaded
        self.warm = warm
        self.plan, self.force = plan, force
        self.show = show_progress and dist.is_main
        self.device = resolve_device(config.train.device, dist.local_rank)
        self.step, self.cursor = 0, Cursor()
        self.last_val: EvalResult | None = None
        self.layer_norms: list[float | None] = []  # per recurrent layer, at the last eval step
        self.stop_signal: int | None = None  # a signal every process has agreed on
        # Training time and targets of the run so far, continued across resumes (RunState);
        # tokens stay None after resuming a checkpoint that did not count them.
        self.elapsed_before, self.tokens = 0.0, 0

    def run(self) -> TrainResult:
        self.load_meter = LoadMeter()  # judges the machine's load while the data loads
        mkldnn = torch.backends.mkldnn.enabled
        try:
            self._setup_data()
            self._setup_model()
            self._restore()
            self._setup_step()
            return self._loop()
        finally:
            torch.backends.mkldnn.enabled = mkldnn  # sentence batching turns it off

    # -- setup -------------------------------------------------------------------------------

    def _setup_data(self) -> None:
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.force:
                _clear_run(self.run_dir)
        self.data = _load_data(self.dist, self.loaded, self.plan, self.show)
        if self.config.data.batching == "sentence" and self.device.type == "cpu":
            # oneDNN re-plans its RNN kernel for every new sequence length, several times
            # slower on sentence batches (docs/benchmarks.md); the native kernel is not.
            torch.backends.mkldnn.enabled = False
        self.tasks = TaskRun(self.config, self.data.meta, _newline_id(self.data))
        self.batcher = _make_batcher(self.config, self.data, self.dist, self.tasks)
        t = self.config.train
        self.local_batch = t.batch_size * t.grad_accum  # streams (or sentences) per process
        self.global_batch = self.local_batch * self.dist.world_size
        self.total_steps = total_steps(self.config, self.batcher)

    def _setup_model(self) -> None:
        t, dist = self.config.train, self.dist
        self.vocab_size = int(self.data.meta["vocab_size"])
        recorded = self.loaded.state.threads if self.loaded is not None else None
        self.threads = _thread_governor(
            self.config, self.vocab_size, self.local_batch, dist, self.device, self.load_meter,
            recorded,
        )  # fmt: skip
        self.threads.start()
        seed_everything(t.seed)
        model = RNNLanguageModel(self.config.model, self.vocab_size)
        if self.config.model.unigram_bias and self.loaded is None:
            model.init_output_bias(self.data.train_ids, self.config.model.unigram_bias)
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, self.config.optim)
        seed_everything(t.seed + dist.rank)  # dropout differs per rank; the weights do not
        self.averager = WeightAverager(self.model)  # idle unless optim.name=asgd triggers it
        self.policy = ValidationPolicy(self.config.optim, t.patience)
        self.tally = StepTally(torch.zeros((), device=self.device))
        self.state: State = self.model.initial_state(self.local_batch, self.device)
        self.params = count_parameters(self.model)

    def _restore(self) -> None:
        """Continue where the checkpoint stopped: weights, optimiser, cursor, counters, policy,
        averaging, carried state and every generator (resume.py)."""
        loaded, dist = self.loaded, self.dist
        if loaded is None:
            if self.warm is not None:
                self.step = self.warm.apply(self.model, self.optimizer, self.config.optim)
            return
        self.model.load_state_dict(loaded.build_model(self.device).state_dict())
        self.optimizer.load_state_dict(loaded.optimizer_state())
        patch_resumed_optimizer(self.optimizer, self.config.optim)
        saved, tensors = loaded.state, loaded.train_tensors()
        self.step, self.cursor = saved.step, Cursor(saved.epoch, saved.position)
        self.tally.bad_steps, self.tally.clipped_steps = saved.bad_steps, saved.clipped_steps
        self.elapsed_before, self.tokens = saved.elapsed_s, saved.tokens
        self.policy.load_state_dict(_policy_fields(saved))
        self.tasks.load_state_dict(vars(saved))
        if self.tasks.stage:  # the stage's own lines, read from the saved cursor on
            self.batcher = _make_batcher(self.config, self.data, self.dist, self.tasks)
        restore_averaging(self.model, self.averager, loaded)
        check_global_batch(loaded, self.config, dist.world_size, self.run_dir)
        if self.batcher.carries_state:  # the same streams, whatever the split: re-shard exactly
            first = dist.rank * self.local_batch
            self.state = shard_state(tensors, first, self.local_batch, self.device)
        rng_restore(saved.rng, tensors)
        restore_rank_rng(tensors, dist, self.device, self.config.train.seed, self.step)

    def _setup_step(self) -> None:
        max_time = self.config.train.max_time
        agree = rank0_reading(self.dist, max_time)  # torchrun: rank 0's clock for every process
        self.budget = Budget(self.total_steps, max_time, self.elapsed_before, agree)
        if self.dist.is_main:
            config_yaml = config_to_yaml(self.config)
            atomic_write_text(self.run_dir / CONFIG, config_yaml)
        resumed_at = self.step if self.loaded else None
        self.metrics = MetricsLog(
            self.run_dir / METRICS,
            truncate_after=resumed_at,
            enabled=self.dist.is_main,
            mirror=self._trackers(resumed_at),
        )
        t = self.config.train
        warm = self.warm.summary(self.data.meta) if self.warm else {}
        self.metrics.write(
            {
                "kind": "start",
                "step": self.step,
                "seed": t.seed,
                "resumed": self.loaded is not None,
                "precision": t.precision,  # as this start (or resume) trains
                **warm,
            }
        )
        self.explosion = ExplosionWatch(self.vocab_size)
        if self.show:
            self._print_header()
            if warm:
                print_line(describe(warm, self.vocab_size))
        self.tokenizer_json = (self.data.data_dir / TOKENIZER).read_text(encoding="utf-8")
        self.tokenizer = Tokenizer.from_str(self.tokenizer_json)  # for the samples
        self.tokenizer_files = transformers_files(self.tokenizer)  # beside it in checkpoints
        self.display = TrainingDisplay(
            self.total_steps, self.step, enabled=self.show, budget=self.budget
        )
        context = GuardContext(
            self.config, self.dist, self.tally, self.run_dir, self.display.message
        )
        self.guard = make_guard(context, self.device)
        self.train_step = TrainStep(
            self.model,
            self.optimizer,
            self.config,
            self.dist,
            self.device,
            self.guard,
            self.averager,
        )

    def _trackers(self, resumed_at: int | None) -> Trackers | None:
        """TensorBoard and W&B as the settings ask (the main process only); W&B first, as the
        one that may refuse to start (no login)."""
        t, mirrors = self.config.train, []
        self.wandb_log = None
        if not self.dist.is_main:
            return None
        if t.wandb:
            from charlm.training.wandb_log import WandbLog  # wandb loads only when asked for

            self.wandb_log = WandbLog(self.run_dir, self.config, resumed=self.loaded is not None)
            mirrors.append(self.wandb_log)
        if t.tensorboard:
            purge = None if resumed_at is None else resumed_at + 1
            mirrors.append(TensorBoardLog(self.run_dir / TENSORBOARD, purge_step=purge))
        return Trackers(mirrors) if mirrors else None

    def _print_header(self) -> None:
        config, dist, data, t = self.config, self.dist, self.data, self.config.train
        batcher, m = self.batcher, config.model
        print_line(
            f"charlm: {m.cell} {m.layers}x{m.hidden_size}, {self.params:,} parameters; "
            f"{data.meta['level']} vocabulary {self.vocab_size:,}; "
            f"{len(data.train_ids):,} training tokens, "
            f"{max(1, batcher.steps_per_epoch):,} steps per epoch; "
            f"{'resuming at step ' + str(self.step) + ', ' if self.loaded else ''}"
            f"{self.budget.describe()} on {self.device.type}, seed {t.seed}"
            + (f" x {dist.world_size} processes" if dist.is_distributed else "")
        )
        unit = "streams" if batcher.carries_state else getattr(batcher, "unit", "sentences")
        mean_length = batcher.tokens_per_epoch / max(getattr(batcher, "sentences", 1), 1)
        tokens = (
            f"{self.global_batch * t.seq_len:,}"
            if batcher.carries_state
            else f"about {self.global_batch * mean_length:,.0f}"
        )
        print_line(
            f"global batch: {t.batch_size} x {dist.world_size} process(es) x grad_accum "
            f"{t.grad_accum} = {self.global_batch} {unit}, {tokens} tokens per step"
        )
        if self.device.type == "cpu":
            print_line(f"cpu: {self.threads.describe()}; {openmp_policy()}")  # as it holds now
        note = precision_note(t.precision, m, self.device)
        if note is not None:
            print_line(note)
        if self.tasks.stages:
            print_line(
                f"curriculum: {', '.join(self.tasks.stages)}; now {self.tasks.stage_name} "
                f"(on {t.curriculum_metric} {t.curriculum_threshold} of its validation lines)"
            )

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> TrainResult:
        self.throughput = Throughput()
        self.budget.start()  # elapsed_s goes on
        self.model.train()
        try:
            with _SignalFlag() as flag:
                while not self.budget.ended(self.step):
                    if self.stop_signal is not None:
                        self._stop_on_signal()
                    self._one_step(flag.received)
                    if self._after_step():
                        break
        except BaseException as error:  # W&B records how the run ended (130, 143, 1)
            if self.wandb_log is not None:
                self.wandb_log.exit_code = getattr(error, "exit_code", 1)
            raise
        finally:
            self.display.close()
            self.metrics.close()
        return TrainResult(self.run_dir, self.step, self.policy.best_val_loss, self.last_val)

    def _one_step(self, signum: int | None) -> None:
        t, step = self.config.train, self.step
        length = bptt_length(t.seq_len, t.seed, step) if t.variable_bptt else None
        x, y, next_cursor = self.batcher.batch(self.cursor, length)
        if self.cursor.position == 0 or not self.batcher.carries_state:
            self.state = self.model.initial_state(x.shape[1], self.device)
        lr = learning_rate(
            self.config.optim, step, self.total_steps, self.cursor.epoch,
            self.policy.plateau_scale, self.budget.follow(),
        )  # fmt: skip
        if length is not None:  # AWD-LSTM: a longer window takes a larger step
            lr *= length / t.seq_len
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.lr = lr
        wants_norms = (step + 1) % t.eval_every == 0 or self.budget.may_end(step + 1)
        result = self.train_step(
            x,
            y,
            self.state,
            step,
            carries_state=self.batcher.carries_state,
            signum=signum,
            layer_norms=wants_norms,
        )
        self.state, self.stop_signal = result.state, result.stop_signal
        if result.layer_norms is not None:
            self.layer_norms = result.layer_norms
        self.throughput.add(result.tokens)
        if self.tokens is not None:
            self.tokens += result.tokens
        self.cursor = next_cursor
        self.step += 1

    def _after_step(self) -> bool:
        """Read the guard, log, validate and save as the settings say; True: stop (patience)."""
        t, step = self.config.train, self.step
        is_last = self.budget.tick(step)
        if is_last and (note := self.budget.end_note(step)):
            self.display.message(note)
        is_log_step = step % t.log_every == 0 or is_last
        is_eval_step = step % t.eval_every == 0 or is_last
        is_save_step = step % t.checkpoint_every == 0
        if is_log_step or is_eval_step or is_save_step or self.stop_signal is not None:
            self.guard.read(step)
        if is_log_step:
            self._log()
        elif self.display.is_terminal:
            self.display.update(step, None, is_log_step=False)  # the last status stays
        is_best = stop = False
        if is_eval_step:
            is_best, stop = self._validate()
        if is_best or is_save_step or is_last or stop:
            self._save(is_best)
        if stop:
            self.display.message(
                f"step {step}: no better validation loss in {t.patience} evaluations; "
                "stopped early (train.patience)"
            )
        return stop

    def _stop_on_signal(self) -> None:
        self._save(is_best=False)
        name = signal.Signals(self.stop_signal).name  # type: ignore[arg-type]
        raise TrainingStopped(
            f"{name} at step {self.step}: checkpoint saved; continue with "
            f"`charlm train --out {self.run_dir} --resume`",
            exit_code=SIGNAL_EXIT_CODES[self.stop_signal],  # type: ignore[index]
        )

    # -- log, validate, save -----------------------------------------------------------------

    def _log(self) -> None:
        mean_loss, clipped = self.tally.interval()
        rate, grad_norm = self.throughput.read(), self.tally.last_grad_norm
        record = train_record(
            self.step,
            self.cursor.epoch,
            mean_loss,
            self.lr,
            grad_norm,
            clipped,
            self.tally.bad_steps,
            rate,
            self.budget.elapsed,
            self.threads.threads,
            self.tokens,
        )
        record.update(self.budget.record())
        warning = self.explosion.check(self.step, mean_loss)
        if warning:
            record["warning"] = warning
            self.display.message(warning)
        self.metrics.write(record)
        change = self.threads.check()
        if change is not None:
            self.display.message(f"cpu: {change.threads} thread(s): {change.reason}")
        hint = self.threads.busy_hint()
        if hint is not None:
            self.display.message(hint)
        status = status_line(mean_loss, rate, grad_norm, clipped)
        self.display.update(self.step, status, is_log_step=True)

    def _validate(self) -> tuple[bool, bool]:
        """Score the validation split and let the policy decide; returns (is best, stop)."""
        with self.averager.applied():  # NT-ASGD: score the averaged weights
            nll, predicted, task_fields = self._score_validation()
        # Bits per character uses the split's tokens-per-character ratio, which also holds for
        # the prefix that eval_batches scores.
        meta = self.data.meta
        val = self.last_val = make_result(nll, predicted, meta["val_tokens"], meta["val_chars"])
        verdict = self.policy.observe(val.loss, self.averager.is_active)
        if verdict.start_averaging:
            self.averager.start()
            self.display.message(f"step {self.step}: validation stalled; averaging weights")
        elapsed = self.budget.now()
        record = val_record(
            self.step,
            val.loss,
            val.perplexity,
            val.bits_per_char,
            self.layer_norms,
            elapsed,
            self.tokens,
        )
        advance = self.tasks.observe(task_fields, val.loss, verdict.is_best)
        self.metrics.write({**record, **self._task_record(predicted, task_fields, advance)})
        self.display.message(
            f"step {self.step}: val loss {val.loss:.4f}, perplexity {val.perplexity:.2f}, "
            f"{val.bits_per_char:.3f} bits/char"
            + (f", recall {task_fields['recall_loss']:.4f}" if "recall_loss" in task_fields else "")
            + ("  (best)" if advance.is_best else "")
        )
        if advance.new_stage is not None:  # the next stage's lines, from their start
            self.batcher = _make_batcher(self.config, self.data, self.dist, self.tasks)
            self.cursor = Cursor()
            self.display.message(f"step {self.step}: curriculum stage {advance.new_stage}")
        if self.config.train.sample_every_eval and self.dist.is_main:
            self._sample()
        return advance.is_best, verdict.stop

    def _score_validation(self) -> tuple[float, int, dict[str, Any]]:
        """The split's summed loss and scored targets (masked: the scored ones only), and the
        task metrics per mask group (tasks/curriculum.py; {} without a mask)."""
        special = {**self.data.meta.get("special_ids", {}), "newline": _newline_id(self.data)}

        def evaluate(ids: np.ndarray, **options: Any) -> tuple[float, int]:
            return _evaluate_split(
                self.model, ids, self.config, self.dist, self.device, special, **options
            )

        nll, predicted = evaluate(self.data.val_ids, mask=self.data.val_mask)
        return nll, predicted, self.tasks.evaluate(self.data.val_ids, self.data.val_mask, evaluate)

    def _task_record(self, predicted: int, fields: dict[str, Any], advance: Any) -> dict[str, Any]:
        """The validation record's mask and task fields (README, "Synthetic tasks")."""
        if self.data.val_mask is None:
            return {}
        extra = {"scored_tokens": predicted, **fields}
        if advance.new_stage is not None:
            extra["advanced_to"] = advance.new_stage
        return extra

    def _sample(self) -> None:
        """A short sample of the weights just scored (sample_at_eval.py: training's generators are
        not touched), printed and logged."""
        t = self.config.train
        with self.averager.applied():
            sample = draw_sample(
                self.model,
                self.tokenizer,
                self.data.meta["level"],
                step=self.step,
                length=t.sample_length,
                temperature=t.sample_temperature,
                train_seed=t.seed,
            )
        self.metrics.write(sample.record())
        self.display.sample(self.step, sample.shown)

    def _save(self, is_best: bool) -> None:
        """Every process takes part: rank 0 saves the carried state of all streams and each
        process's torch generator, so that a resume on another number of processes re-shards."""
        if not all_finite(self.model, self.optimizer):  # never saved as progress (README)
            raise TrainingStopped(
                f"step {self.step}: the weights are no longer finite, so they were not saved; "
                + recovery_hint(self.run_dir, self.config.optim.lr)
            )
        dist = self.dist
        carried = gather_state(dist, self.state) if self.batcher.carries_state else self.state
        ranks = rank_rng(dist, self.device)
        if not dist.is_main:
            # Wait for the save: a rank that exits first makes torchrun stop rank 0 mid-write.
            dist.barrier()
            return
        rng_info, rng_tensors = rng_snapshot()
        tensors = {**state_tensors(carried), **rng_tensors, **ranks}
        # Averaging: model.safetensors gets the mean (what sample and evaluate load), the raw
        # weights go beside it for resume.
        raw = self.averager.raw_weights() if self.averager.is_active else None
        with self.averager.applied():
            save_checkpoint(
                self.run_dir,
                self.model,
                self.optimizer,
                self.config,
                self.tokenizer_json,
                self.data.meta,
                TrainingState(self._run_state(rng_info), tensors),
                is_best=is_best,
                keep=self.config.train.keep_checkpoints,
                raw_weights=raw,
                tokenizer_files=self.tokenizer_files,
            )
        dist.barrier()

    def _run_state(self, rng: dict[str, Any]) -> RunState:
        return RunState(
            step=self.step,
            epoch=self.cursor.epoch,
            position=self.cursor.position,
            last_val_loss=self.last_val.loss if self.last_val else None,
            bad_steps=self.tally.bad_steps,
            clipped_steps=self.tally.clipped_steps,
            averaged_steps=self.averager.count,
            rng=rng,
            world_size=self.dist.world_size,
            global_batch=self.global_batch,
            data_dir=str(self.data.data_dir.resolve()),
            parameters=self.params,
            elapsed_s=self.budget.elapsed,
            tokens=self.tokens,
            threads=self.threads.threads if self.device.type == "cpu" else None,
            **self.policy.state_dict(),
            **self.tasks.state_dict(),
        )


def _thread_governor(
    config: RunConfig,
    vocab_size: int,
    local_batch: int,
    dist: DistContext,
    device: torch.device,
    meter: LoadMeter,
    recorded: int | None = None,
) -> ThreadGovernor:
    """train.threads on a CPU (charlm/system/threads.py); processes of one machine share its cores.
    `recorded`: the count a resumed checkpoint trained with, kept unless the user chose one."""
    m = config.model
    gates = CELLS[m.cell].gates
    macs = step_macs(gates, m.layers, m.hidden_size, m.embedding_dim, vocab_size, local_batch)
    if device.type != "cpu":
        macs = 0  # the host only launches work: one thread
    requested = config.train.threads
    if dist.is_distributed and not requested:  # torchrun: a fixed share of the cores each
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
        requested = max(1, torch.get_num_threads() // max(1, local))
    return ThreadGovernor(
        requested, macs, set_threads, torch.get_num_threads(), meter,
        adapt=config.train.adapt_threads, recorded=recorded if device.type == "cpu" else None,
    )  # fmt: skip


def _policy_fields(saved: RunState) -> dict[str, Any]:
    best = saved.best_val_loss
    return {
        # A version that let NaN be "best" may have saved one: it is no best at all.
        "best_val_loss": best if best is not None and math.isfinite(best) else None,
        "evals_since_best": saved.evals_since_best,
        "val_history": saved.val_history,
        "plateau_scale": saved.plateau_scale,
        "plateau_bad_evals": saved.plateau_bad_evals,
    }


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


def _clear_run(run_dir: Path) -> None:
    """--force: remove what a previous run wrote (checkpoints, metrics, config, TensorBoard
    events, the W&B run's id: a new W&B run starts), keep data/ and W&B's own files (wandb/: an
    offline run there may not be synced yet)."""
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    shutil.rmtree(run_dir / TENSORBOARD, ignore_errors=True)
    for name in (METRICS, CONFIG, WANDB_RUN):
        (run_dir / name).unlink(missing_ok=True)


def _load_data(
    dist: DistContext, loaded: LoadedCheckpoint | None, plan: DataPlan, show: bool
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


def _newline_id(data: PreparedData) -> int | None:
    return data.tokenizer.token_to_id("\n") if data.meta["level"] == "char" else None


def _make_batcher(
    config: RunConfig, data: PreparedData, dist: DistContext, tasks: TaskRun
) -> Batcher:
    """Training's batcher (data/batching.py's one choice): the curriculum stage's span of the
    ids, shuffled by the run's seed (lines: and by the stage)."""
    t = config.train
    span = tasks.train_span(data.train_mask, data.train_ids)  # the curriculum's stage
    ids = data.train_ids[span]
    mask = None if data.train_mask is None else data.train_mask[span]
    special = {**data.meta.get("special_ids", {}), "newline": _newline_id(data)}
    seed: int | tuple[int, ...] = t.seed
    if config.data.batching == "lines":
        if special["newline"] is None:
            raise UsageError("data.batching=lines: the training text has no line break")
        seed = (t.seed, tasks.stage)  # each stage its own shuffle
    elif config.data.batching == "sentence":
        ids, mask = data.train_ids, None
    return make_batcher(
        config.data.batching, ids, t.batch_size * t.grad_accum, t.seq_len, special,
        rank=dist.rank, world_size=dist.world_size, mask=mask, seed=seed,
    )  # fmt: skip


def _evaluate_split(
    model: RNNLanguageModel,
    ids: np.ndarray,
    config: RunConfig,
    dist: DistContext,
    device: torch.device,
    special: dict,
    **options: Any,
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
            **options,
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
