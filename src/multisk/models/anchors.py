"""Anchor heads (docs/losses.md): learnable anchor sets whose cosine similarities to an embedding are the
"assignment scores" used by the structure-preserving consistency loss.

For every modality m there are two sets, each a (K × dim) matrix used row-L2-normalised:

* input-space anchors ``Z_m`` (K × embed_dim) for the input embedding of modality m (the normalised
  masked mean of its projected tokens, before the transformer);
* joint-space anchors ``Ẑ_m`` (K × projection_dim) for any normalised joint embedding.

``scores(x, Z) = x · n(Z)ᵀ`` with ``n`` the row-wise L2 normalisation; for unit rows ``x`` the scores
are cosine similarities in [-1, 1]. They are computed in IEEE float32 (autocast off, TF32 off:
:func:`multisk.precision.exact_float32`): Multi-SK divides them by a small ε (0.07), which
would amplify bf16 rounding (≈ 4e-3) to ≈ 0.06 in the exponent, TF32's (≈ 5e-4) to ≈ 7e-3.
"""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multisk.precision import exact_float32


def anchor_scores(x: Tensor, anchors: Tensor) -> Tensor:
    """``x · n(anchors)ᵀ`` in IEEE float32. ``x`` (N, dim), ``anchors`` (K, dim) → (N, K)."""
    with exact_float32(x.device):
        return x.to(torch.float32) @ F.normalize(anchors.to(torch.float32), dim=1).t()


class AnchorHeads(nn.Module):
    """The six anchor sets of docs/losses.md (two per modality).

    ``input_anchors[m]`` (K, D_m: embed_dim, or the modality's frozen pooled width) and
    ``joint_anchors[m]`` (K, projection_dim) are ``nn.ParameterDict`` entries; :meth:`input_scores` /
    :meth:`joint_scores` apply them to any rows (batch embeddings or queue rows).
    """

    def __init__(self, modalities: Sequence[str], embed_dim: Union[int, Mapping[str, int]], projection_dim: int,
                 num_anchors: int) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.num_anchors = num_anchors
        # one width for all (the projected input space) or one per modality (model.input_space: frozen)
        input_dims = {m: int(embed_dim[m]) if isinstance(embed_dim, Mapping) else int(embed_dim) for m in self.modalities}
        self.input_anchors = nn.ParameterDict(
            {m: nn.Parameter(torch.empty(num_anchors, input_dims[m])) for m in self.modalities}
        )
        self.joint_anchors = nn.ParameterDict(
            {m: nn.Parameter(torch.empty(num_anchors, projection_dim)) for m in self.modalities}
        )

    def input_scores(self, modality: str, x: Tensor) -> Tensor:
        """Scores of input embeddings ``x`` (N, D_m) on ``Z_modality``: (N, K) float32."""
        return anchor_scores(x, self.input_anchors[modality])

    def joint_scores(self, modality: str, x: Tensor) -> Tensor:
        """Scores of joint embeddings ``x`` (N, projection_dim) on ``Ẑ_modality``: (N, K) float32."""
        return anchor_scores(x, self.joint_anchors[modality])


__all__ = ["AnchorHeads", "anchor_scores"]
