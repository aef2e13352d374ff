"""The fusion transformer of Everything-at-Once (docs/architecture.md).

One or more token sequences ("segments", e.g. the text tokens, or the text tokens followed by the
video tokens) are concatenated, optionally preceded by a learned CLS token, and run through ``depth``
pre-LN :class:`~multisk.models.layers.FusionBlock` s with a key-padding mask. The output of each
segment is the masked mean of its output tokens (float32); with a CLS token the CLS output is also
returned.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from multisk.models.layers import FusionBlock, masked_mean


class FusionOutput(NamedTuple):
    """``pooled[i]`` (B, D) float32: masked mean of segment i's output tokens;
    ``cls`` (B, D) CLS output, or None without a CLS token."""

    pooled: List[Tensor]
    cls: Optional[Tensor]


class FusionTransformer(nn.Module):
    """``depth`` pre-LN blocks over concatenated token segments.

    Each segment is ``(tokens (B, L_i, D), mask (B, L_i) bool)``; the transformer attends over all
    ``Σ L_i`` (+1 with CLS) tokens, padding excluded as keys. Every sample must have at least one valid
    token over all segments (the model inserts a masking token for an empty modality).
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int = 1,
        num_heads: int = 64,
        mlp_ratio: float = 1.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        use_cls_token: bool = False,
        norm_autocast_output: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.cls_token = nn.Parameter(torch.zeros(embed_dim)) if use_cls_token else None
        self.blocks = nn.ModuleList(
            FusionBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, dropout=dropout,
                        norm_autocast_output=norm_autocast_output)
            for _ in range(depth)
        )

    def forward(self, segments: Sequence[Tuple[Tensor, Tensor]]) -> FusionOutput:
        if len(segments) == 1:  # no copy: the tokens are saved for backward already (input embedding)
            tokens, mask = segments[0]
        else:
            tokens = torch.cat([seg_tokens for seg_tokens, _ in segments], dim=1)
            mask = torch.cat([seg_mask for _, seg_mask in segments], dim=1)
        offset = 0
        if self.cls_token is not None:
            batch = tokens.shape[0]
            cls = self.cls_token.to(tokens.dtype).expand(batch, 1, -1)
            tokens = torch.cat([cls, tokens], dim=1)
            mask = torch.cat([mask.new_ones(batch, 1), mask], dim=1)
            offset = 1
        for block in self.blocks:
            tokens = block(tokens, mask)
        pooled = []
        for seg_tokens, seg_mask in segments:
            length = seg_tokens.shape[1]
            pooled.append(masked_mean(tokens[:, offset:offset + length], seg_mask))
            offset += length
        cls_out = tokens[:, 0] if self.cls_token is not None else None
        return FusionOutput(pooled, cls_out)


__all__ = ["FusionOutput", "FusionTransformer"]
