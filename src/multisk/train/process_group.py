"""Process-group set-up for ``torchrun`` (one process per GPU, or several CPU processes with gloo).

Besides the default group (NCCL on CUDA, gloo on CPU) every multi-process run gets a *host group*: a
gloo group on the CPU with its own, long timeout. The ranks meet there when one rank works alone —
rank 0 writing a checkpoint or evaluating — so the others wait on a CPU barrier that names the ranks
that did not arrive, instead of sitting in a pending NCCL collective until the NCCL watchdog kills
the job.

The default group's own timeout is ``train.collective_timeout_s``: a rank that never reaches a training
collective (it hangs, or its process stopped) makes the others' collective fail after that long, and
:func:`watch_collectives` turns the failure into a :class:`CollectiveTimeoutError` that names the ranks
that did not answer a short ``monitored_barrier`` on the host group (gloo; on NCCL the watchdog ends the
process with its own report after the same timeout).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

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
    collective_timeout_s: float = 1800.0
    # the losses' own group (same backend as the default group): their all-gathers and the gather's
    # backward reduction never share a sequence with DDP's gradient buckets (see init_distributed)
    loss_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_spec: str = "auto", barrier_timeout_s: float = 3600.0,
                     collective_timeout_s: float = 1800.0) -> DistributedContext:
    """Initialise from torchrun's environment (WORLD_SIZE/RANK/LOCAL_RANK); a single process otherwise.

    NCCL on CUDA, gloo on CPU (collectives time out after ``collective_timeout_s``), plus the gloo host
    group. Call :func:`cleanup_distributed` at the end.
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
                                    device_id=device if device.type == "cuda" else None,
                                    timeout=timedelta(seconds=collective_timeout_s),
                                    **_elastic_attempt_store(rank, world_size, collective_timeout_s))
        host_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=barrier_timeout_s))
        # DDP all-reduces a gradient bucket as soon as autograd has filled it, while the contrastive
        # all-gather's backward reduces its gradient when autograd reaches it; which comes first depends on
        # each rank's graph (its data), and on one group that ordering must be the same on every rank or the
        # collectives pair up wrongly (gloo: "Received data size doesn't match expected size"). On a group
        # of their own the losses' collectives keep program order and DDP's keep bucket order.
        loss_group = dist.new_group(backend=dist.get_backend(), timeout=timedelta(seconds=collective_timeout_s))
    else:
        loss_group = None
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device,
                              host_group=host_group, barrier_timeout_s=barrier_timeout_s,
                              collective_timeout_s=collective_timeout_s, loss_group=loss_group)


def _elastic_attempt_store(rank: int, world_size: int, timeout_s: float) -> dict:
    """Under torchrun's agent store: the process group's rendezvous keys under a prefix of their own per
    restart (``TORCHELASTIC_RESTART_COUNT``). The agent's TCPStore outlives a failed attempt, and the
    default ``env://`` keys would hand the restarted ranks the dead attempt's addresses (gloo then fails
    with "connectFullMesh ... Connection refused" or waits forever). Elsewhere: torch's defaults (``{}``)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=timedelta(seconds=timeout_s))
    return {"store": dist.PrefixStore(f"multisk/attempt_{attempt}/", store), "rank": rank, "world_size": world_size}


def host_barrier(ctx: DistributedContext, what: str) -> None:
    """All ranks wait here (on the CPU) for up to ``ctx.barrier_timeout_s``; a rank that does not arrive
    (it crashed, or ``what`` took too long) makes the others raise an error naming it and ``what``."""
    if not ctx.enabled:
        return
    try:
        dist.monitored_barrier(group=ctx.host_group, timeout=timedelta(seconds=ctx.barrier_timeout_s),
                               wait_all_ranks=True)
    except RuntimeError as err:
        raise CollectiveTimeoutError(f"rank {ctx.rank}: ranks did not meet after {what} within train.barrier_timeout_s="
                           f"{ctx.barrier_timeout_s:g} s ({str(err).splitlines()[0]})") from None


class CollectiveTimeoutError(RuntimeError):
    """A training collective failed (a rank hung or died); the message names the ranks and the wait."""


# how long the ranks that saw a collective fail wait for each other on the host group to find out who is
# missing: they all fail within moments of each other (same collective, same timeout)
DIAGNOSIS_TIMEOUT_S = 30.0


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` came from a collective (torch's DistError family, or gloo / NCCL transport errors,
    which gloo raises as plain RuntimeErrors naming its source files), not from the step's own code."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(err, dist_error):
        return True
    text = str(err)
    return any(marker in text for marker in ("gloo", "Gloo", "NCCL", "monitoredBarrier", "Connection closed by peer"))


@contextmanager
def watch_collectives(ctx: DistributedContext, what: str) -> Iterator[None]:
    """Run the block (``what``: e.g. "training step 17"); if a collective in it fails under torchrun, find the
    ranks that do not answer a ``monitored_barrier`` on the host group within
    ``min(collective_timeout_s, DIAGNOSIS_TIMEOUT_S)`` and raise :class:`CollectiveTimeoutError` naming
    them (rank 0 names the missing ranks; the others name rank 0's report), ``what`` and the timeout."""
    try:
        yield
    except RuntimeError as err:
        if not ctx.enabled or isinstance(err, CollectiveTimeoutError) or not is_collective_failure(err):
            raise
        wait = min(ctx.collective_timeout_s, DIAGNOSIS_TIMEOUT_S)
        try:
            dist.monitored_barrier(group=ctx.host_group, timeout=timedelta(seconds=wait), wait_all_ranks=True)
            finding = "every rank answered the check barrier afterwards"
        except RuntimeError as barrier_err:
            finding = str(barrier_err).strip().splitlines()[0]
        raise CollectiveTimeoutError(
            f"rank {ctx.rank}: {what}: a collective failed or waited longer than train.collective_timeout_s="
            f"{ctx.collective_timeout_s:g} s for the other ranks; checking who is missing ({wait:g} s barrier): "
            f"{finding} (collective error: {str(err).strip().splitlines()[0]})") from err


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


__all__ = ["CollectiveTimeoutError", "DistributedContext", "cleanup_distributed", "gather_objects", "host_barrier",
           "init_distributed", "is_collective_failure", "watch_collectives"]
