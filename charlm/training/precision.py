"""`train.precision`: the training forward under bf16 autocast (CUDA, or a CPU with native bf16),
what a run says about it, and the refusal, decided before anything is written, where it cannot be.

On a CPU, `torch.autocast("cpu", dtype=torch.bfloat16)` runs the fused LSTM through oneDNN in
bf16, and casts the matrix products inside the fused GRU and RNN kernels (and the unrolled cells'
`addmm`/`linear`) to bf16 while their gate arithmetic and state stay fp32. Whether that is faster
depends on the CPU and the size: figures in docs/benchmarks.md ("CPU precision"), which the hints
below quote. Weights, optimiser state, the carried state and checkpoints stay fp32 everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from charlm.config import ModelConfig
from charlm.errors import UsageError
from charlm.model.cells import map_state
from charlm.system.device import cpu_bf16_features, cpu_name

# The fused LSTM runs as one oneDNN bf16 kernel; the other cells cast each step's products.
ONEDNN_CELLS = frozenset({"lstm"})
# The cells whose bf16 training was measured (fused kernels; the unrolled ones were not).
MEASURED_CELLS = frozenset({"lstm", "gru", "rnn"})
# Below this hidden size the per-step casts cost more than bf16 products save (GRU, RNN).
SMALL_HIDDEN = 256
BENCH = "docs/benchmarks.md, CPU precision"


def check_precision(precision: str, device: torch.device) -> list[str]:
    """Refuse a precision the device cannot run natively; returns the native bf16 features used
    ([] for fp32 and on CUDA). Called before the run directory is touched."""
    if precision == "fp32" or device.type == "cuda":
        return []
    if device.type != "cpu":
        raise UsageError(
            f"train.precision={precision} runs on CUDA or on a CPU with native bf16, not on "
            f"{device.type}; use --set train.precision=fp32"
        )
    features = cpu_bf16_features()
    if not features:
        raise UsageError(
            f"train.precision={precision} on a CPU needs native bf16 (AVX512-BF16 or AMX-BF16 on "
            f"x86, BF16 on ARM), which this CPU ({cpu_name()}) lacks: bf16 would be emulated, "
            "slower than fp32; use --set train.precision=fp32"
        )
    return features


def precision_note(precision: str, model: ModelConfig, device: torch.device) -> str | None:
    """The header line of a bf16 run: how it runs here, and a measured-figure hint where bf16 was
    measured slower than fp32 or not measured (None for fp32)."""
    if precision == "fp32":
        return None
    if device.type != "cpu":
        return f"precision: {precision} autocast on {device.type}; weights and state stay fp32"
    features = check_precision(precision, device)
    onednn = uses_onednn(model)
    how = "LSTM through oneDNN" if onednn else "matrix products in bf16, state in fp32"
    note = f"precision: {precision} autocast on the CPU ({', '.join(features)}; {how})"
    hint = cpu_bf16_hint(model, features, onednn)
    return f"{note}; {hint}" if hint else note


def uses_onednn(model: ModelConfig) -> bool:
    """Whether autocast runs the recurrence as one oneDNN bf16 kernel: the fused LSTM, unless
    oneDNN is off (sentence batching turns it off on a CPU, trainer.py)."""
    return model.cell in ONEDNN_CELLS and torch.backends.mkldnn.enabled


def cpu_bf16_hint(model: ModelConfig, features: list[str], onednn: bool) -> str | None:
    """Where bf16 training was measured slower than fp32 on a CPU (or never measured), a hint
    with the figure; None where it was measured faster."""
    fix = "--set train.precision=fp32 may be faster"
    if "AMX-BF16" not in features and "AVX512-BF16" in features:
        return (
            "without AMX, bf16 trained a 2x512 LSTM at 0.62x and a GRU at 0.81x fp32's "
            f"tokens/s (oneDNN held to AVX512-BF16 on an AMX Xeon; {BENCH}); {fix}"
        )
    if "AMX-BF16" not in features:
        return f"bf16 training is unmeasured on this CPU ({', '.join(features)}; {BENCH})"
    if (
        model.cell not in MEASURED_CELLS
        or model.leak
        or (model.cell in ONEDNN_CELLS and not onednn)
    ):
        return f"bf16 training is unmeasured for this cell and path ({BENCH})"
    if not onednn and model.hidden_size < SMALL_HIDDEN:
        return (
            f"at hidden size {model.hidden_size} < {SMALL_HIDDEN} the per-step casts cost more "
            f"than bf16 saves (2x128 GRU 0.92x, RNN 0.78x fp32's tokens/s; {BENCH}); {fix}"
        )
    return None


def with_precision(
    forward: Callable[..., tuple], precision: str, device: torch.device
) -> Callable[..., tuple]:
    """`forward` under bf16 autocast (`train.precision=bf16`, on CUDA or a CPU with native bf16),
    else `forward` itself; refuses what `check_precision` refuses.

    The logits, state and hidden outputs come back in fp32: the loss, the carried state and the
    checkpoints stay fp32 whatever the precision.
    """
    if precision == "fp32":
        return forward
    check_precision(precision, device)

    def run(*args: Any, **kwargs: Any) -> tuple:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits, state, *hidden = forward(*args, **kwargs)
        return (logits.float(), map_state(Tensor.float, state), *(h.float() for h in hidden))

    return run
