"""Zero-shot classification by cosine similarity to class-name embeddings.

The reference only had configuration stubs for UCF101 / HMDB zero-shot classification; the
protocol here: embed every class name with the text branch, embed every item (typically by late
fusion v+a), and predict the class whose embedding has the highest cosine similarity::

    S[i, c] = n(x_i) · n(w_c)ᵀ          n(u) = u / ||u||

The rank of the true class uses the same tie rule as retrieval (docs/evaluation.md): classes scoring higher
than the true class plus half of the other classes scoring exactly the same. Top-1 counts rank 0
exactly (a tie at the top is not a hit), top-k counts rank < k. With fewer than 5 classes, top-5
is computed over all classes (and is then 100).
"""

from __future__ import annotations

from typing import Dict, Union

import numpy as np
import torch

from multisk.metrics.retrieval import _as_tensor, retrieval_ranks

ArrayLike = Union[np.ndarray, torch.Tensor]


def _normalize_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def zero_shot_classification(
    item_embeddings: ArrayLike, class_embeddings: ArrayLike, labels: ArrayLike
) -> Dict[str, float]:
    """Top-1 / top-5 accuracy and mean per-class accuracy of nearest-class-by-cosine prediction.

    Args:
        item_embeddings: (N, E) item embeddings (any scale; L2-normalised here).
        class_embeddings: (C, E) class-name embeddings.
        labels: (N,) integer class index in [0, C) of every item.

    Returns:
        ``top1`` and ``top5`` (% of items), ``mean_per_class`` (% top-1 averaged over the classes
        that occur in ``labels``), ``n_items``, ``n_classes``.
    """
    items = _as_tensor(item_embeddings, "item_embeddings").to(torch.float32)
    classes = _as_tensor(class_embeddings, "class_embeddings").to(torch.float32).to(items.device)
    label_array = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if items.ndim != 2 or classes.ndim != 2:
        raise ValueError(
            f"item_embeddings {tuple(items.shape)} and class_embeddings {tuple(classes.shape)} must be 2-D"
        )
    if items.shape[1] != classes.shape[1]:
        raise ValueError(
            f"class_embeddings: width {classes.shape[1]} differs from item_embeddings width {items.shape[1]}"
        )
    if items.shape[0] == 0 or classes.shape[0] == 0:
        raise ValueError("item_embeddings / class_embeddings: need at least one item and one class")
    if label_array.shape != (items.shape[0],):
        raise ValueError(f"labels: expected shape ({items.shape[0]},), got {label_array.shape}")
    if not np.issubdtype(label_array.dtype, np.integer):
        raise ValueError(f"labels: expected integer class indices, got dtype {label_array.dtype}")
    num_classes = classes.shape[0]
    if label_array.min() < 0 or label_array.max() >= num_classes:
        raise ValueError(
            f"labels: class indices must lie in [0, {num_classes}), got {label_array.min()}..{label_array.max()}"
        )

    sims = _normalize_rows(items) @ _normalize_rows(classes).T  # (N, C)
    label_tensor = torch.as_tensor(label_array, dtype=torch.long, device=sims.device)
    is_true_class = torch.zeros_like(sims, dtype=torch.bool)
    is_true_class[torch.arange(sims.shape[0], device=sims.device), label_tensor] = True
    ranks = retrieval_ranks(sims, positives=is_true_class)

    correct_top1 = ranks == 0
    top_k = min(5, num_classes)
    per_class = [correct_top1[label_array == c].mean() for c in np.unique(label_array)]
    return {
        "top1": 100.0 * float(correct_top1.mean()),
        "top5": 100.0 * float((ranks < top_k).mean()),
        "mean_per_class": 100.0 * float(np.mean(per_class)),
        "n_items": int(sims.shape[0]),
        "n_classes": int(num_classes),
    }


__all__ = ["zero_shot_classification"]
