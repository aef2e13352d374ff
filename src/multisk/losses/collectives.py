"""Collectives for losses whose statistics span the global batch (all ranks of a process group).

Every helper works without ``torch.distributed`` initialised: it then behaves as a world of one
(``world_size() == 1``, ``rank() == 0``, gathers return their input).

Gradient convention (docs/losses.md, "DDP scaling"). A loss built on the global batch is written as a
sum of per-rank shares, ``L = Σ_r L_r``, where ``L_r`` depends on the rank's local rows *and* on the
rows gathered from every rank. :func:`all_gather_with_grad` routes the gradient of the gathered tensor
back to the rank that owns each row, summed over all ranks (``backward = reduce_scatter(SUM)``: each
rank receives the sum of its own rows only), so on rank ``r`` autograd yields ``∂(Σ_r' L_r')/∂x_local = ∂L/∂x_local`` for its own
rows. DDP then averages the parameter gradients over the W ranks, which divides by W; the losses in
this package therefore return ``W · L_r`` so that the averaged gradient equals the single-process
gradient of ``L`` on the concatenated batch (and the mean over ranks of the returned value equals
``L``).

All gathers require the same local batch size on every rank (use ``drop_last=True`` samplers).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

ProcessGroup = Optional["dist.ProcessGroup"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def world_size(process_group: ProcessGroup = None) -> int:
    """Number of ranks in ``process_group`` (the default group when None); 1 when not distributed."""
    return dist.get_world_size(process_group) if is_distributed() else 1


def rank(process_group: ProcessGroup = None) -> int:
    """This process's rank inside ``process_group``; 0 when not distributed."""
    return dist.get_rank(process_group) if is_distributed() else 0


# torch >= 2.12 names the single-tensor all-gather `all_gather_single` and the reduce-scatter
# `reduce_scatter_single` (the old names warn).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _gather_rows(local: torch.Tensor, process_group: ProcessGroup) -> torch.Tensor:
    """(b, ...) on each rank -> (W·b, ...), rank-major (rows of rank 0 first)."""
    local = local.contiguous()
    world = world_size(process_group)
    gathered = local.new_empty((world * local.shape[0],) + tuple(local.shape[1:]))
    _all_gather_single(gathered, local, group=process_group)
    return gathered


def _sum_to_owners(grad_gathered: torch.Tensor, local_rows: int, process_group: ProcessGroup) -> torch.Tensor:
    """(W·b, ...) gradient on every rank -> (b, ...) on rank r: Σ over ranks of rows ``[r·b, (r+1)·b)``.

    A reduce-scatter: each rank receives only its own rows' sums, (W − 1)/W of the gathered tensor on
    the wire instead of the 2(W − 1)/W of an all-reduce, and no rank materialises the summed whole.
    Backends without reduce-scatter (old gloo builds) fall back to an all-reduce and a slice.
    """
    global _REDUCE_SCATTER_UNSUPPORTED
    grad_gathered = grad_gathered.contiguous()
    local = grad_gathered.new_empty((local_rows,) + tuple(grad_gathered.shape[1:]))
    if not _REDUCE_SCATTER_UNSUPPORTED:
        try:
            reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
            reduce_scatter(local, grad_gathered, op=dist.ReduceOp.SUM, group=process_group)
            return local
        except (RuntimeError, NotImplementedError):
            _REDUCE_SCATTER_UNSUPPORTED = True  # e.g. "Backend gloo does not support reduce_scatter"
    summed = grad_gathered.clone()  # all_reduce works in place; autograd may share grad_gathered
    dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=process_group)
    return summed.narrow(0, rank(process_group) * local_rows, local_rows)


_REDUCE_SCATTER_UNSUPPORTED = False


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenate the local tensors of all ranks along dim 0.

    Backward: every rank holds a gradient for the full gathered tensor (from its own loss share); the
    gradient of a local row is the sum over ranks of the gradients of that row: a reduce-scatter of
    the incoming gradient (:func:`_sum_to_owners`).
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, process_group: ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.process_group = process_group
        ctx.local_rows = local.shape[0]
        return _gather_rows(local, process_group)

    @staticmethod
    def backward(ctx, grad_gathered: torch.Tensor):  # type: ignore[override]
        return _sum_to_owners(grad_gathered, ctx.local_rows, ctx.process_group), None


def all_gather_with_grad(local: torch.Tensor, process_group: ProcessGroup = None) -> torch.Tensor:
    """Gather ``local`` (b, ...) from all ranks into (W·b, ...), differentiable w.r.t. ``local``.

    The gradient reaching ``local`` is the sum over ranks of the gradient of its rows in the gathered
    tensor. Identity (no copy) for a world of one.
    """
    if world_size(process_group) == 1:
        return local
    return _AllGatherWithGrad.apply(local, process_group)


@torch.no_grad()
def all_gather_no_grad(local: torch.Tensor, process_group: ProcessGroup = None) -> torch.Tensor:
    """Gather ``local`` (b, ...) from all ranks into (W·b, ...) with no autograd history.

    For a world of one the input is returned detached (no copy).
    """
    if world_size(process_group) == 1:
        return local.detach()
    return _gather_rows(local.detach(), process_group)


def local_row_offset(local_rows: int, process_group: ProcessGroup = None) -> int:
    """Index of this rank's first row in a rank-major gathered tensor (``rank · local_rows``)."""
    return rank(process_group) * local_rows


__all__ = [
    "all_gather_no_grad",
    "all_gather_with_grad",
    "is_distributed",
    "local_row_offset",
    "rank",
    "world_size",
]
