"""Ranks under ``torchrun``: each rank takes disjoint chunks of every pass; rank 0 alone writes the catalog.

Outside torchrun (no ``WORLD_SIZE`` in the environment) there is one rank and barriers are no-ops.
Under torchrun the process group uses NCCL when the rank has a GPU and gloo otherwise (the tests run
two CPU ranks with gloo).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, chunk: int) -> bool:
        """Chunks are dealt round-robin: rank r writes chunks r, r + world, r + 2*world, ..."""
        return chunk % self.world == self.rank

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def total(self, value: float) -> float:
        """The sum of ``value`` over all ranks."""
        if self.world == 1:
            return value
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return sum(values)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (for errors found on rank 0 only)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def ranks_from_env(use_cuda: bool) -> Ranks:
    """Ranks from torchrun's environment, joining the process group when there are several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if use_cuda and torch.cuda.is_available():
            # Each rank's collectives must run on its own GPU: without this every rank would put
            # them on GPU 0 and NCCL would refuse the duplicate device.
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return Ranks(rank, world, local_rank)
