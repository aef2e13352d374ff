"""multisk.sinkhorn — Sinkhorn-Knopp solvers that produce the SSPC targets (docs/sinkhorn.md).

- :func:`multi_sinkhorn`: Multi-Assignment Sinkhorn-Knopp, exact two-level form, batched, log domain.
- :func:`multi_sinkhorn_two_level`: the same, returning the un-normalised two-level tensor.
- :func:`sinkhorn`: classic SwAV Sinkhorn-Knopp (one assignment per sample).
- :func:`multi_sinkhorn_reference`: the SLOW literal K × N × K formulation (tests / benchmark baseline).
"""

from multisk.sinkhorn.classic import sinkhorn
from multisk.sinkhorn.multi_assignment import (
    TwoLevelPlan,
    multi_sinkhorn,
    multi_sinkhorn_reference,
    multi_sinkhorn_two_level,
)

__all__ = ["TwoLevelPlan", "multi_sinkhorn", "multi_sinkhorn_reference", "multi_sinkhorn_two_level", "sinkhorn"]
