"""Multi-Assignment Sinkhorn-Knopp (Multi-SK), docs/sinkhorn.md.

Swetha et al., "Preserving Modality Structure Improves Multi-Modal Learning", ICCV 2023 (arXiv 2308.13077).

The literal formulation works on a K × N × K tensor ``A[μ, n, k]`` (K "levels" μ, N samples n,
K anchors k).  Levels with equal scale ``c_μ`` start identical and every step treats them identically,
so only two distinct levels exist: ``low`` (K − r copies, scale ``low_scale``) and ``high`` (r copies,
scale 1).  With ``m = K − r`` the three scaling steps of one iteration become

    1. anchors:  A_μ[n, k] ← A_μ[n, k] · (N/K) / Σ_n A_μ[n, k]              (μ ∈ {low, high})
    2. levels:   A_μ[n, k] ← A_μ[n, k] / (m · A_low[n, k] + r · A_high[n, k])
    3. samples:  A_μ[n, k] ← A_μ[n, k] / Σ_k A_μ[n, k]

and the target is the row-wise min-max normalisation of ``P = r · A_high``.

Fast exact form used here.  After step 2, ``m A_low + r A_high = 1``, so the whole state is the
log-odds ``x[n, k] = log(r A_high / (m A_low))``: ``r A_high = σ(x)`` and ``m A_low = σ(−x)``.  Steps 3
and 1 only multiply each level by row and column factors, so the next step 2 gives

    x ← x + log(r/m) + log s_low[n] − log s_high[n] + log C_low[k] − log C_high[k]

with ``s_μ[n] = Σ_k σ(±x)[n, k]`` (row sums) and ``C_μ[k] = Σ_n σ(±x)[n, k] / s_μ[n]`` (column sums
of the row-normalised levels).  The anchor marginal N/K and the initial total normalisation cancel
out of every ratio, so neither needs computing (nor, with sharded rows, communicating).

Stability.  ``x`` is kept in the log domain and σ never overflows; the only hazard is a whole row
of σ(x) (or of σ(−x)) underflowing.  Where a row's largest ``x`` is below ``−τ`` (τ = −log of the
dtype's machine epsilon, 16.6 in float32), ``σ(x) = e^x`` to working precision, so the row is shifted
by ``c_n = min(max_k x + τ, 0)`` and ``σ(x) = σ(x − c_n) · e^{c_n}`` holds exactly; the shift is
carried in log form (``log s = log Σ σ(x − c_n) + c_n``).  Column sums of row-normalised values are
clamped at the smallest normal number, which is reached only if every row gives an anchor less than
1e-38 of its mass (not reached for |S| ≤ 1, ε ≥ 0.005 in our tests).

CPU fast path.  On CPU without a process group the iterations run in the exp domain
(``_exp_domain_iterations``: ``σ(x)/a = 1/(G + a)``, ``σ(−x) = G/(G + a)`` with ``G = e^{−x_cols}``,
``a = e^{row potential}``), with no transcendental over (B, N, K) in the loop, while exact bounds show
every quantity stays a normal number; otherwise (small ε, NaN scores) it hands its state to the
log-domain loop above, at the start or mid-run.  CUDA and sharded rows always use the log domain.
"""

from __future__ import annotations

import math
from typing import Callable, List, NamedTuple, Optional, Tuple

import torch

from multisk.precision import exact_float32
from multisk.sinkhorn._log_domain import (
    all_reduce,
    as_problems,
    check_eps_iters,
    check_scores,
    compute_dtype,
    is_integer,
    is_real,
    logsumexp_over_rows,
)

__all__ = ["TwoLevelPlan", "multi_sinkhorn", "multi_sinkhorn_reference", "multi_sinkhorn_two_level"]


class TwoLevelPlan(NamedTuple):
    """The un-normalised Multi-SK tensor after the final iteration, in its exact two-level form.

    ``high`` (..., N, K) is every one of the ``n_high = r`` high levels ``A[μ, n, k]`` (scale 1);
    ``low`` (..., N, K) every one of the ``n_low = K − r`` low levels (scale ``low_scale``), or
    ``None`` when r = K.  The full K × N × K tensor is ``low`` repeated ``n_low`` times followed by
    ``high`` repeated ``n_high`` times.  Both are float32 (float64 for float64 scores).
    """

    low: Optional[torch.Tensor]
    high: torch.Tensor
    n_low: int
    n_high: int


