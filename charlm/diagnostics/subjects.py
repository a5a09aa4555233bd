"""The models a teaching figure compares: fresh cells by name, trained runs, a run's checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlm.config import RunConfig, build_config
from charlm.errors import DataError, UsageError
from charlm.model.cells import CELLS, cell_label
from charlm.model.network import RNNLanguageModel
from charlm.rundir.checkpoint import load_checkpoint, step_dirs
from charlm.rundir.names import CHECKPOINTS

# Fresh models by name besides the cells: the plain RNN's variants the long-range story needs.
PRESETS: dict[str, tuple[str, ...]] = {
    "irnn": ("model.cell=rnn", "model.nonlinearity=relu", "model.recurrent_init=identity"),
    "leaky-rnn": ("model.cell=rnn", "model.leak=0.9"),
}


@dataclass
class Subject:
    """One model to measure, with the text in its own vocabulary."""

    label: str  # for legends: the cell's name; a run's also its name (and the step: --checkpoints)
    model: RNNLanguageModel
    config: RunConfig
    ids: np.ndarray
    line_break: int | None  # the newline's id (char level), for windows from a line's start
    source: str
    step: int | None = None  # trained: the checkpoint's step
    model_seed: int | None = None  # fresh: train.seed, which drew the weights


def fresh_overrides(name: str) -> list[str]:
    """The --set overrides that make the fresh model `name` (a cell or a preset; "": the
    model as --config/--set make it)."""
    if not name:
        return []
    if name in PRESETS:
        return list(PRESETS[name])
    if name in CELLS:
        return [f"model.cell={name}"]
    known = ", ".join([*CELLS, *PRESETS])
    raise UsageError(f"--fresh: '{name}' is not a cell or preset (one of {known})")


def fresh_subjects(
    names: Sequence[str],
    config_file: Path | None,
    overrides: Sequence[str],
    text: str,
    device: str = "cpu",
) -> list[Subject]:
    """Freshly initialised models (seeded by train.seed, as training builds them), one per name;
    --config/--set apply to all, the name's cell settings on top."""
    import torch

    from charlm.data.tokenizer import Encoder, tokenizer_for

    configs = [
        build_config(config_file=config_file, overrides=[*overrides, *fresh_overrides(n)])
        for n in names
    ]  # every name checked before any model is built
    subjects = []
    for name, config in zip(names, configs, strict=True):
        d = config.data
        tokenizer = tokenizer_for(d, [text])  # data.sentence_split too, as training's
        encoder = Encoder(tokenizer, d.level)
        ids = encoder.encode(text)
        torch.manual_seed(config.train.seed)
        model = RNNLanguageModel(config.model, tokenizer.get_vocab_size())
        if config.model.unigram_bias:
            model.init_output_bias(ids, config.model.unigram_bias)
        label = cell_label(config.model)
        subjects.append(
            Subject(
                label,
                model.to(device),
                config,
                ids,
                _line_break(encoder, d.level),
                f"{name} (initial)",
                model_seed=config.train.seed,
            )  # fmt: skip
        )
    _disambiguate(subjects)
    return subjects


def checkpoint_folders(run: Path, which: str, checkpoints: str | None) -> list[Path]:
    """`--checkpoints`: None -> the run's best or latest; `all` -> every kept step; `S,S` ->
    those steps (each must be kept: train.keep_checkpoints says how many are)."""
    if checkpoints is None:
        return [Path(run)]
    kept = step_dirs(Path(run) / CHECKPOINTS)
    if not kept:
        raise DataError(f"{run}: the run has no checkpoint yet (train it first)")
    if checkpoints == "all":
        return kept
    by_step = {int(p.name.split("-")[1]): p for p in kept}
    try:
        wanted = [int(s) for s in checkpoints.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--checkpoints '{checkpoints}': give all or steps like 100,500") from None
    missing = [s for s in wanted if s not in by_step]
    if missing or not wanted:
        raise DataError(
            f"{run}: no checkpoint at step {', '.join(map(str, missing)) or '(none given)'}; "
            f"kept: {', '.join(map(str, by_step))} (keep more with train.keep_checkpoints)"
        )
    return [by_step[s] for s in wanted]


def run_subjects(
    runs: Sequence[Path],
    text: str,
    which: str = "best",
    checkpoints: str | None = None,
    device: str = "cpu",
) -> list[Subject]:
    """Trained runs (or each run's chosen checkpoints), the text in each run's vocabulary."""
    from tokenizers import Tokenizer

    from charlm.data.tokenizer import Encoder

    folders = [(run, f) for run in runs for f in checkpoint_folders(run, which, checkpoints)]
    subjects = []
    for run, folder in folders:
        loaded = load_checkpoint(folder, which)
        level = loaded.meta["level"]
        encoder = Encoder(Tokenizer.from_str(loaded.tokenizer_json), level)
        model = loaded.build_model(device).eval()
        subjects.append(
            Subject(
                cell_label(loaded.config.model),
                model,
                loaded.config,
                encoder.encode(text),
                _line_break(encoder, level),
                str(run),
                step=loaded.step,
            )  # fmt: skip
        )
    names = run_names([Path(run) for run, _ in folders])
    for subject, name in zip(subjects, names, strict=True):
        subject.label = f"{subject.label} ({name})"
        if checkpoints is not None:
            subject.label = f"{subject.label} step {subject.step}"
    return subjects


def run_names(runs: Sequence[Path]) -> list[str]:
    """Each run's name for a legend: its folder's name, or as many of the folders above it as
    tell apart runs whose folders share a name (a/gru, b/gru); the same run, the same name."""
    parts = [Path(run).resolve().parts for run in runs]
    names = []
    for mine in parts:
        others = {p for p in parts if p != mine}
        depth = 1
        while depth < len(mine) and any(p[-depth:] == mine[-depth:] for p in others):
            depth += 1
        names.append("/".join(mine[-depth:]))
    return names


def _disambiguate(subjects: list[Subject]) -> None:
    """Fresh models that share a label (a name given twice): a number after each, 1, 2, ..."""
    labels = [s.label for s in subjects]
    seen: dict[str, int] = {}
    for subject, label in zip(subjects, labels, strict=True):
        if labels.count(label) > 1:
            seen[label] = seen.get(label, 0) + 1
            subject.label = f"{label} ({seen[label]})"


def _line_break(encoder: object, level: str) -> int | None:
    if level != "char":
        return None
    return int(encoder.encode("\n")[0])  # type: ignore[attr-defined]


def task_targets(text_path: Path, text: str, subjects: Sequence[Subject] = ()) -> np.ndarray:
    """The scored positions of a task text (`--at task`): the task's truth.json, written by
    `charlm data synth` beside it, says what they are (lag: the key after each cue). They are
    character positions: every subject must be a char-level model."""
    from charlm.tasks.masks import score_mask
    from charlm.tasks.synth import TRUTH_FILE, read_truth

    for s in subjects:
        if s.line_break is None or len(s.ids) != len(text):
            raise UsageError(
                f"--at task: {s.source} is not a char-level model (the task's scored positions "
                "are characters); use --at random"
            )
    folder = Path(text_path).parent
    if not (folder / TRUTH_FILE).is_file():
        raise DataError(
            f"{folder / TRUTH_FILE}: not found; --at task needs a task made by `charlm data "
            "synth` (its truth.json beside the text), or use --at random"
        )
    positions = np.flatnonzero(score_mask(text, read_truth(folder)))
    if len(positions) in (0, len(text)):
        raise DataError(f"{text_path}: the task has no scored positions; use --at random")
    return positions
