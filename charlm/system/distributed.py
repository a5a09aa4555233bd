"""Process-group context for data-parallel training: ranks, reductions, and who writes files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as torch_dist

from charlm.errors import CharlmError, PeerFailure, UsageError


@dataclass
class DistContext:
    """This process's place in the job. One process: rank 0 of 1, every collective a no-op.

    Under torchrun the process group is joined (`has_group`), even for a world of one, so that
    `torchrun --nproc_per_node=1` runs the same DistributedDataParallel path as a bigger job.
    Collectives run on `device`: the process's GPU with NCCL, the CPU with gloo; tensors on
    another device are copied there and back.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    has_group: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout_s: float = 0.0

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, metrics and the progress display."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum over all processes (every process gets the same result)."""
        if not self.has_group:
            return tensor
        work = tensor.to(self.device)
        torch_dist.all_reduce(work, op=torch_dist.ReduceOp.SUM)
        return work.to(tensor.device)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's `tensor` (same shape everywhere), stacked by rank: (world_size, ...)."""
        if not self.has_group:
            return tensor.unsqueeze(0)
        work = tensor.contiguous().to(self.device)
        parts = [torch.empty_like(work) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, work)
        return torch.stack(parts).to(tensor.device)

    def gather_columns(self, tensor: torch.Tensor) -> torch.Tensor:
        """Join tensors split by rank along dim 1, (a, local, b) each -> (a, world * local, b).

        Rank r's columns land at [r * local, (r + 1) * local): the carried hidden state of every
        stream in global stream order, as StreamBatcher hands streams to ranks.
        """
        stacked = self.all_gather(tensor)  # (world, a, local, b)
        return stacked.transpose(0, 1).reshape(tensor.shape[0], -1, *tensor.shape[2:])

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """The model in DistributedDataParallel, which averages gradients over processes.

        None without a process group. The wrapper is only for forward and backward: the
        plain module stays the one to evaluate, save and step.
        """
        if not self.has_group:
            return None
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def barrier(self) -> None:
        if self.has_group:
            torch_dist.barrier()

    def close(self) -> None:
        if self.has_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
            self.has_group = False

    def is_peer_failure(self, exc: BaseException) -> bool:
        """Whether `exc` is a collective that failed, rather than an error of this process.

        Gloo reports a dead peer as a plain RuntimeError from inside backward ("Connection
        reset by peer"), so the backend's words are the only sign.
        """
        if not self.has_group or not isinstance(exc, RuntimeError):
            return False
        if isinstance(exc, torch_dist.DistError):
            return True
        text = str(exc)
        return any(word in text for word in ("gloo", "NCCL", "Connection", "Timed out"))

    def peer_failure(self, exc: BaseException) -> PeerFailure:
        """A one-line error for a collective that failed: another process died or hung."""
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return PeerFailure(
            f"rank {self.rank} of {self.world_size}: lost contact with the other processes "
            f"({first}); another rank failed or stopped answering within "
            f"train.dist_timeout_s={self.timeout_s:g}: its own error above is the cause. "
            "Resume from the last checkpoint with --resume"
        )


def launched_world_size() -> int:
    """The WORLD_SIZE that torchrun set, or 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise UsageError(
            f"environment variable {name}='{value}' is not an integer; start the job with "
            "torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT"
        ) from None


def setup_distributed(device_name: str, timeout_s: float = 600.0) -> DistContext:
    """Join the process group torchrun describes in the environment, or run alone.

    NCCL when the run uses CUDA (each process on the GPU numbered by its LOCAL_RANK), gloo on
    the CPU. `timeout_s` bounds every collective, so a dead or hung rank ends the job with an
    error instead of leaving the others waiting for ever.
    """
    if "RANK" not in os.environ:
        if launched_world_size() > 1:
            raise UsageError(
                f"WORLD_SIZE={launched_world_size()} is set but RANK is not; start several "
                "processes with torchrun (torchrun --nproc_per_node=N -m charlm train ...)"
            )
        return DistContext()
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if not torch_dist.is_available():
        raise UsageError("this PyTorch build has no torch.distributed; run without torchrun")
    mps = getattr(torch.backends, "mps", None)
    uses_mps = device_name == "mps" or (
        device_name == "auto"
        and not torch.cuda.is_available()
        and mps is not None
        and mps.is_available()
    )
    if uses_mps:
        raise UsageError(
            "data-parallel training has no backend for Apple's MPS; under torchrun use "
            "--set train.device=cpu, or run without torchrun"
        )
    if device_name in ("auto", "cuda") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise UsageError(
                f"LOCAL_RANK={local_rank} but this machine has {count} CUDA device(s); "
                f"start at most {count} processes per machine (torchrun --nproc_per_node={count})"
            )
        torch.cuda.set_device(local_rank)
        backend, device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, device = "gloo", torch.device("cpu")
    try:
        torch_dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
        )
    except (torch_dist.DistError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CharlmError(
            f"rank {rank} of {world_size}: could not join the process group over {backend} "
            f"({first}); check MASTER_ADDR/MASTER_PORT or --rdzv-endpoint, and that every "
            "node was started"
        ) from None
    return DistContext(rank, world_size, local_rank, True, device, timeout_s)
