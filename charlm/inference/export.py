"""Export: a checkpoint's one-token step (token + state -> logits + state) as TorchScript or ONNX."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from charlm.errors import CharlmError, UsageError
from charlm.inference.choices import FORMATS
from charlm.model.cells import CELLS
from charlm.model.network import RNNLanguageModel
from charlm.rundir.checkpoint import LoadedCheckpoint, load_checkpoint
from charlm.system.files import (
    check_destination,
    refusing,
    remove_stale_temporaries,
    replace_durably,
    temporary_sibling,
)

EXPORT_FORMAT = "charlm-step"
EXPORT_VERSION = 1
ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")  # the `onnx` extra: export, run, check
TOLERANCE = 1e-5  # largest |logit| difference from charlm's own step that an export may show
_CHECK_STEPS = 8
_ELSEWHERE = "choose another --out"  # what to do when --out cannot be written


class StepGraph(nn.Module):
    """token (batch,) int64 and state (S, layers, batch, hidden) -> logits (batch, vocab), state.

    S is 2 for a cell whose state is a pair (LSTMs: h then c) and 1 for the others (GRUs, RNN),
    so every export has one signature.
    """

    def __init__(self, model: RNNLanguageModel) -> None:
        super().__init__()
        self.model = model
        self.lstm = model.cell.paired

    def forward(self, token: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        if self.lstm:
            logits, (h, c) = self.model.step(token, (state[0], state[1]))
            return logits, torch.stack([h, c])
        logits, h = self.model.step(token, state[0])
        return logits, h.unsqueeze(0)


@dataclass
class ExportResult:
    path: Path
    max_difference: float
    steps_checked: int


def describe(loaded: LoadedCheckpoint) -> dict[str, Any]:
    """What a consumer of the exported step needs beside the tokenizer."""
    m = loaded.config.model
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "level": loaded.meta["level"],
        "vocab_size": int(loaded.meta["vocab_size"]),
        "cell": m.cell,
        "layers": m.layers,
        "hidden_size": m.hidden_size,
        "state_shape": [2 if CELLS[m.cell].paired else 1, m.layers, 1, m.hidden_size],
        "checkpoint": str(loaded.path),
        "step": loaded.step,
    }


def _check_runtime(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)} (got '{fmt}')")
    missing = [m for m in ONNX_MODULES if importlib.util.find_spec(m) is None]
    if fmt == "onnx" and missing:
        raise CharlmError(
            f"--format onnx needs {', '.join(missing)}: pip install 'charlm-rnn[onnx]' "
            "(or export --format torchscript)"
        )


def export_checkpoint(
    run: Path, fmt: str, out: Path, which: str = "best", force: bool = False
) -> ExportResult:
    """Write the step of `run`'s checkpoint to `out`, checked against charlm's own step first."""
    _check_runtime(fmt)
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; --out names the file to write")
    if out.exists() and not force:
        raise UsageError(f"{out}: already exists; pass --force to replace it, or pick a new --out")
    check_destination(out, _ELSEWHERE)
    loaded = load_checkpoint(run, which)
    graph = StepGraph(loaded.build_model("cpu")).eval()
    info = describe(loaded)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # a killed export's; they never block this one
    tmp = temporary_sibling(out)  # `out` appears whole, or not at all, even on kill -9
    try:
        with refusing(out, _ELSEWHERE):
            runner = _WRITERS[fmt](graph, info, loaded.tokenizer_json, tmp)
        difference = _max_difference(graph, runner, info)
        if not difference <= TOLERANCE:
            raise CharlmError(
                f"{out}: the exported {fmt} step differs from charlm's by {difference:.2e} "
                f"(more than {TOLERANCE:g}); nothing was written"
            )
        with refusing(out, _ELSEWHERE):
            replace_durably(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(out, difference, _CHECK_STEPS)


Runner = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _example(info: dict[str, Any], batch: int) -> tuple[Tensor, Tensor]:
    shape = list(info["state_shape"])
    shape[2] = batch
    return torch.zeros(batch, dtype=torch.long), torch.zeros(shape)


@torch.inference_mode()
def _max_difference(graph: StepGraph, runner: Runner, info: dict[str, Any]) -> float:
    """Feed the same tokens (batch 3, another batch than the export's example) to both."""
    generator = torch.Generator().manual_seed(0)
    _, state = _example(info, 3)
    state = torch.randn(state.shape, generator=generator) * 0.5
    theirs = state.clone()
    worst = 0.0
    for _ in range(_CHECK_STEPS):
        token = torch.randint(0, info["vocab_size"], (3,), generator=generator)
        logits, state = graph(token, state)
        their_logits, theirs = runner(token, theirs)
        worst = max(worst, float((logits - their_logits).abs().max()))
        worst = max(worst, float((state - theirs).abs().max()))
    return worst


def _write_torchscript(graph: StepGraph, info: dict, tokenizer_json: str, path: Path) -> Runner:
    extra = {"charlm.json": json.dumps(info), "tokenizer.json": tokenizer_json}
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(graph, _example(info, 1), check_trace=False)
        # Through a file object torch serialises in memory and Python writes the bytes: a full
        # disk is an OSError. Given a name, its C++ writer aborts the process instead.
        with open(path, "wb") as file:
            torch.jit.save(traced, file, _extra_files=extra)
        reloaded = torch.jit.load(str(path), map_location="cpu")  # what a user of the file runs
    return lambda token, state: reloaded(token, state)


def _write_onnx(graph: StepGraph, info: dict, tokenizer_json: str, path: Path) -> Runner:
    import onnx
    import onnxruntime

    batch = torch.export.Dim("batch")
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            graph,
            _example(info, 2),
            str(path),
            dynamo=True,
            verbose=False,
            external_data=False,  # one self-contained file
            input_names=["token", "state"],
            output_names=["logits", "new_state"],
            dynamic_shapes=({0: batch}, {2: batch}),
        )
    proto = onnx.load(str(path))
    for key, value in (("charlm.json", json.dumps(info)), ("tokenizer.json", tokenizer_json)):
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(token: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        logits, new_state = session.run(None, {"token": token.numpy(), "state": state.numpy()})
        return torch.from_numpy(logits), torch.from_numpy(new_state)

    return run


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's notes (deprecations, skipped torchvision ops) are not the user's business."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


_WRITERS: dict[str, Callable[[StepGraph, dict, str, Path], Runner]] = {
    "torchscript": _write_torchscript,
    "onnx": _write_onnx,
}
