"""multisk.metrics: retrieval metrics (SPEC §7) and zero-shot classification."""

from multisk.metrics.classification import zero_shot_classification
from multisk.metrics.retrieval import (
    RECALL_LEVELS,
    metrics_from_ranks,
    recall_at_k,
    recall_curve,
    retrieval_metrics,
    retrieval_ranks,
)

__all__ = [
    "RECALL_LEVELS", "metrics_from_ranks", "recall_at_k", "recall_curve", "retrieval_metrics",
    "retrieval_ranks", "zero_shot_classification",
]
