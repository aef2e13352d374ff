"""Structure preservation: does the joint space keep each item's neighbours from the input space?

The paper's claim is that SSPC *preserves the semantic structure of each modality* (the structure the
pre-trained input features already have). This module measures that directly, independently of
retrieval: for N items of one modality with frozen input features ``X`` (N, d) (e.g. Lite0 picture
features, MiniLM caption embeddings) and joint embeddings ``Y`` (N, E),

    NN_k(X, i) = the k items j != i with the highest cosine similarity cos(x_i, x_j)
    J_i        = |NN_k(X, i) ∩ NN_k(Y, i)| / |NN_k(X, i) ∪ NN_k(Y, i)|        (Jaccard index)
    knn_jaccard(X, Y, k) = mean_i J_i                                          in [0, 1]

1 means every item keeps exactly its k input-space neighbours in the joint space; two unrelated
spaces give about k / (N - 1) / (2 - k / (N - 1)) (the Jaccard index of two random k-subsets, ≈ k / 2N).

Ties. Neighbours are the top-k of a stable descending sort, so among equal similarities the lower index
wins (deterministic; exact duplicates are rare in real features and the metric is an average).
Rows with zero norm have cosine 0 to everything.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Union

import numpy as np
import torch

from multisk.data.store.pooled_features import pooled_features
from multisk.modalities import MODALITY_SPECS

ArrayLike = Union[np.ndarray, torch.Tensor]

# Rows per processed block: a (block, N) similarity matrix stays <= 4M elements.
_CHUNK_ELEMENTS = 1 << 22


def _as_float64(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        tensor = x.detach().cpu()
    elif isinstance(x, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(x))
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if tensor.ndim != 2:
        raise ValueError(f"{name}: expected an (N, dim) matrix, got shape {tuple(tensor.shape)}")
    tensor = tensor.to(torch.float64)
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return tensor


def nearest_neighbours(x: ArrayLike, k: int) -> np.ndarray:
    """(N, k) int64 indices of each row's k most cosine-similar other rows (self excluded).

    Sorted by decreasing similarity; ties go to the lower index (stable sort).
    """
    features = _as_float64(x, "x")
    n = features.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k: must be in [1, N - 1] = [1, {n - 1}], got {k}")
    unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-300)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    result = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sims = unit[start:stop] @ unit.T
        rows = torch.arange(stop - start)
        sims[rows, rows + start] = -torch.inf  # an item is not its own neighbour
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]
        result[start:stop] = order.numpy()
    return result


def knn_jaccard_per_item(reference: ArrayLike, joint: ArrayLike, k: int = 10) -> np.ndarray:
    """(N,) Jaccard index of each item's k-NN sets in ``reference`` (N, d) and ``joint`` (N, E)."""
    ref = _as_float64(reference, "reference")
    emb = _as_float64(joint, "joint")
    if ref.shape[0] != emb.shape[0]:
        raise ValueError(f"reference has {ref.shape[0]} rows but joint has {emb.shape[0]}; row i must be item i in both")
    ref_nn = nearest_neighbours(ref, k)
    emb_nn = nearest_neighbours(emb, k)
    # each row of each set holds k distinct indices, so in the sorted concatenation an index shared by
    # both sets appears exactly twice, side by side: the intersection is the count of equal neighbours
    both = np.sort(np.concatenate([ref_nn, emb_nn], axis=1), axis=1)
    intersection = np.count_nonzero(both[:, 1:] == both[:, :-1], axis=1)
    return intersection / (2 * k - intersection)


def knn_jaccard(reference: ArrayLike, joint: ArrayLike, k: int = 10) -> float:
    """Mean over items of the k-NN Jaccard index (module docstring); in [0, 1]."""
    return float(np.mean(knn_jaccard_per_item(reference, joint, k)))


def structure_preservation(dataset, joint: Mapping[str, Any], nonempty: Mapping[str, Any],
                           k: int = 10) -> Dict[str, Dict[str, float]]:
    """Mean k-NN Jaccard (:func:`multisk.metrics.structure.knn_jaccard`) between each modality's frozen
    input features and its joint embeddings, over the items of one split that have the modality.

    Args:
        dataset: a :class:`multisk.data.store.dataset.FeatureStoreDataset` (its ``store`` and
            ``modality_map`` name the frozen features the model read: the text reference is the text
            modality the model was trained on, e.g. MiniLM or GloVe).
        joint: model modality -> (N, E) joint embeddings (``embed_dataset(...)["joint"]``).
        nonempty: model modality -> (N,) bool.

    Returns:
        ``{modality: {"knn_jaccard": value, "k": k, "n_items": n}}`` for ``text`` / ``video`` /
        ``audio`` when at least ``k + 1`` items have the modality.
    """
    result: Dict[str, Dict[str, float]] = {}
    store = dataset.store
    # every row of the dataset's modality table (built-in rows and model.modality_specs) the model has
    for modality in getattr(dataset, "modality_table", MODALITY_SPECS):
        name = dataset.modality_map.get(modality)
        if modality not in joint or name is None or name not in store.modalities:
            continue
        reference, present = pooled_features(store, name)
        flags = nonempty.get(modality)
        if flags is not None:
            present = present & np.asarray(flags.cpu() if hasattr(flags, "cpu") else flags, dtype=bool)
        if present.sum() < k + 1:
            continue
        embedding = joint[modality]
        embedding = np.asarray(embedding.detach().cpu() if hasattr(embedding, "detach") else embedding)
        result[modality] = {"knn_jaccard": knn_jaccard(reference[present], embedding[present], k),
                            "k": k, "n_items": int(present.sum())}
    return result


__all__ = ["knn_jaccard", "knn_jaccard_per_item", "nearest_neighbours", "structure_preservation"]