def _check_multi_args(scores, n_assign, eps, n_iters, low_scale, check_finite: bool = True) -> int:
    check_scores(scores, check_finite)
    check_eps_iters(eps, n_iters)
    n_anchors = scores.shape[-1]
    if not is_integer(n_assign) or not 1 <= n_assign <= n_anchors:
        raise ValueError(f"n_assign: expected an integer in [1, K={n_anchors}], got {n_assign!r}")
    if not is_real(low_scale) or not math.isfinite(low_scale) or not 0 <= low_scale <= 1:
        raise ValueError(f"low_scale: expected a number in [0, 1], got {low_scale!r}")
    return n_anchors


def _solve_two_level(problems: torch.Tensor, n_assign: int, eps: float, n_iters: int, low_scale: float,
                     process_group) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run Multi-SK on (B, N, K) ``problems`` (already in the compute dtype, K − r ≥ 1).

    Returns ``levels`` (B, 2, N, K) and ``row_sums`` (B, 2, N) after step 3 of the final iteration, in
    row-shifted form: ``A_high = levels[:, 0] / row_sums[:, 0]`` and ``A_low = levels[:, 1] / row_sums[:, 1]``
    (``levels[:, 0] = σ(x) e^{−c_n}``, ``levels[:, 1] = σ(−x) e^{−d_n}``; see the module docstring).
    """
    n_problems, n_rows, n_anchors = problems.shape
    n_low = n_anchors - n_assign
    dtype = problems.dtype
    shift_threshold = -math.log(torch.finfo(dtype).eps)  # σ(x) == e^x to working precision below −τ
    tiny = torch.finfo(dtype).tiny
    log_level_ratio = math.log(n_assign / n_low)  # log(r/m)

    # Iteration 1, steps 1-2: x = (1 − c) S/ε + log(r/m) + logsumexp_n(c S/ε) − logsumexp_n(S/ε).
    log_col_high = logsumexp_over_rows(problems / eps, process_group)
    log_col_low = logsumexp_over_rows(problems * (low_scale / eps), process_group)
    # x[b, n, k] = x_cols[b, n, k] + row_potential[b, n]: the row part stays a (B, N) vector, the
    # column updates are applied to x_cols in place.
    x_cols = problems * ((1.0 - low_scale) / eps)
    x_cols += (log_col_low - log_col_high + log_level_ratio).unsqueeze(1)
    row_potential = torch.zeros(n_problems, n_rows, dtype=dtype, device=problems.device)

    # Both levels in one buffer (B, 2, N, K), each level contiguous: the sigmoid and the row sums are
    # one call over both, the column sums one batched (1 × N) @ (N × K) product per level.
    levels = torch.empty(n_problems, 2, n_rows, n_anchors, dtype=dtype, device=problems.device)
    first_iteration = 0
    if problems.device.type == "cpu" and process_group is None:
        first_iteration, row_sums = _exp_domain_iterations(x_cols, levels, n_iters, log_level_ratio, tiny,
                                                           row_potential)
        if first_iteration == n_iters:
            return levels, row_sums
    return _log_domain_iterations(x_cols, row_potential, levels, first_iteration, n_iters, log_level_ratio,
                                  shift_threshold, tiny, process_group)


def _exp_domain_iterations(x_cols: torch.Tensor, levels: torch.Tensor, n_iters: int, log_level_ratio: float,
                           tiny: float, row_potential: torch.Tensor):
    """The iterations in the exp domain (CPU, single process): no transcendental over (B, N, K) inside.

    State: ``G = exp(−x_cols)`` (B, N, K, in the x_cols buffer) and ``a = exp(row_potential)`` (B, N),
    so ``e^x = a / G``, ``σ(x) / a = 1 / (G + a)`` and ``σ(−x) = G / (G + a)``.  The row factor ``a``
    cancels from the row normalisation, so ``levels[:, 0]`` holds ``σ(x) / a`` and the row sums are of
    that.  The column update is ``G ← G · C_high / C_low`` and ``a ← (r/m) s_low / Σ_k σ(x)/a``.

    Used only while every quantity provably stays a normal number: exact per-column bounds of log E
    (initial column max/min plus the accumulated column updates) and the exact log a keep ``|log E|``,
    ``|log a|`` and ``max log a + max log E`` (``E = 1/G``) within 85% of the dtype's exponent range, so
    nothing overflows and σ(−x) ≥ e^{−margin}, ``σ(x)/a ≥ min(E, 1/a) / 2`` are normal (an underflowing
    ``a E`` gives σ(−x) = 1 exactly).  The check is a host read of a few (B, K)/(B, N) vectors per iteration —
    free on CPU.  When the next state would leave that range (small ε, NaN scores), the state is handed
    to the log-domain loop as ``x_cols = −log G``, ``row_potential = log a``, in place.

    Returns ``(iteration, row_sums)``: the iteration the log-domain loop must start at (``n_iters`` when
    done, and then ``levels`` and ``row_sums`` are the final ones).
    """
    n_problems, n_rows, n_anchors = x_cols.shape
    finfo = torch.finfo(x_cols.dtype)
    safe = 0.85 * min(math.log(finfo.max), -math.log(finfo.tiny))  # 74 in float32, 602 in float64
    col_max = x_cols.amax(dim=1)  # (B, K): bounds of log E per column, exact up to rounding
    col_min = x_cols.amin(dim=1)
    log_a = row_potential  # zeros

    def in_range(col_max, col_min, log_a) -> bool:
        bound = torch.stack([col_max.amax(), -col_min.amin(), log_a.amax(), -log_a.amin(),
                             (col_max.amax(dim=1) + log_a.amax(dim=1)).amax()])
        return bool((bound <= safe).all())  # False for NaN

    if not in_range(col_max, col_min, log_a):
        return 0, None
    inv_exp_cols = x_cols.neg_().exp_()  # G = 1/E = e^{−x_cols}, in the x_cols buffer
    row_factor = log_a.exp()  # a
    levels_high, levels_low = levels[:, 0], levels[:, 1]
    levels_by_problem_level = levels.view(n_problems * 2, n_rows, n_anchors)
    levels_as_rows = levels.view(n_problems * 2 * n_rows, n_anchors)
    ones_over_anchors = torch.ones(n_anchors, dtype=x_cols.dtype, device=x_cols.device)
    for iteration in range(n_iters):
        # σ(x) / a = 1 / (G + a) and σ(−x) = G / (G + a); then the row sums (step 3).
        torch.add(inv_exp_cols, row_factor.unsqueeze(2), out=levels_high)
        levels_high.reciprocal_()
        torch.mul(inv_exp_cols, levels_high, out=levels_low)
        row_sums = torch.mv(levels_as_rows, ones_over_anchors).view(n_problems, 2, n_rows)
        if iteration == n_iters - 1:
            return n_iters, row_sums
        # Step 1: column sums of the row-normalised levels (a cancels), then step 2.
        row_weights = row_sums.reciprocal().view(n_problems * 2, 1, n_rows)
        col_sums = torch.bmm(row_weights, levels_by_problem_level).view(n_problems, 2, n_anchors)
        log_col_sums = col_sums.clamp_(min=tiny).log_()
        log_col_update = log_col_sums[:, 1] - log_col_sums[:, 0]
        log_row_sums = row_sums.log()
        log_a = log_row_sums[:, 1] - log_row_sums[:, 0] + log_level_ratio
        col_max += log_col_update
        col_min += log_col_update
        if not in_range(col_max, col_min, log_a):
            # Hand over to the log domain: x = log a + log E + (column update).
            x_cols.log_().neg_().add_(log_col_update.unsqueeze(1))
            row_potential.copy_(log_a)
            return iteration + 1, None
        inv_exp_cols.mul_(log_col_update.neg().exp_().unsqueeze(1))
        row_factor = log_a.exp()
    return n_iters, None  # n_iters == 0 does not occur (n_iters ≥ 1)


def _log_domain_iterations(x_cols: torch.Tensor, row_potential: torch.Tensor, levels: torch.Tensor,
                           first_iteration: int, n_iters: int, log_level_ratio: float, shift_threshold: float,
                           tiny: float, process_group):
    """Iterations ``first_iteration`` .. ``n_iters − 1`` in the log domain, with the row shifts."""
    n_problems, n_rows, n_anchors = x_cols.shape
    dtype = x_cols.dtype
    levels_high, levels_low = levels[:, 0], levels[:, 1]
    levels_by_problem_level = levels.view(n_problems * 2, n_rows, n_anchors)
    levels_as_rows = levels.view(n_problems * 2 * n_rows, n_anchors)
    ones_over_anchors = torch.ones(n_anchors, dtype=dtype, device=x_cols.device)
    for iteration in range(first_iteration, n_iters):
        # Step 3 (samples): row sums of σ(±x), with the exact underflow shift per row.
        cols_max = x_cols.amax(dim=2)  # (torch.aminmax is several times slower on CPU)
        cols_min = x_cols.amin(dim=2)
        shift_high = (cols_max + row_potential + shift_threshold).clamp_(max=0.0)  # c_n
        shift_low = (shift_threshold - cols_min - row_potential).clamp_(max=0.0)  # d_n, for σ(−x)
        torch.add(x_cols, (row_potential - shift_high).unsqueeze(2), out=levels_high)
        torch.sub((-row_potential - shift_low).unsqueeze(2), x_cols, out=levels_low)
        torch.sigmoid(levels, out=levels)  # σ(x) e^{−c_n} and σ(−x) e^{−d_n}
        # (B, 2, N), each ≥ σ(−τ) > 0 thanks to the shift; a matrix-vector product is faster than sum()
        row_sums = torch.mv(levels_as_rows, ones_over_anchors).view(n_problems, 2, n_rows)
        if iteration == n_iters - 1:
            break
        # Step 1 (anchors): column sums of the row-normalised levels, C_μ[k] = Σ_n σ_μ[n, k] / s_μ[n].
        row_weights = row_sums.reciprocal().view(n_problems * 2, 1, n_rows)
        col_sums = torch.bmm(row_weights, levels_by_problem_level).view(n_problems, 2, n_anchors)
        if process_group is not None:
            import torch.distributed as dist

            all_reduce(col_sums, dist.ReduceOp.SUM, process_group)
        log_col_sums = col_sums.clamp_(min=tiny).log_()
        log_row_sums = row_sums.log()
        # Step 2 (levels), as an update of the log-odds.
        row_potential += (log_level_ratio + log_row_sums[:, 1] + shift_low
                          - log_row_sums[:, 0] - shift_high)
        x_cols += (log_col_sums[:, 1] - log_col_sums[:, 0]).unsqueeze(1)
    return levels, row_sums


# On CPU the problems are solved a few at a time so that one chunk's working set (x and both levels)
# stays cache-resident across the ~9 passes of an iteration: measured 1.5x faster than one
# (12, 7660, 64) batch with one thread, 1.1x with two, on a 2-core Xeon (24 MiB: four problems of
# 7660 x 64; smaller chunks were no faster and multiply the number of parallel regions). On GPUs one batched launch is better; with sharded rows every
# rank must issue the same collectives, and the chunking would depend on the local row count, so
# both solve the whole batch at once.
_CPU_CHUNK_BYTES = 24 * 2**20


def _problem_chunks(problems: torch.Tensor, process_group) -> List[slice]:
    n_problems, n_rows, n_anchors = problems.shape
    if process_group is not None or problems.device.type != "cpu":
        return [slice(0, n_problems)]
    bytes_per_problem = 3 * n_rows * n_anchors * problems.element_size()
    size = max(1, _CPU_CHUNK_BYTES // max(1, bytes_per_problem))
    return [slice(start, start + size) for start in range(0, n_problems, size)]


def _multi_sk(scores, n_assign, eps, n_iters, low_scale, process_group, check_finite: bool,
              outputs: int, all_high: Callable, write_chunk: Callable) -> Tuple[torch.Tensor, ...]:
    """The one driver behind :func:`multi_sinkhorn` and :func:`multi_sinkhorn_two_level`.

    Checks the arguments, then, with autocast and TF32 off (:func:`exact_float32`: the solver divides
    scores by ε, so bf16 or TF32 rounding would be amplified ~1/ε), casts ``scores`` (..., N, K) to
    the compute dtype as (B, N, K) ``problems`` and solves them chunk by chunk.

    ``all_high(problems, n_assign)`` returns the result when r = K (no low level, nothing to iterate);
    otherwise ``outputs`` (B, N, K) buffers of the compute dtype are allocated and
    ``write_chunk(buffers, chunk, levels, row_sums, n_assign)`` fills each chunk's rows of them from
    :func:`_solve_two_level`'s state.  Returns ``all_high``'s result or the buffers, reshaped like ``scores``.
    """
    _check_multi_args(scores, n_assign, eps, n_iters, low_scale, check_finite)
    n_assign, n_iters, eps, low_scale = int(n_assign), int(n_iters), float(eps), float(low_scale)
    with exact_float32(scores.device):
        problems, _ = as_problems(scores, compute_dtype(scores))
        if n_assign == scores.shape[-1]:
            return tuple(result.reshape(scores.shape) for result in all_high(problems, n_assign))
        buffers = tuple(torch.empty_like(problems) for _ in range(outputs))
        for chunk in _problem_chunks(problems, process_group):
            levels, row_sums = _solve_two_level(problems[chunk], n_assign, eps, n_iters, low_scale, process_group)
            write_chunk(buffers, chunk, levels, row_sums, n_assign)
    return tuple(buffer.reshape(scores.shape) for buffer in buffers)


def _write_two_level(buffers, chunk, levels, row_sums, n_assign) -> None:
    low, high = buffers
    torch.div(levels[:, 0], row_sums[:, 0].unsqueeze(2), out=high[chunk])
    torch.div(levels[:, 1], row_sums[:, 1].unsqueeze(2), out=low[chunk])


def _write_targets(buffers, chunk, levels, row_sums, n_assign) -> None:
    buffers[0][chunk] = _row_min_max(levels[:, 0], row_sums[:, 0], n_assign)


@torch.no_grad()
def multi_sinkhorn_two_level(
    scores: torch.Tensor,
    n_assign: int,
    eps: float = 0.07,
    n_iters: int = 20,
    *,
    low_scale: float = 0.25,
    process_group=None,
    check_finite: bool = True,
) -> TwoLevelPlan:
    """Multi-SK without the final normalisation: the exact two-level tensor after the last iteration.

    Same arguments as :func:`multi_sinkhorn`; returned tensors have the shape of ``scores``.
    Exposed so the constraints can be checked: each level's rows sum to 1 exactly (the last step);
    at convergence also ``Σ_n A_μ = N/K``, ``(K−r)·low + r·high = 1`` and ``high ≤ 1/r``.
    """
    # Only high levels (r = K): step 2 sets every entry to 1/K, and steps 3 and 1 keep it there.
    result = _multi_sk(scores, n_assign, eps, n_iters, low_scale, process_group, check_finite, outputs=2,
                       all_high=lambda problems, r: (torch.full_like(problems, 1.0 / r),),
                       write_chunk=_write_two_level)
    n_assign = int(n_assign)
    if len(result) == 1:
        return TwoLevelPlan(None, result[0], 0, n_assign)
    low, high = result
    return TwoLevelPlan(low, high, scores.shape[-1] - n_assign, n_assign)


@torch.no_grad()
def multi_sinkhorn(
    scores: torch.Tensor,
    n_assign: int,
    eps: float = 0.07,
    n_iters: int = 20,
    *,
    low_scale: float = 0.25,
    process_group=None,
    check_finite: bool = True,
) -> torch.Tensor:
    """Multi-Assignment Sinkhorn-Knopp targets (docs/sinkhorn.md): each sample is spread over ≥ r anchors.

    With levels μ = 1..K of scale c_μ = ``low_scale`` (first K − r) and 1 (last r), starting from
    ``A[μ, n, k] ∝ exp(c_μ S[n, k] / ε)``, repeats ``n_iters`` times: Σ_n A[μ,n,k] = N/K (per level and
    anchor), Σ_μ A[μ,n,k] = 1 (per sample and anchor), Σ_k A[μ,n,k] = 1 (per level and sample); then
    ``P[n, k] = Σ_{μ > K−r} A[μ, n, k]`` is min-max normalised per row.  Solved exactly in the
    two-level form (memory O(N·K) per problem) with log-domain potentials, no host synchronisation
    inside the iterations.  A degenerate row (all P equal) returns P itself, clamped to [0, 1]
    (r/K for a uniform row; all ones when r = K).  Runs in IEEE float32 (or float64) whatever the
    caller's autocast or TF32 settings: the result inside ``torch.autocast`` equals the result outside.

    Args:
        scores: (..., N, K) scores S, any float dtype, CPU or CUDA (float16/bfloat16/float32 are
            solved in float32, float64 in float64). Leading dims are independent problems, so the
            12 problems of a training step are one call.
        n_assign: r, the number of high levels (assignments per sample), 1 ≤ r ≤ K.
        eps: ε > 0 (stable down to 0.005 for |S| ≤ 1).
        n_iters: T ≥ 1.
        low_scale: c of the K − r low levels, in [0, 1].
        process_group: ``torch.distributed`` group over which the N rows are sharded; the column
            sums (over n) are all-reduced, everything else is local, and the result equals the
            single-process result on the concatenated rows. ``None``: single process.
        check_finite: raise on NaN/inf scores (one host synchronisation per call); ``False`` lets
            them propagate into the targets instead (a training loop that checks its loss).

    Returns:
        (..., N, K) float32 targets in [0, 1].
    """
    (targets,) = _multi_sk(scores, n_assign, eps, n_iters, low_scale, process_group, check_finite, outputs=1,
                           all_high=lambda problems, r: (torch.ones_like(problems),),  # P ≡ 1, degenerate rows
                           write_chunk=_write_targets)
    return targets.to(torch.float32)


def _row_min_max(high: torch.Tensor, row_sum: torch.Tensor, n_assign: int) -> torch.Tensor:
    """Targets from the row-shifted high level (B, N, K) and its row sums (B, N): P = r · high / row_sum,
    min-max normalised per row to [0, 1] (a per-row positive scale, so it is applied to ``high``).

    A degenerate row (max − min within rounding: ≤ 4 ulp of the row max) has no ordering to stretch;
    it keeps its assigned mass P itself, clamped to [0, 1] — r/K for a uniform row.
    """
    row_min = high.amin(dim=2)
    row_max = high.amax(dim=2)
    spread = row_max - row_min
    degenerate = spread <= 4 * torch.finfo(high.dtype).eps * row_max
    safe_spread = torch.where(degenerate, torch.ones_like(spread), spread)
    scale = torch.where(degenerate, n_assign / row_sum, safe_spread.reciprocal())
    offset = torch.where(degenerate, torch.zeros_like(row_min), row_min)
    # (high − min) · (1/spread): subtracting first keeps the row maximum at exactly 1.
    targets = torch.sub(high, offset.unsqueeze(2)).mul_(scale.unsqueeze(2)).clamp_(0.0, 1.0)
    return targets.to(torch.float32)


@torch.no_grad()
def multi_sinkhorn_reference(
    scores: torch.Tensor,
    n_assign: int,
    eps: float = 0.07,
    n_iters: int = 20,
    low_scale: float = 0.25,
) -> torch.Tensor:
    """SLOW REFERENCE — the literal docs/sinkhorn.md formulation on the full K × N × K tensor, one problem at a time.

    For tests and the benchmark baseline only: memory K·N·K per problem, exp domain (overflows for small
    ε), leading dims solved in a Python loop as the authors' code does.  Computes in float64 for
    float64 scores, float32 otherwise, and returns that dtype (shape (..., N, K)).  No 1e-5 is added
    to the denominators (the authors' code does; docs/sinkhorn.md states it changes results by < 1e-4).
    Degenerate rows follow the same rule as :func:`multi_sinkhorn` (P clamped to [0, 1]).
    """
    _check_multi_args(scores, n_assign, eps, n_iters, low_scale)
    n_assign, n_iters, eps, low_scale = int(n_assign), int(n_iters), float(eps), float(low_scale)
    dtype = compute_dtype(scores)
    n_rows, n_anchors = scores.shape[-2:]
    flat = scores.reshape(-1, n_rows, n_anchors).to(dtype)
    level_scale = torch.tensor([low_scale] * (n_anchors - n_assign) + [1.0] * n_assign,
                               dtype=dtype, device=scores.device)
    targets = []
    for score_matrix in flat:
        # A[μ, n, k] = exp(c_μ S[n, k] / ε), normalised to total sum 1.
        full = torch.exp(level_scale[:, None, None] * score_matrix[None] / eps)
        full /= full.sum()
        for _ in range(n_iters):
            full *= (n_rows / n_anchors) / full.sum(dim=1, keepdim=True)  # Σ_n A[μ,n,k] = N/K
            full /= full.sum(dim=0, keepdim=True)  # Σ_μ A[μ,n,k] = 1
            full /= full.sum(dim=2, keepdim=True)  # Σ_k A[μ,n,k] = 1
        assigned = full[n_anchors - n_assign:].sum(dim=0)  # P: the last r levels
        row_min = assigned.amin(dim=1, keepdim=True)
        row_max = assigned.amax(dim=1, keepdim=True)
        spread = row_max - row_min
        degenerate = spread <= 4 * torch.finfo(dtype).eps * row_max
        targets.append(torch.where(degenerate, assigned.clamp(0.0, 1.0),
                                   (assigned - row_min) / torch.where(degenerate, 1.0, spread)))
        del full
    return torch.stack(targets).reshape(scores.shape[:-2] + (n_rows, n_anchors)) if targets else \
        torch.empty(scores.shape, dtype=dtype, device=scores.device)
