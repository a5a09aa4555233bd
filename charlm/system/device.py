"""Choosing the compute device and CPU threads from the `train.device` and `train.threads` settings,
and what the CPU computes natively (bf16)."""

from __future__ import annotations

import os
import platform
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


def cpu_bf16_features() -> list[str]:
    """The CPU's native bf16 instructions: "AMX-BF16" and/or "AVX512-BF16" on x86, "BF16" on
    ARM; [] where it has none (bf16 there is emulated, slower than fp32).

    Read from `torch.cpu.get_capabilities()` (cpuinfo, the library PyTorch dispatches its kernels
    by), falling back to /proc/cpuinfo's flags on Linux where a key is absent."""
    caps = dict(getattr(torch.cpu, "get_capabilities", dict)())
    flags = cpu_flags()
    names = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("bf16", "BF16"))
    return [label for key, label in names if caps.get(key, key in flags)]


def cpu_flags() -> set[str]:
    """/proc/cpuinfo's first `flags` (x86) or `Features` (ARM) line, as a set; empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    """The CPU's model name as the system reports it (/proc/cpuinfo, else `platform`)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
