"""Top-k cosine search over an index's gallery: exact up to :data:`EXACT_LIMIT` rows, approximate beyond.

Both take L2-normalised rows, so cosine is the inner product ``s_i = <q, g_i>``.

* Exact (:class:`ExactSearch`): one matrix product ``S = Q G^T`` (Q queries x N rows) and a top-k per
  query. It reads the whole gallery per query, so its time grows with N: ``benchmarks/bench_search.py``
  measured 66-75 ms per query at 100k rows of 256 dimensions and 0.9-1.2 s at 1M on the 2-core
  development machine under shared load (docs/benchmarks.md). Collections up to :data:`EXACT_LIMIT`
  rows are searched exactly (a query then stays under ~0.1 s there, and recall is 1).
* Approximate (:class:`ApproximateSearch`): a faiss inverted-file index (``IndexIVFFlat`` with the
  inner-product metric): k-means with ``nlist = sqrt(N)`` cells trained on ``64 nlist`` sampled rows,
  each query scanning the ``nprobe`` cells whose centroids are nearest. Scores of the rows it returns are
  exact (flat storage); it may miss a true neighbour in a cell it did not scan, which the benchmark
  measures as recall@10 against exact search.

faiss (``faiss-cpu``, the ``search`` extra) is imported only for a collection above the limit.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

from multisk.errors import ConfigError

EXACT_LIMIT = 100_000  # rows; chosen from benchmarks/bench_search.py (module docstring)
DEFAULT_NPROBE = 32


class ExactSearch:
    """Exact top-k inner product over ``gallery`` (N, E) float32 rows."""

    kind = "exact"

    def __init__(self, gallery: np.ndarray) -> None:
        self.gallery = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(scores (Q, k) float32 descending, rows (Q, k) int64)`` of queries (Q, E)."""
        k = min(k, self.gallery.shape[0])
        query = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        scores = (self.gallery @ query.T).T  # (N, E) @ (E, Q): the rows are read once, in order
        top = torch.topk(scores, k, dim=1)
        return top.values.numpy(), top.indices.numpy()


class ApproximateSearch:
    """faiss ``IndexIVFFlat`` (inner product) over ``gallery`` (N, E) rows (module docstring)."""

    kind = "approximate"

    def __init__(self, gallery: np.ndarray, *, nlist: Optional[int] = None, nprobe: int = DEFAULT_NPROBE,
                 seed: int = 0) -> None:
        try:
            import faiss
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ConfigError(f"an index of {len(gallery)} items is searched with faiss, which is not installed "
                              f"(pip install 'multisk[search]' or faiss-cpu): {err}") from None
        rows = np.ascontiguousarray(gallery, dtype=np.float32)
        count, dim = rows.shape
        self.nlist = int(nlist or max(1, min(count // 39, int(math.sqrt(count)))))
        train_size = min(count, 64 * self.nlist)  # faiss wants 39 to 256 training rows per cell
        quantizer = faiss.IndexFlatIP(dim)
        self.index = faiss.IndexIVFFlat(quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        sample = rows
        if count > train_size:
            sample = rows[np.sort(np.random.default_rng(seed).choice(count, train_size, replace=False))]
        self.index.train(sample)
        self.index.add(rows)
        self.index.nprobe = min(nprobe, self.nlist)

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(scores (Q, k), rows (Q, k))``; rows -1 (score -inf) where fewer than k were found."""
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
        return scores, rows.astype(np.int64)


class GallerySearch:
    """Search over the valid rows of a gallery: ``search`` returns row numbers of the full gallery.

    ``gallery`` (N, E) L2-normalised, ``valid`` (N,) bool; ``exact_limit``: above this many valid rows
    the approximate index is built (``None``: :data:`EXACT_LIMIT`).
    """

    def __init__(self, gallery, valid, *, exact_limit: Optional[int] = None, nprobe: int = DEFAULT_NPROBE) -> None:
        gallery = gallery.numpy() if torch.is_tensor(gallery) else np.asarray(gallery)
        valid = valid.numpy() if torch.is_tensor(valid) else np.asarray(valid, dtype=bool)
        self.rows = np.flatnonzero(valid)
        limit = EXACT_LIMIT if exact_limit is None else exact_limit
        chosen = gallery[self.rows]
        self.engine = ExactSearch(chosen) if len(self.rows) <= limit else ApproximateSearch(chosen, nprobe=nprobe)

    @property
    def kind(self) -> str:
        return self.engine.kind

    def __len__(self) -> int:
        return len(self.rows)

    def search(self, queries, k: int) -> Tuple[np.ndarray, np.ndarray]:
        queries = queries.numpy() if torch.is_tensor(queries) else np.asarray(queries)
        scores, local = self.engine.search(queries.reshape(-1, queries.shape[-1]), min(k, len(self.rows)))
        return scores, np.where(local >= 0, self.rows[np.clip(local, 0, None)], -1)


__all__ = ["ApproximateSearch", "DEFAULT_NPROBE", "EXACT_LIMIT", "ExactSearch", "GallerySearch"]
