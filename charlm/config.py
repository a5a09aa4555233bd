"""Typed run settings: defaults, YAML files, `--set` overrides, validation and saving."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NewType, get_args, get_origin

import yaml

from charlm.errors import ConfigError

# Seconds, given as a number or as a duration: 90s, 10m, 2h, 1h30m (`parse_duration`).
Duration = NewType("Duration", float)


@dataclass(frozen=True)
class DataConfig:
    # Tokenisation level: one entry each in data/tokenizer.py LEVELS (tests/test_registries.py).
    level: Literal["char", "word", "bpe"] = "char"
    vocab_size: int = 8000  # word/bpe: entries kept, counting the special tokens; char ignores it
    # (word: 0 keeps every word of the training text)
    val_fraction: float = 0.05  # last fraction of the text held out for validation
    # The column holding the text of a .csv input. One rule for `charlm train` and `charlm
    # prepare`: a CSV needs its column named (e.g. body for the Reddit comments); other inputs
    # ignore it. (Until this release train read `body` unasked while prepare refused.)
    csv_column: str | None = None
    # sentence: the tutorial's padded sentences; lines (char level): one example per line, each
    # from a zero state, padded and masked like sentences (synthetic tasks, README); each one of
    # data/batching.py BATCHINGS, built in make_batcher
    batching: Literal["stream", "sentence", "lines"] = "stream"
    # Word level; the defaults are the WildML tutorial's, false/lines/whitespace pytorch/examples'
    # word_language_model (WikiText-2 perplexities comparable with published ones).
    lowercase: bool = True
    segments: Literal["sentences", "lines"] = "sentences"  # lines: every line ends in <eos>
    word_split: Literal["rules", "whitespace"] = "rules"  # whitespace: str.split(), as given
    # segments=sentences: where a sentence ends, one of data/tokenizer.py SENTENCE_SPLITS. pysbd
    # (the pysbd package) reads titles, initials, times and quotes as a reader does; rules (what
    # runs and data made before this setting used) breaks after every . ! ? but 15 abbreviations,
    # about 100x faster (docs/results.md, "Sentence splitting"). The tokenizer records it.
    sentence_split: Literal["pysbd", "rules"] = "pysbd"

    def validate(self) -> list[str]:
        problems = []
        if self.vocab_size < 4 and not (self.vocab_size == 0 and self.level == "word"):
            problems.append(
                f"data.vocab_size must be at least 4, or 0 at word level (got {self.vocab_size})"
            )
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"data.val_fraction must be in (0, 1) (got {self.val_fraction})")
        if self.batching == "sentence" and self.level != "word":
            problems.append("data.batching=sentence needs data.level=word (sentences are words)")
        if self.batching == "lines" and self.level != "char":
            problems.append(
                "data.batching=lines needs data.level=char (word level: data.batching=sentence)"
            )
        if self.batching == "sentence" and self.segments == "lines":
            problems.append(
                "data.batching=sentence needs data.segments=sentences (lines have no start "
                "token); use data.batching=stream"
            )
        return problems


_DROPOUTS = (
    "embedding_dropout",
    "input_dropout",
    "hidden_dropout",
    "output_dropout",
    "weight_drop",
)


@dataclass(frozen=True)
class ModelConfig:
    # rnn: a plain RNN (tanh, or relu: model.nonlinearity), for comparison; lstm-peephole: gates
    # also read the cell state (Gers & Schmidhuber 2000); gru-tutorial: the WildML tutorial's Theano GRU exactly (hard sigmoid
    # gates, reset before the recurrent matrix). The last two have no fused kernel (unrolled,
    # slower: docs/benchmarks.md). The cells themselves live in model/cells.py CELLS.
    cell: Literal["gru", "lstm", "rnn", "lstm-peephole", "gru-tutorial"] = "gru"
    # How the weights start (docs/benchmarks.md, "Initialisation"). pytorch: each module's own
    # PyTorch default (embedding N(0, 1); decoder, its bias and the recurrent layers
    # U(+-1/sqrt(H))); charlm: charlm 0.1's embedding U(+-0.1), decoder U(+-1/sqrt(H)) and zero
    # bias, which learned slower; uniform: every weight and bias U(+-init_range) (Zaremba et al.).
    init: Literal["pytorch", "charlm", "uniform"] = "pytorch"
    init_range: float = 0.1  # init=uniform: the bound (Zaremba et al.: 0.1 small, 0.05 medium)
    layers: int = 2
    hidden_size: int = 128
    embedding_dim: int = 48
    dropout: float = 0.0  # between layers and before the decoder
    # Share embedding and decoder weights; with embedding_dim != hidden_size the last layer's
    # output goes through a learned projection to embedding_dim first.
    tie_weights: bool = False
    # LSTM forget-gate bias at initialisation. 1 (Jozefowicz et al. 2015) helps long memories
    # but learned language slower than 0 at every budget measured (docs/benchmarks.md).
    forget_bias: float = 0.0
    recurrent_init: Literal["default", "orthogonal", "identity"] = "default"  # identity: IRNN
    # recurrent_init=identity/orthogonal: each W_hh block starts at this times I (or Q); 1 is
    # Le et al.'s IRNN, below 1 a contracting start (docs/cells.md measures what it changes)
    recurrent_gain: float = 1.0
    leak: float = 0.0  # plain RNN only: h = leak * h_prev + (1 - leak) * tanh(...)
    # cell=rnn only: relu with recurrent_init=identity is Le et al. (2015)'s IRNN
    nonlinearity: Literal["tanh", "relu"] = "tanh"
    # Decoder bias at initialisation: this times the log unigram frequencies of the training ids
    # (add-one smoothed). 0: zero bias, a uniform first guess (the tutorial); 1: the unigram
    # model; 0.5: its square root, which starts ahead without the full prior's overconfidence in
    # rare words (docs/benchmarks.md, "Time to quality").
    unigram_bias: float = 0.0
    # AWD-LSTM's regularisers (Merity et al. 2017); its WikiText-2 values in brackets.
    embedding_dropout: float = 0.0  # drop whole words from the embedding [0.1]
    input_dropout: float = 0.0  # locked (same mask every step) dropout on the embedding [0.65]
    hidden_dropout: float = 0.0  # locked dropout between layers [0.2]
    output_dropout: float = 0.0  # locked dropout on the last layer's output [0.4]
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden weights [0.5]

    def validate(self) -> list[str]:
        problems = []
        for name in ("layers", "hidden_size", "embedding_dim"):
            if getattr(self, name) < 1:
                problems.append(f"model.{name} must be at least 1 (got {getattr(self, name)})")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"model.dropout must be in [0, 1) (got {self.dropout})")
        if not 0.0 <= self.unigram_bias <= 1.0:
            problems.append(f"model.unigram_bias must be in [0, 1] (got {self.unigram_bias})")
        if not 0.0 <= self.leak < 1.0:
            problems.append(f"model.leak must be in [0, 1) (got {self.leak})")
        if not 0.0 < self.recurrent_gain <= 10.0:
            problems.append(f"model.recurrent_gain must be in (0, 10] (got {self.recurrent_gain})")
        if self.recurrent_gain != 1.0 and self.recurrent_init == "default":
            problems.append(
                "model.recurrent_gain scales recurrent_init=identity or orthogonal; set one of "
                "them or drop the gain"
            )
        if not 0.0 < self.init_range <= 1.0:
            problems.append(f"model.init_range must be in (0, 1] (got {self.init_range})")
        for name in _DROPOUTS:
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"model.{name} must be in [0, 1) (got {getattr(self, name)})")
        if self.leak > 0 and (self.weight_drop or self.hidden_dropout):
            problems.append(
                "model.weight_drop and model.hidden_dropout need the fused kernels: "
                "set them to 0 with model.leak"
            )
        if self.nonlinearity != "tanh" and self.cell != "rnn":
            problems.append(
                f"model.nonlinearity={self.nonlinearity} applies to model.cell=rnn only "
                f"(got cell={self.cell}); drop it or use --set model.cell=rnn"
            )
        if self.leak > 0 and self.cell != "rnn":
            problems.append(
                "model.leak applies to model.cell=rnn only (gated cells leak by design)"
            )
        return problems


@dataclass(frozen=True)
class OptimConfig:
    # asgd: AWD-LSTM's NT-ASGD: plain SGD, then the running mean of the weights (used for
    # evaluation and sampling) once validation has not improved for `nonmono` evaluations.
    # sgd: plain (or momentum / Nesterov) SGD, pytorch/examples' and Zaremba et al.'s recipes.
    # Each one an entry of training/optimizers.py OPTIMIZERS (tests/test_registries.py).
    name: Literal["rmsprop", "adam", "adamw", "asgd", "sgd"] = "rmsprop"
    lr: float = 1e-3
    momentum: float = 0.0  # name=sgd: heavy-ball momentum (0 = plain SGD)
    nesterov: bool = False  # name=sgd: Nesterov's momentum (needs momentum > 0)
    alpha: float = 0.9  # RMSProp decay of the squared-gradient average (the tutorial's 0.9)
    eps: float = 1e-6
    weight_decay: float = 0.0
    clip_norm: float = 5.0  # clip the global gradient norm to this (0 = off)
    clip_value: float = 0.0  # clip each gradient element to [-v, v] (0 = off)
    # cosine: to lr/10 over max_steps (or train.max_time, whichever is further along); decay: char-rnn's, times decay_rate after each epoch from
    # decay_after_epochs on; plateau: times decay_rate after plateau_patience evaluations
    # without a new best validation loss.
    schedule: Literal["constant", "cosine", "decay", "plateau"] = "constant"
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    decay_rate: float = 0.97  # schedule=decay/plateau: the factor (char-rnn's 0.97; plateau: 0.5)
    decay_after_epochs: float = 10.0  # schedule=decay: first decay at the end of this epoch
    plateau_patience: int = 1  # schedule=plateau: evaluations without improvement before a cut
    nonmono: int = 5  # name=asgd: start averaging after this many evaluations without a best

    def validate(self) -> list[str]:
        problems = []
        if self.lr <= 0:
            problems.append(f"optim.lr must be positive (got {self.lr})")
        if not 0.0 <= self.alpha < 1.0:
            problems.append(f"optim.alpha must be in [0, 1) (got {self.alpha})")
        if not 0.0 <= self.momentum < 1.0:
            problems.append(f"optim.momentum must be in [0, 1) (got {self.momentum})")
        if self.momentum and self.name != "sgd":
            problems.append(
                f"optim.momentum applies to optim.name=sgd (got name={self.name}); "
                "drop it or use --set optim.name=sgd"
            )
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            problems.append("optim.nesterov needs optim.name=sgd and optim.momentum > 0")
        if self.eps <= 0:
            problems.append(f"optim.eps must be positive (got {self.eps})")
        for name in ("weight_decay", "clip_norm", "clip_value", "warmup_steps"):
            if getattr(self, name) < 0:
                problems.append(f"optim.{name} must not be negative (got {getattr(self, name)})")
        if not 0.0 < self.decay_rate <= 1.0:
            problems.append(f"optim.decay_rate must be in (0, 1] (got {self.decay_rate})")
        if self.decay_after_epochs < 0:
            problems.append(
                f"optim.decay_after_epochs must not be negative (got {self.decay_after_epochs})"
            )
        for name in ("plateau_patience", "nonmono"):
            if getattr(self, name) < 1:
                problems.append(f"optim.{name} must be at least 1 (got {getattr(self, name)})")
        return problems


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32  # parallel streams (or sentences) per process
    seq_len: int = 64  # truncated back-propagation window, in tokens
    max_steps: int = 2000  # stop after this many optimiser steps (0 = no limit; use epochs)
    epochs: float = 0.0  # stop after this many passes over the training data (0 = no limit)
    # Stop after this much training time (seconds, or 90s / 10m / 2h / 1h30m; 0 = no limit),
    # counted across resumes; the cosine schedule then follows the time (training/budget.py).
    # With max_steps or epochs too, whichever comes first; given without max_steps, max_steps
    # is 0 (the time alone ends the run).
    max_time: Duration = Duration(0.0)
    eval_every: int = 200  # validate every N steps (and always at the end)
    eval_batches: int = 0  # validation windows per evaluation (0 = the whole split)
    checkpoint_every: int = 500  # save a checkpoint every N steps (and at the end)
    keep_checkpoints: int = 3  # step checkpoints kept, besides the best
    log_every: int = 10  # a metrics record (and a plain progress line off a terminal) every N steps
    max_bad_steps: int = 10  # stop after this many non-finite steps in a row
    seed: int = 1
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # CPU intra-op threads. 0: charlm's choice, fixed for the run from the model's size and the
    # cores (every core, or one for small steps) and kept on resume (charlm/system/threads.py)
    threads: int = 0
    # true: follow the machine's load (one thread while other programs keep a core busy).
    # Faster on a shared machine, but the last bits of the weights then depend on the load.
    adapt_threads: bool = False
    # bf16: autocast on CUDA, or on a CPU with native bf16 (AMX-BF16/AVX512-BF16, ARM BF16;
    # refused on others); weights, optimiser, state and checkpoints stay fp32. A CPU run's
    # header says where bf16 was measured slower (training/precision.py, docs/benchmarks.md)
    precision: Literal["fp32", "bf16"] = "fp32"
    # torch.compile the training forward (the model as evaluated and saved stays eager). On a
    # 2-core CPU it gained nothing after seconds of compiling; on a GPU unmeasured (figures:
    # docs/benchmarks.md, "Training options for speed").
    compile: bool = False
    # How a non-finite step is skipped. host: the loss and gradient norm are read back every
    # step (the only choice under torchrun, where processes agree every step). device: decided
    # and undone on the device, read back only at logging, evaluation and checkpoint steps (for
    # GPUs; same weights as host; NT-ASGD and the first step use host).
    step_guard: Literal["host", "device"] = "host"
    grad_accum: int = 1  # micro-batches per optimiser step; global batch: x it x processes
    dist_timeout_s: float = 600.0  # torchrun jobs: end with an error if a rank is silent this long
    ar_alpha: float = 0.0  # activation regularisation of the last layer's output (AWD-LSTM: 2)
    tar_beta: float = 0.0  # temporal activation regularisation (AWD-LSTM: 1)
    variable_bptt: bool = False  # AWD-LSTM's random window: seq_len (p=0.95) or half, then N(., 5)
    patience: int = 0  # stop after this many evaluations without a new best (0 = never)
    # Synthetic tasks with a mask (README, "Synthetic tasks"). best_by: the metric that picks
    # the best checkpoint (recall_*: at the task positions of the target group; loss lowest,
    # accuracy highest). curriculum_metric: off, or the metric of the current stage's
    # validation lines that, once it passes curriculum_threshold (accuracy >=, loss <=), moves
    # training on to the next stage of a staged task (`charlm data synth lag --lags ...`).
    best_by: Literal["val_loss", "recall_loss", "recall_accuracy"] = "val_loss"
    curriculum_metric: Literal["off", "recall_accuracy", "recall_loss"] = "off"
    curriculum_threshold: float = 0.95
    # At each evaluation, print and log (metrics.jsonl kind "sample") sample_length tokens drawn
    # at sample_temperature from a generator of its own: the weights trained are the same with
    # it off (training/sample_at_eval.py). On by default: 200 characters took ~50 ms for the default 2x128
    # GRU here, 0.22 s for 2x512 (scripts/eval_sample_cost.py; README, "Watching a run").
    sample_every_eval: bool = True
    sample_length: int = 200
    sample_temperature: float = 1.0
    # Also write the metrics as TensorBoard event files in RUN_DIR/tensorboard (the
    # `tensorboard` extra: pip install 'charlm-rnn[tensorboard]').
    tensorboard: bool = False
    # Also log the same scalars and the settings to Weights & Biases (the `wandb` extra: pip
    # install 'charlm-rnn[wandb]'; README, "Weights & Biases"), to wandb_project, the W&B run
    # named wandb_name ("": the run directory's name). The W&B run's id is kept in
    # RUN_DIR/wandb.json, so a resume continues the same W&B run. Off: wandb is never imported.
    wandb: bool = False
    wandb_project: str = "charlm"
    wandb_name: str = ""

    def validate(self) -> list[str]:
        problems = []
        for name in ("batch_size", "seq_len", "eval_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"train.{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("max_steps", "eval_batches", "threads"):
            if getattr(self, name) < 0:
                problems.append(f"train.{name} must not be negative (got {getattr(self, name)})")
        for name in ("epochs", "max_time"):
            if getattr(self, name) < 0:
                problems.append(f"train.{name} must not be negative (got {getattr(self, name)})")
        if self.max_steps == 0 and self.epochs == 0 and self.max_time == 0:
            problems.append(
                "set train.max_steps or train.epochs, or a time with train.max_time (all are 0: "
                "training would not end)"
            )
        if self.keep_checkpoints < 1:
            problems.append(
                f"train.keep_checkpoints must be at least 1 (got {self.keep_checkpoints})"
            )
        if self.max_bad_steps < 1:
            problems.append(f"train.max_bad_steps must be at least 1 (got {self.max_bad_steps})")
        if self.grad_accum < 1:
            problems.append(f"train.grad_accum must be at least 1 (got {self.grad_accum})")
        if self.dist_timeout_s <= 0:
            problems.append(f"train.dist_timeout_s must be positive (got {self.dist_timeout_s})")
        if self.sample_length < 1:
            problems.append(f"train.sample_length must be at least 1 (got {self.sample_length})")
        if self.sample_temperature < 0:
            problems.append(
                f"train.sample_temperature must be 0 (greedy) or positive "
                f"(got {self.sample_temperature})"
            )
        for name in ("ar_alpha", "tar_beta", "patience"):
            if getattr(self, name) < 0:
                problems.append(f"train.{name} must not be negative (got {getattr(self, name)})")
        if self.curriculum_metric != "off" and self.epochs:
            problems.append(
                "train.epochs counts passes over one stage's data with a curriculum; "
                "set train.max_steps instead (and train.epochs=0)"
            )
        if not self.wandb_project.strip() or any(c in self.wandb_project for c in "/\\#?%:"):
            problems.append(
                f"train.wandb_project must be a W&B project name, not empty and without "
                f"/ \\ # ? % : (got '{self.wandb_project}')"
            )
        return problems


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> list[str]:
        problems = _non_finite(self)
        problems += [p for section in fields(self) for p in getattr(self, section.name).validate()]
        if not 0 <= self.train.seed <= SEED_MAX:
            problems.append(f"train.seed must be in 0..{SEED_MAX} (got {self.train.seed})")
        if self.train.variable_bptt and self.data.batching != "stream":
            problems.append(
                "train.variable_bptt applies to stream batching (sentences and lines set their "
                "own length)"
            )
        return problems


SEED_MAX = 2**63 - 1  # torch.manual_seed takes 64-bit seeds; beyond that it overflows
FLOAT32_MAX = 3.4028234663852886e38  # the largest float32: weights and rates are float32


def _non_finite(config: RunConfig) -> list[str]:
    """Every number setting must be finite and fit in float32: nan, inf or 1e39 as a rate or a
    factor turns the weights into NaN at the first step (and `lr <= 0` alone lets nan pass)."""
    problems = []
    for section in fields(config):
        values = getattr(config, section.name)
        for f in fields(values):
            value = getattr(values, f.name)
            if isinstance(value, float) and not (
                math.isfinite(value) and abs(value) <= FLOAT32_MAX
            ):
                problems.append(
                    f"{section.name}.{f.name} must be a finite number within float32's range "
                    f"(got {value}); the default is {getattr(type(values)(), f.name)}"
                )
    return problems


# Settings that may differ when a run is resumed; anything else changes the model or the data.
RESUME_SAFE_KEYS = frozenset(
    {
        "train.max_steps",
        "train.epochs",
        "train.max_time",
        "train.eval_every",
        "train.eval_batches",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.log_every",
        "train.max_bad_steps",
        "train.device",
        "train.threads",
        "train.adapt_threads",
        "train.precision",
        "train.compile",
        "train.step_guard",
        # batch_size and grad_accum may change together with the number of processes as long
        # as the global batch stays the same (training/resume.py checks; the stream layout is then equal).
        "train.batch_size",
        "train.grad_accum",
        "train.dist_timeout_s",
        "optim.lr",
        "optim.schedule",
        "optim.warmup_steps",
        "optim.clip_norm",
        "optim.clip_value",
        "optim.decay_rate",
        "optim.decay_after_epochs",
        "optim.plateau_patience",
        "optim.nonmono",
        "train.patience",
        "train.sample_every_eval",
        "train.sample_length",
        "train.sample_temperature",
        "train.tensorboard",
        "train.wandb",
        "train.wandb_project",
        "train.wandb_name",
    }
)

_SECTION_CLASSES = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


def all_keys() -> list[str]:
    """Every dotted setting name, in declaration order."""
    return [f"{s}.{f.name}" for s, cls in _SECTION_CLASSES.items() for f in fields(cls)]


def setting_choices(key: str) -> tuple[str, ...]:
    """The values a fixed-choice setting takes ("data.level" -> ("char", "word", "bpe")), read
    from its `Literal`: the one list, for the command line's choices and every check."""
    section, _, name = key.partition(".")
    annotation = typing.get_type_hints(_SECTION_CLASSES[section])[name]
    if get_origin(annotation) is not Literal:
        raise TypeError(f"{key} is not a fixed-choice setting")
    return get_args(annotation)


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert a YAML or command-line value to the annotated type, or raise naming the key.

    YAML guesses types (`1e-3` is a string, `off` a boolean), so the annotation decides.
    """
    origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            names = ", ".join(str(c) for c in choices)
            raise ConfigError(f"{key}: '{value}' is not one of {names}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key}: expected true or false, got '{value}'")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got '{value}'")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got '{value}'")
    if annotation is Duration:
        return parse_duration(key, value)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got '{value}'")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got '{value}'")
    if annotation is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got '{value}'")
        return str(value)
    raise ConfigError(f"{key}: unsupported setting type {annotation}")


_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s)?")


def parse_duration(key: str, value: Any) -> float:
    """Seconds from a number (600) or a duration string ("90s", "10m", "2h", "1h30m")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower().replace(" ", "") if isinstance(value, str) else ""
    match = _DURATION.fullmatch(text)
    if text and match and any(match.groups()):
        hours, minutes, seconds = (float(part or 0) for part in match.groups())
        return hours * 3600 + minutes * 60 + seconds
    try:
        return float(text)
    except ValueError:
        raise ConfigError(
            f"{key}: expected seconds (600) or a duration: 90s, 10m, 2h or 1h30m; got '{value}'"
        ) from None


