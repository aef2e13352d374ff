"""Classic Sinkhorn-Knopp as used by SwAV (one assignment per sample), in the log domain.

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments" (SwAV,
NeurIPS 2020), Algorithm 1.  Also home to the argument checks and the distributed log-sum-exp shared
with :mod:`multisk.sinkhorn.multi_assignment`.
"""

from __future__ import annotations

import math
import numbers
from typing import Tuple

import torch

from multisk.sinkhorn.precision import exact_float32

__all__ = ["sinkhorn"]


def _check_scores(scores: object, check_finite: bool = True) -> None:
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


def _is_integer(value: object) -> bool:
    """Python or numpy integers (not bool, not float)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    """Python or numpy real numbers (not bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_eps_iters(eps: object, n_iters: object) -> None:
    if not _is_real(eps) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps: expected a finite number > 0, got {eps!r}")
    if not _is_integer(n_iters) or n_iters < 1:
        raise ValueError(f"n_iters: expected an integer >= 1, got {n_iters!r}")


def _compute_dtype(scores: torch.Tensor) -> torch.dtype:
    """float64 inputs are solved in float64 (for exact comparisons); everything else in float32."""
    return torch.float64 if scores.dtype == torch.float64 else torch.float32


def _as_problems(scores: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Size]:
    """(..., N, K) -> contiguous (B, N, K) in ``dtype``; also returns the leading batch shape."""
    batch_shape = scores.shape[:-2]
    n_rows, n_anchors = scores.shape[-2:]
    problems = scores.reshape(-1, n_rows, n_anchors).to(dtype).contiguous()
    return problems, batch_shape


def _all_reduce(tensor: torch.Tensor, op, process_group) -> torch.Tensor:
    """In-place all-reduce over ``process_group``; a no-op when it is ``None``."""
    if process_group is not None:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=op, group=process_group)
    return tensor


def _logsumexp_over_rows(values: torch.Tensor, process_group) -> torch.Tensor:
    """log Σ_n exp(values[b, n, k]) over the (possibly sharded) row axis n: (B, N, K) -> (B, K).

    Sharded rows: the column maxima are all-reduced with MAX, then Σ exp(v − max) with SUM, so the
    result equals the single-process log-sum-exp over the concatenated rows.
    """
    if process_group is None:
        return torch.logsumexp(values, dim=1)
    import torch.distributed as dist

    column_max = values.amax(dim=1) if values.shape[1] > 0 else values.new_full(
        (values.shape[0], values.shape[2]), -math.inf)
    _all_reduce(column_max, dist.ReduceOp.MAX, process_group)
    shifted_sum = torch.exp(values - column_max.unsqueeze(1)).sum(dim=1)
    _all_reduce(shifted_sum, dist.ReduceOp.SUM, process_group)
    return torch.log(shifted_sum) + column_max


@torch.no_grad()
def sinkhorn(
    scores: torch.Tensor,
    eps: float = 0.05,
    n_iters: int = 3,
    *,
    process_group=None,
    check_finite: bool = True,
) -> torch.Tensor:
    """Classic (SwAV) Sinkhorn-Knopp assignment: every anchor gets equal mass, every sample mass 1.

    Solves, approximately after ``n_iters`` alternating projections, the entropic transport problem
    ``Q = diag(u) exp(S / eps) diag(v)`` with ``Σ_n Q[n, k] = N / K`` (equal use of the anchors) and
    ``Σ_k Q[n, k] = 1`` (one unit of assignment per sample); each iteration first scales the anchor
    marginals, then the sample marginals, so the returned rows sum to 1 exactly.  Computed in the log
    domain (``log Q ← log Q − logsumexp``), so small ``eps`` and half-precision scores cannot overflow.
    The initial total normalisation and the constants N/K, 1 of SwAV's Algorithm 1 are omitted: they
    are uniform rescalings that the following normalisation removes exactly.

    Args:
        scores: (..., N, K) float scores S (any float dtype, CPU or CUDA; float64 is solved in float64,
            everything else in float32). Leading dims are independent problems.
        eps: entropic regularisation ε > 0.
        n_iters: number of (anchor, sample) scaling rounds, ≥ 1.
        process_group: a ``torch.distributed`` group over which the N rows are sharded; the sums over
            samples are all-reduced so the result equals the single-process result on the
            concatenated rows. ``None``: single process.
        check_finite: raise on NaN/inf scores (one host synchronisation per call); ``False`` lets
            them propagate into the result instead.

    Returns:
        (..., N, K) float32 (float64 for float64 input is cast to float32 too) assignment with rows
        summing to 1.
    """
    _check_scores(scores, check_finite)
    _check_eps_iters(eps, n_iters)
    eps, n_iters = float(eps), int(n_iters)
    dtype = _compute_dtype(scores)
    with exact_float32(scores.device):  # identical inside and outside autocast
        problems, batch_shape = _as_problems(scores, dtype)
        log_q = problems / eps  # fresh tensor (B, N, K)
        for _ in range(n_iters):
            log_q -= _logsumexp_over_rows(log_q, process_group).unsqueeze(1)  # anchors: Σ_n Q ∝ 1
            log_q -= torch.logsumexp(log_q, dim=2, keepdim=True)  # samples: Σ_k Q = 1
        return log_q.exp_().to(torch.float32).reshape(*batch_shape, *problems.shape[1:])
