"""Process-group set-up for ``torchrun`` (one process per GPU, or several CPU processes with gloo).

Besides the default group (NCCL on CUDA, gloo on CPU) every multi-process run gets a *host group*: a
gloo group on the CPU with its own, long timeout. The ranks meet there when one rank works alone —
rank 0 writing a checkpoint or evaluating — so the others wait on a CPU barrier that names the ranks
that did not arrive, instead of sitting in a pending NCCL collective until the NCCL watchdog kills
the job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from multisk.device import pick_device


@dataclass
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    host_group: Any = None  # gloo ProcessGroup for host-side barriers (None in a single process)
    barrier_timeout_s: float = 3600.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_spec: str = "auto", barrier_timeout_s: float = 3600.0) -> DistributedContext:
    """Initialise from torchrun's environment (WORLD_SIZE/RANK/LOCAL_RANK); a single process otherwise.

    NCCL on CUDA, gloo on CPU, plus the gloo host group. Call :func:`cleanup_distributed` at the end.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    device = pick_device(device_spec, local_rank, local_world_size)
    host_group = None
    if world_size > 1:
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                    device_id=device if device.type == "cuda" else None)
        host_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=barrier_timeout_s))
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device,
                              host_group=host_group, barrier_timeout_s=barrier_timeout_s)


def host_barrier(ctx: DistributedContext, what: str) -> None:
    """All ranks wait here (on the CPU) for up to ``ctx.barrier_timeout_s``; a rank that does not arrive
    (it crashed, or ``what`` took too long) makes the others raise an error naming it and ``what``."""
    if not ctx.enabled:
        return
    try:
        dist.monitored_barrier(group=ctx.host_group, timeout=timedelta(seconds=ctx.barrier_timeout_s),
                               wait_all_ranks=True)
    except RuntimeError as err:
        raise RuntimeError(f"rank {ctx.rank}: ranks did not meet after {what} within train.barrier_timeout_s="
                           f"{ctx.barrier_timeout_s:g} s ({str(err).splitlines()[0]})") from None


def gather_objects(ctx: DistributedContext, obj: Any) -> list:
    """Every rank's ``obj`` (picklable, CPU) in rank order, over the host group; ``[obj]`` alone."""
    if not ctx.enabled:
        return [obj]
    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj, group=ctx.host_group)
    return gathered


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["DistributedContext", "cleanup_distributed", "gather_objects", "host_barrier", "init_distributed"]