def _merge(
    base: dict[str, dict[str, Any]],
    raw: Any,
    origin: str,
    problems: list[str],
    named: set[tuple[str, str]] | None = None,
) -> None:
    """Lay the mapping `raw` over `base`, recording unknown keys and bad values in `problems`
    and each setting it names in `named`."""
    if raw is None:
        return
    if not isinstance(raw, dict):
        problems.append(f"{origin}: expected a mapping of sections (data, model, optim, train)")
        return
    for section, values in raw.items():
        if section not in _SECTION_CLASSES:
            problems.append(
                f"{origin}: unknown section '{section}'{_suggest(str(section), list(_SECTION_CLASSES))}"
            )
            continue
        if values is None:
            continue
        if not isinstance(values, dict):
            problems.append(f"{origin}: section '{section}' must be a mapping of settings")
            continue
        hints = typing.get_type_hints(_SECTION_CLASSES[section])
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if key not in hints:
                problems.append(
                    f"{origin}: unknown setting '{dotted}'{_suggest(dotted, all_keys())}"
                )
                continue
            if named is not None:
                named.add((section, key))
            try:
                base[section][key] = _coerce(dotted, value, hints[key])
            except ConfigError as exc:
                problems.append(f"{origin}: {exc}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses repeated keys instead of keeping the last silently."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"repeated key '{key}'", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


CONFIG_MAX_BYTES = 1_000_000  # a config is settings, not data: reading stops past this


def read_yaml(path: Path) -> Any:
    """Parse a YAML file safely; errors name the file and line. At most CONFIG_MAX_BYTES are
    read, so an endless input (`--config /dev/zero`, a pipe that never ends) is refused."""
    try:
        with open(path, "rb") as file:
            data = file.read(CONFIG_MAX_BYTES + 1)
        if len(data) > CONFIG_MAX_BYTES:
            raise ConfigError(
                f"{path}: longer than {CONFIG_MAX_BYTES:,} bytes, the most a config file may "
                "be; give a config file of settings"
            )
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: malformed YAML ({problem})") from None


def shipped_configs() -> dict[str, Path]:
    """The configs that come with charlm, by name (`tutorial-gru`): the wheel carries them as
    charlm/configs/; a checkout (or an editable install) has them in its top-level configs/."""
    package = Path(__file__).resolve().parent
    folders = [package / "configs"]
    if (package.parent / "pyproject.toml").is_file():
        folders.append(package.parent / "configs")
    for folder in folders:
        if folder.is_dir():
            return {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    return {}


def describe_config(path: Path) -> str:
    """A config file's opening comment line (each shipped config starts with what it is)."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            return line.lstrip("# ").strip() if line.lstrip().startswith("#") else ""
    return ""


def resolve_config_file(path: Path) -> Path:
    """`--config` as given when that file exists; else a shipped config named by its bare name
    (`tutorial-gru` or `tutorial-gru.yaml`) or by the checkout path the docs use
    (`configs/tutorial-gru.yaml`, which so works from any folder once charlm is installed)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    parts = path.parts
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "configs"):
        name = parts[-1].removesuffix(".yaml")
        shipped = shipped_configs()
        if name in shipped:
            return shipped[name]
    return path


def _missing_config(path: Path) -> ConfigError:
    names = ", ".join(shipped_configs()) or "none found"
    return ConfigError(
        f"{path}: config file not found; give a YAML file's path or a shipped config's name "
        f"({names}: charlm config list)"
    )


def parse_override(item: str) -> tuple[str, Any]:
    """Split `dotted.key=value`, parsing the value as a YAML scalar."""
    if "=" not in item:
        raise ConfigError(f"--set '{item}': expected key=value, e.g. --set train.seed=7")
    key, _, text = item.partition("=")
    key = key.strip()
    if key.count(".") != 1:
        raise ConfigError(
            f"--set '{item}': the key must be section.name, e.g. model.hidden_size{_suggest(key, all_keys())}"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def build_config(
    base: dict[str, Any] | None = None,
    config_file: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunConfig:
    """Defaults, then `base` (a saved run's config), then the YAML file, then each override.

    Every problem is collected and reported together, one per line.
    """
    merged: dict[str, dict[str, Any]] = {
        name: dataclasses.asdict(cls()) for name, cls in _SECTION_CLASSES.items()
    }
    merged["train"]["max_steps"] = _UNSET  # whether it is given decides its default (below)
    problems: list[str] = []
    named: set[tuple[str, str]] = set()
    if base is not None:
        _merge(merged, _with_saved_defaults(base), "saved config", problems, named)
    if config_file is not None:
        path = resolve_config_file(config_file)
        if not path.exists():
            raise _missing_config(config_file)
        _merge(merged, read_yaml(path), str(config_file), problems, named)
    for item in overrides:
        try:
            key, value = parse_override(item)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        section, name = key.split(".", 1)
        _merge(merged, {section: {name: value}}, "--set", problems, named)
    _default_max_steps(merged["train"])
    _apply_level_defaults(merged, named)
    # Values that failed to parse were never merged, so the rest can still be checked: every
    # problem is reported in one go.
    config = RunConfig(**{name: cls(**merged[name]) for name, cls in _SECTION_CLASSES.items()})
    problems += config.validate()
    if problems:
        raise ConfigError("\n".join(problems))
    return config


_UNSET = object()


def _default_max_steps(train: dict[str, Any]) -> None:
    """train.max_steps given nowhere (defaults, saved config, file, --set): 2000, or 0 (no step
    limit) with train.max_time, so that `--set train.max_time=10m` alone trains ten minutes."""
    if train["max_steps"] is _UNSET:
        train["max_steps"] = 0 if train["max_time"] else TrainConfig.max_steps


# Defaults that depend on the level (and the optimiser they were measured with): a setting that
# no layer names (saved config, config file, --set) takes this value for that data.level and
# optim.name. A saved run names every setting, so resuming one written before a level default
# changed keeps what it used. word + rmsprop: lr 3e-3 learns faster than the tutorial's 1e-3 and
# beats pytorch/examples' SGD recipe at equal tokens (docs/results.md, "Word level: charlm's
# defaults against SGD").
LEVEL_DEFAULTS: dict[tuple[str, str], dict[tuple[str, str], Any]] = {
    ("word", "rmsprop"): {("optim", "lr"): 3e-3},
}


def level_defaults(level: str, optimizer: str) -> dict[str, Any]:
    """The defaults `level` with `optimizer` sets apart from the sections' own, by dotted key."""
    return {f"{s}.{k}": v for (s, k), v in LEVEL_DEFAULTS.get((level, optimizer), {}).items()}


def _apply_level_defaults(merged: dict[str, dict[str, Any]], named: set[tuple[str, str]]) -> None:
    case = (merged["data"]["level"], merged["optim"]["name"])
    for (section, key), value in LEVEL_DEFAULTS.get(case, {}).items():
        if (section, key) not in named:
            merged[section][key] = value


# Settings added after runs were first saved, with the value such a run actually used: a saved
# config without the key means the old behaviour, not today's default.
_SAVED_DEFAULTS = {
    ("model", "init"): "charlm",
    ("model", "nonlinearity"): "tanh",
    ("data", "sentence_split"): "rules",
}


def _with_saved_defaults(base: Any) -> Any:
    if not isinstance(base, dict):
        return base
    base = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for (section, key), value in _SAVED_DEFAULTS.items():
        if isinstance(base.get(section), dict) and key not in base[section]:
            base[section][key] = value
    return base


def config_to_dict(config: RunConfig) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(config)


def config_to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def config_changes(old: RunConfig, new: RunConfig) -> list[tuple[str, Any, Any]]:
    """The settings whose values differ, as (dotted key, old value, new value)."""
    a, b = config_to_dict(old), config_to_dict(new)
    return [
        (f"{section}.{key}", a[section][key], b[section][key])
        for section in a
        for key in a[section]
        if a[section][key] != b[section][key]
    ]


def config_differences(old: RunConfig, new: RunConfig) -> list[str]:
    """Dotted keys whose values differ, each as `key: old -> new`."""
    return [f"{key}: {a!r} -> {b!r}" for key, a, b in config_changes(old, new)]
