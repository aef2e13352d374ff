"""multisk.losses — contrastive (NormSoftmax, MMS, combinatorial), queues, SSPC, the training objective.

See docs/losses.md for the equations, the SSPC term table, the DDP gradient-scaling argument and the
queue semantics.
"""

from multisk.losses.contrastive import (
    MMS,
    CombinatorialContrastiveLoss,
    ContrastiveCriterion,
    MaxMarginSoftmax,
    NormSoftmax,
    build_criterion,
)
from multisk.losses.collectives import (
    all_gather_no_grad,
    all_gather_with_grad,
    is_distributed,
    rank,
    world_size,
)
from multisk.losses.objective import TrainingObjective
from multisk.losses.queue import EmbeddingQueue
from multisk.losses.structure_preserving import SSPCTerm, StructurePreservingLoss, build_term_table

__all__ = [
    "MMS",
    "CombinatorialContrastiveLoss",
    "ContrastiveCriterion",
    "EmbeddingQueue",
    "MaxMarginSoftmax",
    "NormSoftmax",
    "SSPCTerm",
    "StructurePreservingLoss",
    "TrainingObjective",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "build_criterion",
    "build_term_table",
    "is_distributed",
    "rank",
    "world_size",
]
