"""Choosing the compute device and CPU threads from the `train.device` and `train.threads` settings."""

from __future__ import annotations

import torch

from charlm.errors import UsageError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                "train.device=cuda but this PyTorch sees no CUDA device; "
                "use --set train.device=cpu (or auto)"
            )
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise UsageError(
                "train.device=mps but MPS is not available; use --set train.device=cpu"
            )
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise UsageError(f"unknown device '{name}'; use auto, cpu, cuda or mps")


def set_threads(threads: int) -> None:
    """Fix the CPU intra-op threads; on a busy 2-core machine one thread can be far faster."""
    if threads > 0:
        torch.set_num_threads(threads)
