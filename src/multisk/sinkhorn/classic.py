"""Classic Sinkhorn-Knopp as used by SwAV (one assignment per sample), in the log domain.

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments" (SwAV,
NeurIPS 2020), Algorithm 1.  The argument checks and the distributed log-sum-exp it shares with
:mod:`multisk.sinkhorn.multi_assignment` live in :mod:`multisk.sinkhorn._log_domain`.
"""

from __future__ import annotations

import torch

from multisk.precision import exact_float32
from multisk.sinkhorn._log_domain import as_problems, check_eps_iters, check_scores, compute_dtype, logsumexp_over_rows

__all__ = ["sinkhorn"]


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
    check_scores(scores, check_finite)
    check_eps_iters(eps, n_iters)
    eps, n_iters = float(eps), int(n_iters)
    dtype = compute_dtype(scores)
    with exact_float32(scores.device):  # identical inside and outside autocast
        problems, batch_shape = as_problems(scores, dtype)
        log_q = problems / eps  # fresh tensor (B, N, K)
        for _ in range(n_iters):
            log_q -= logsumexp_over_rows(log_q, process_group).unsqueeze(1)  # anchors: Σ_n Q ∝ 1
            log_q -= torch.logsumexp(log_q, dim=2, keepdim=True)  # samples: Σ_k Q = 1
        return log_q.exp_().to(torch.float32).reshape(*batch_shape, *problems.shape[1:])
