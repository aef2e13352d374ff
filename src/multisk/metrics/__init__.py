"""multisk.metrics: retrieval metrics and ranks, retrieval in every direction, zero-shot classification,
structure preservation (docs/evaluation.md)."""

from multisk.metrics.classification import zero_shot_classification
from multisk.metrics.directions import ALL_DIRECTIONS, available_directions, direction_ranks, evaluate_directions
from multisk.metrics.retrieval import (
    RECALL_LEVELS,
    metrics_from_ranks,
    recall_at_k,
    recall_curve,
    retrieval_metrics,
    retrieval_ranks,
)

__all__ = [
    "ALL_DIRECTIONS", "available_directions", "direction_ranks", "evaluate_directions", "RECALL_LEVELS", "metrics_from_ranks", "recall_at_k", "recall_curve", "retrieval_metrics",
    "retrieval_ranks", "zero_shot_classification",
]
