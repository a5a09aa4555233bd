"""Choosing the compute device and CPU threads from the `train.device` and `train.threads` settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from charlm.errors import UsageError


def resolve_device(name: str, local_rank: int = 0, flag: str | None = None) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; a named device must exist.

    Messages name the setting (`--set train.device=...`), or `flag` (e.g. "--device") for the
    commands that take the device as an option."""

    def use(value: str) -> str:
        return f"{flag} {value}" if flag else f"--set train.device={value}"

    asked = f"{flag} {name}" if flag else f"train.device={name}"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"{asked} but this PyTorch sees no CUDA device; use {use('cpu')} (or auto)"
            )
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise UsageError(f"{asked} but MPS is not available; use {use('cpu')}")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise UsageError(f"unknown device '{name}'; use auto, cpu, cuda or mps")


def available_memory(device: torch.device) -> int | None:
    """Bytes free on `device` (CUDA: free device memory; else the system's MemAvailable)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # AttributeError: no sysconf (Windows)
        return None


@contextmanager
def cpu_threads(device: torch.device, threads: int) -> Iterator[None]:
    """Run a block on `threads` CPU threads (sampling, evaluation), then put back the count the
    caller had: a library call leaves the process's setting as it found it."""
    before = torch.get_num_threads()
    if device.type != "cpu" or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_threads(threads: int) -> None:
    """Fix the CPU intra-op threads; on a busy 2-core machine one thread can be far faster."""
    if threads > 0:
        torch.set_num_threads(threads)
