"""Retrieval metrics exactly as the field reports them (docs/evaluation.md).

Protocol. ``sims`` is a (Q, N) similarity matrix: row q holds the scores of query q against the N
gallery items; the true item of query q is column q (the diagonal). The rank of the true item is
0-based with **ties averaged**: if ``g`` gallery items score strictly higher than the true item and
``e`` *other* items score exactly the same, the true item occupies one of the positions g .. g+e and
its rank is their mean::

    rank_q = #{j : S[q, j] > S[q, q]} + #{j != q : S[q, j] == S[q, q]} / 2

so a tie of two at the top ranks 0.5. From the ranks (Q present queries, C >= Q the complete dataset
size, C = Q when not given)::

    R@1   = 100 / C * #{q : rank_q == 0}           (a tied top does NOT count)
    R@k   = 100 / C * #{q : rank_q <  k}           k = 5, 10, 50
    MedR  = median_q (rank_q + 1)                  over the Q present queries only
    MeanR = mean_q   (rank_q + 1)

Dividing by C > Q counts the C - Q items missing from the evaluation set as misses (MSR-VTT: 968 of
1000 test clips exist, published numbers divide by 1000).

Multiple correct answers. ``positives`` (Q, N) bool marks every correct gallery item of each query
(for example all items whose caption is identical). It *replaces* the diagonal, so it must mark the
true item itself. The query is scored by its best-scoring positive ``b_q = max_{j in P_q} S[q, j]``,
ranked among the non-positive items only: the other positives are removed from the ranking (the
usual choice: finding any correct answer is a hit, and a second correct answer is never a
distractor)::

    rank_q = #{j not in P_q : S[q, j] > b_q} + #{j not in P_q : S[q, j] == b_q} / 2

With ``positives`` equal to the identity this is the single-answer rank above.

Implementation: vectorised over queries, processed in chunks of rows so that a (chunk, N) block
stays small. Ties are detected exactly: the scores are only compared, never combined arithmetically,
and compared in a dtype that represents every input value exactly — float64 and float32 as given,
float16 / bfloat16 upcast to float32, integers as given. (Upcasting float32 to float64 is exact and
order-preserving, so it would give identical ranks at 2.5x the cost; what does matter is computing
the similarities themselves at adequate precision — ties created by rounding a half-precision matmul
are real ties for this function.)
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]

# Recall levels reported by retrieval_metrics (docs/evaluation.md).
RECALL_LEVELS = (1, 5, 10, 50)
# Elements of one (chunk, N) block: 4M elements = 16 MiB in float32.
_CHUNK_ELEMENTS = 1 << 22


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def retrieval_ranks(
    sims: ArrayLike,
    positives: Optional[ArrayLike] = None,
    chunk_size: Optional[int] = None,
) -> np.ndarray:
    """0-based, tie-averaged rank of the true item for every query (see the module docstring).

    Args:
        sims: (Q, N) similarities, torch tensor (any device, any float dtype) or numpy array.
            Without ``positives`` the true item of query q is column q, so Q <= N is required.
        positives: optional (Q, N) bool; True marks every correct item of a query (must include
            the true item; every row needs at least one True).
        chunk_size: queries per processed block; default keeps a (chunk, N) block <= 4M elements.

    Returns:
        (Q,) float64 numpy array of ranks; values are multiples of 0.5 in [0, N - 1].
    """
    scores = _as_tensor(sims, "sims")
    if scores.ndim != 2:
        raise ValueError(f"sims: expected a 2-D (queries, gallery) matrix, got shape {tuple(scores.shape)}")
    if scores.dtype in (torch.float16, torch.bfloat16):
        compare_dtype = torch.float32  # exact upcast; CPU half comparisons are slow
    elif scores.dtype in (torch.float32, torch.float64, torch.int32, torch.int64):
        compare_dtype = scores.dtype
    else:
        raise ValueError(f"sims: expected a float or integer matrix, got dtype {scores.dtype}")
    num_queries, gallery_size = scores.shape
    if num_queries == 0 or gallery_size == 0:
        raise ValueError(f"sims: empty similarity matrix of shape {tuple(scores.shape)}")
    if positives is None:
        if num_queries > gallery_size:
            raise ValueError(
                f"sims: {num_queries} queries but only {gallery_size} gallery items; without `positives` "
                "the true item of query q is column q, so queries <= gallery is required"
            )
        positive_mask = None
    else:
        positive_mask = _as_tensor(positives, "positives")
        if tuple(positive_mask.shape) != tuple(scores.shape):
            raise ValueError(
                f"positives: shape {tuple(positive_mask.shape)} does not match sims {tuple(scores.shape)}"
            )
        if positive_mask.dtype != torch.bool:
            raise ValueError(f"positives: expected a bool matrix, got dtype {positive_mask.dtype}")
        positive_mask = positive_mask.to(scores.device)
        rows_without_positive = (~positive_mask.any(dim=1)).nonzero().flatten()
        if rows_without_positive.numel():
            raise ValueError(
                f"positives: {rows_without_positive.numel()} queries have no positive item "
                f"(first: query {int(rows_without_positive[0])}); every query needs its true item marked"
            )
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // gallery_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")

    ranks = torch.empty(num_queries, dtype=torch.float64, device=scores.device)
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        block = scores[start:stop].to(compare_dtype)
        # amax / amin propagate NaN and expose +-inf: two cheap reductions instead of isfinite().all()
        if block.is_floating_point() and not (
            torch.isfinite(block.amax()) and torch.isfinite(block.amin())
        ):
            bad = (~torch.isfinite(block)).nonzero()[0]
            raise ValueError(
                f"sims: non-finite score at query {start + int(bad[0])}, item {int(bad[1])}; "
                "ranks are undefined"
            )
        rows = torch.arange(stop - start, device=scores.device)
        if positive_mask is None:
            # true score = diagonal; the true item itself is the one tie that is not "another" item
            true_score = block[rows, rows + start].unsqueeze(1)
            higher = (block > true_score).sum(dim=1)
            tied_others = (block == true_score).sum(dim=1) - 1
        else:
            is_positive = positive_mask[start:stop]
            lowest = float("-inf") if block.is_floating_point() else torch.iinfo(block.dtype).min
            best_positive = block.masked_fill(~is_positive, lowest).amax(dim=1, keepdim=True)
            is_negative = ~is_positive
            higher = ((block > best_positive) & is_negative).sum(dim=1)
            tied_others = ((block == best_positive) & is_negative).sum(dim=1)
        ranks[start:stop] = higher.to(torch.float64) + tied_others.to(torch.float64) / 2.0
    return ranks.cpu().numpy()


def _denominator(num_queries: int, complete_dataset_size: Optional[int]) -> int:
    if complete_dataset_size is None:
        return num_queries
    if int(complete_dataset_size) != complete_dataset_size or complete_dataset_size < num_queries:
        raise ValueError(
            f"complete_dataset_size: must be an integer >= the {num_queries} queries present, "
            f"got {complete_dataset_size}"
        )
    return int(complete_dataset_size)


def recall_at_k(ranks: ArrayLike, k: int, complete_dataset_size: Optional[int] = None) -> float:
    """Percentage of queries found within the top k (docs/evaluation.md).

    ``k == 1`` counts ranks exactly 0 (a tie at the top is not a hit); ``k > 1`` counts ranks < k.
    The percentage is over ``complete_dataset_size`` when given (missing queries are misses).
    """
    rank_array = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    denominator = _denominator(rank_array.size, complete_dataset_size)
    if denominator == 0:
        raise ValueError("ranks: no queries")
    hits = np.count_nonzero(rank_array == 0) if k == 1 else np.count_nonzero(rank_array < k)
    return 100.0 * float(hits) / denominator


def recall_curve(
    ranks: ArrayLike, ks: Iterable[int] = range(1, 101), complete_dataset_size: Optional[int] = None
) -> np.ndarray:
    """R@k for every k in ``ks`` (same rules as :func:`recall_at_k`); returns a float64 array."""
    return np.array([recall_at_k(ranks, int(k), complete_dataset_size) for k in ks], dtype=np.float64)


def metrics_from_ranks(
    ranks: ArrayLike,
    complete_dataset_size: Optional[int] = None,
    recall_levels: Sequence[int] = RECALL_LEVELS,
) -> Dict[str, float]:
    """R@k (%), MedR and MeanR (of rank + 1, over present queries) and n_queries from (Q,) ranks."""
    rank_array = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if rank_array.size == 0:
        raise ValueError("ranks: no queries to score")
    metrics: Dict[str, float] = {
        f"R{k}": recall_at_k(rank_array, k, complete_dataset_size) for k in recall_levels
    }
    metrics["MedR"] = float(np.median(rank_array + 1.0))
    metrics["MeanR"] = float(np.mean(rank_array + 1.0))
    metrics["n_queries"] = int(rank_array.size)
    return metrics


def retrieval_metrics(
    sims: ArrayLike,
    complete_dataset_size: Optional[int] = None,
    positives: Optional[ArrayLike] = None,
) -> Dict[str, float]:
    """Retrieval metrics of a (Q, N) similarity matrix whose ground truth is the diagonal.

    Args:
        sims: (Q, N) similarities (torch or numpy); query q's true item is column q.
        complete_dataset_size: C >= Q; R@k percentages are divided by C (missing items are misses).
        positives: optional (Q, N) bool of all correct items per query (replaces the diagonal; see
            the module docstring for the rank it implies).

    Returns:
        ``{"R1", "R5", "R10", "R50"}`` in percent, ``"MedR"``, ``"MeanR"`` (of rank + 1, over the Q
        present queries) and ``"n_queries"`` (Q).
    """
    ranks = retrieval_ranks(sims, positives=positives)
    return metrics_from_ranks(ranks, complete_dataset_size)


__all__ = [
    "RECALL_LEVELS", "metrics_from_ranks", "recall_at_k", "recall_curve", "retrieval_metrics",
    "retrieval_ranks",
]
