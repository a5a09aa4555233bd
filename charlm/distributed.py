"""Process-group context for data-parallel training: ranks, reductions, and who writes files."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class DistContext:
    """This process's place in the job. One process: rank 0 of 1, every collective a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, metrics and the progress display."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def barrier(self) -> None:
        return None

    def close(self) -> None:
        return None


def launched_world_size() -> int:
    """The WORLD_SIZE that torchrun set, or 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed(device_name: str) -> DistContext:
    """Join the process group torchrun describes in the environment, or run alone."""
    if launched_world_size() <= 1:
        return DistContext()
    from charlm.errors import UsageError

    raise UsageError(
        f"WORLD_SIZE={launched_world_size()} but this charlm trains in one process only; "
        "run without torchrun"
    )
