"""What the two Sinkhorn-Knopp solvers share (:mod:`multisk.sinkhorn.classic`,
:mod:`multisk.sinkhorn.multi_assignment`): argument checks, the (..., N, K) → (B, N, K) problem layout
and the log-sum-exp over rows that may be sharded across processes. Private to the package."""

from __future__ import annotations

import math
import numbers
from typing import Tuple

import torch


def check_scores(scores: object, check_finite: bool = True) -> None:
    """Raise ``ValueError`` naming ``scores`` unless it is a finite floating tensor of shape (..., N, K).

    The finiteness check reads one boolean back to the host (once per call, outside the iterations);
    ``check_finite=False`` skips it (training loops that check their loss instead: NaN scores then
    give NaN targets, hence a NaN loss, without a per-step host synchronisation).
    """
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"scores: expected a torch.Tensor, got {type(scores).__name__}")
    if not scores.is_floating_point():
        raise ValueError(f"scores: expected a floating-point tensor, got dtype {scores.dtype}")
    if scores.dim() < 2:
        raise ValueError(f"scores: expected shape (..., N, K) with at least 2 dims, got {tuple(scores.shape)}")
    if scores.shape[-1] < 1:
        raise ValueError(f"scores: the anchor axis K (last dim) is empty, shape {tuple(scores.shape)}")
    # A finite sum proves every entry finite (NaN/inf propagate) and costs one cheap pass; only when
    # it is not finite (NaN/inf, or finite values overflowing the sum) is the elementwise test needed.
    if check_finite and scores.numel() > 0 and not bool(torch.isfinite(scores.sum())) and not bool(torch.isfinite(scores).all()):
        raise ValueError("scores: contains NaN or infinite values")


def is_integer(value: object) -> bool:
    """Python or numpy integers (not bool, not float)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """Python or numpy real numbers (not bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_eps_iters(eps: object, n_iters: object) -> None:
    if not is_real(eps) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps: expected a finite number > 0, got {eps!r}")
    if not is_integer(n_iters) or n_iters < 1:
        raise ValueError(f"n_iters: expected an integer >= 1, got {n_iters!r}")


def compute_dtype(scores: torch.Tensor) -> torch.dtype:
    """float64 inputs are solved in float64 (for exact comparisons); everything else in float32."""
    return torch.float64 if scores.dtype == torch.float64 else torch.float32


def as_problems(scores: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Size]:
    """(..., N, K) -> contiguous (B, N, K) in ``dtype``; also returns the leading batch shape."""
    batch_shape = scores.shape[:-2]
    n_rows, n_anchors = scores.shape[-2:]
    problems = scores.reshape(-1, n_rows, n_anchors).to(dtype).contiguous()
    return problems, batch_shape


def all_reduce(tensor: torch.Tensor, op, process_group) -> torch.Tensor:
    """In-place all-reduce over ``process_group``; a no-op when it is ``None``."""
    if process_group is not None:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=op, group=process_group)
    return tensor


def logsumexp_over_rows(values: torch.Tensor, process_group) -> torch.Tensor:
    """log Σ_n exp(values[b, n, k]) over the (possibly sharded) row axis n: (B, N, K) -> (B, K).

    Sharded rows: the column maxima are all-reduced with MAX, then Σ exp(v − max) with SUM, so the
    result equals the single-process log-sum-exp over the concatenated rows.
    """
    if process_group is None:
        return torch.logsumexp(values, dim=1)
    import torch.distributed as dist

    column_max = values.amax(dim=1) if values.shape[1] > 0 else values.new_full(
        (values.shape[0], values.shape[2]), -math.inf)
    all_reduce(column_max, dist.ReduceOp.MAX, process_group)
    shifted_sum = torch.exp(values - column_max.unsqueeze(1)).sum(dim=1)
    all_reduce(shifted_sum, dist.ReduceOp.SUM, process_group)
    return torch.log(shifted_sum) + column_max
