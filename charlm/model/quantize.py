"""int8 sampling and scoring on a CPU: the lean step's products as PyTorch's dynamic int8 linears.

`torch.ao.quantization.quantize_dynamic` turns each product of a lean layout (a cell's fused
`[x, h] @ [W_ih; W_hh]^T`, a GRU's two, the decoder) into a `DynamicQuantizedLinear`: weights
int8 per output row, activations quantized per call from their own range, int32 accumulation
(fbgemm/oneDNN kernels), fp32 out. The step then calls the op that module's forward calls,
`torch.ops.quantized.linear_dynamic`, without the module around it. PyTorch's own kernels, CPU
only; activations, biases, the embedding and the state stay fp32.

Why not torchao 0.18's `quantize_` (int8 dynamic activation, int8 weight): on this CPU in eager
mode each product went through tensor-subclass dispatch and ran no faster than fp32 (a 1024 x
2048 product at batch 1: about 1.2 ms against fp32's 1.0 ms and `linear_dynamic`'s 0.16 ms,
docs/benchmarks.md); its fast CPU paths need `torch.compile`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from charlm.errors import ArgumentError, UsageError
from charlm.model.cells import Affine

QUANTIZE = ("int8",)  # the choices besides None (fp32, the default)


def quantized_engine() -> str | None:
    """The quantized CPU engine this PyTorch uses (x86, fbgemm, onednn or qnnpack), or None."""
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines or not hasattr(torch.ops.quantized, "linear_dynamic"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.ao.quantization import quantize_dynamic  # noqa: F401
    except ImportError:  # a PyTorch after torch.ao.quantization's removal
        return None
    current = torch.backends.quantized.engine
    return current if current in engines else None


def check_quantize(quantize: str | None, api: bool = False) -> None:
    """Refuse an unknown choice, or int8 where this PyTorch has no quantized CPU engine; the
    message names `--quantize`, or with `api` the Python argument."""
    if quantize is None:
        return
    if quantize not in QUANTIZE:
        if api:
            choices = " or ".join(repr(choice) for choice in (None, *QUANTIZE))
            raise ArgumentError(f"quantize must be {choices} (got {quantize!r})")
        raise UsageError(f"--quantize must be fp32 or {' or '.join(QUANTIZE)} (got {quantize})")
    if quantized_engine() is None:
        engines = ", ".join(torch.backends.quantized.supported_engines) or "none"
        name, fix = ("quantize", "pass quantize=None") if api else ("--quantize", "use fp32")
        raise UsageError(
            f"{name} {quantize}: this PyTorch has no quantized CPU engine (engines: {engines}; "
            f"in use: {torch.backends.quantized.engine}); {fix}"
        )


def check_quantize_device(quantize: str | None, device: torch.device, api: bool = False) -> None:
    """int8 runs on the CPU only: refuse a model on CUDA or MPS, naming the way out."""
    if quantize is None or device.type == "cpu":
        return
    if api:
        raise ArgumentError(
            f"quantize={quantize!r} runs on the CPU only, and this model is on {device.type}; "
            "pass device='cpu' (or quantize=None)"
        )
    raise UsageError(
        f"--quantize {quantize} runs on the CPU only, and this model is on {device.type}; "
        "add --device cpu (or --quantize fp32)"
    )


class Int8Affine:
    """An `Affine` (cells.py) as a dynamic int8 linear: `x @ W + b`, or `x @ W + addend`."""

    __slots__ = ("packed",)

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight.t())
            if bias is not None:
                linear.bias.copy_(bias)
        quantized = _quantize_dynamic(nn.Sequential(linear))[0]
        self.packed = quantized._packed_params._packed_params

    def __call__(self, x: Tensor, addend: Tensor | None = None) -> Tensor:
        # reduce_range=True: what DynamicQuantizedLinear.forward passes (7-bit activations,
        # so fbgemm's 16-bit intermediate sums cannot overflow).
        y = torch.ops.quantized.linear_dynamic(x, self.packed, True)
        return y if addend is None else y.add_(addend)


def _quantize_dynamic(module: nn.Module) -> nn.Module:
    """PyTorch's dynamic quantization of the module's linears, int8 weights per output row.
    torch.ao.quantization warns that it moves to torchao; its kernels are what is used."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=UserWarning)
        return quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, torch.qint8)


def quantize_layouts(layouts: list[Any], quantize: str) -> list[Any]:
    """Lean layouts (and bare `Affine`s) with every `Affine` made int8; other tensors kept."""
    check_quantize(quantize, api=True)

    def convert(item: Any) -> Any:
        if isinstance(item, Affine):
            return Int8Affine(item.weight, item.bias)
        if isinstance(item, tuple):
            return tuple(convert(part) for part in item)
        return item

    return [convert(layout) for layout in layouts]
