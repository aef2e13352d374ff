"""Building blocks of the Everything-at-Once model family (docs/architecture.md).

* :class:`GatedEmbeddingUnit` — linear map followed by context gating,
  ``y = W1 x + b1;  y = y * sigmoid(W2 y + b2)`` (Miech et al.), used for the token projections and
  the final per-modality projections.
* :class:`FusionBlock` — a pre-LN transformer block whose self-attention runs through
  :func:`torch.nn.functional.scaled_dot_product_attention` with a key-padding mask.
* :func:`masked_mean` — mean over the valid tokens of a sequence, accumulated in float32.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multisk.precision import autocast_disabled  # re-exported: the model's float32 islands

LAYER_NORM_EPS = 1e-6  # the EAO reference uses eps=1e-6 for every LayerNorm


class GatedEmbeddingUnit(nn.Module):
    """Linear projection with context gating.

    ``y = W1 x + b1``, then ``out = y * sigmoid(W2 y + b2)``.

    Shapes: ``x`` (..., in_dim) -> (..., out_dim). ``W1`` is ``linear`` (in_dim -> out_dim), ``W2`` is
    ``gate`` (out_dim -> out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.linear = nn.Linear(in_dim, out_dim)
        self.gate = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(x)
        return y * torch.sigmoid(self.gate(y))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}"


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention with a key-padding mask.

    ``softmax(Q Kᵀ / sqrt(d_head) + M) V`` per head, where ``M[b, i, j] = -inf`` when token ``j`` of
    sample ``b`` is padding. Computed by :func:`F.scaled_dot_product_attention` (flash / memory-efficient
    kernels on CUDA, fused CPU kernel) with a boolean mask of shape (B, 1, 1, L) broadcast over heads
    and queries; the softmax accumulates in float32 inside the kernel under autocast.

    Every row must have at least one valid key (the model guarantees this with a masking token),
    otherwise the softmax of that row is undefined.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads {num_heads} does not divide dim {dim}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        """``x`` (B, L, D); ``key_mask`` (B, L) bool, True = valid token. Returns (B, L, D)."""
        batch, length, dim = x.shape
        # (B, L, 3, H, Dh) -> (3, B, H, L, Dh)
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(batch, length, dim)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    """``fc2(dropout(GELU(fc1(x))))`` with hidden width ``hidden_dim``; (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class AutocastLayerNorm(nn.LayerNorm):
    """LayerNorm whose input and output stay in the autocast dtype when ``autocast_output`` is set (a
    memory option, ``model.norm_outputs_in_autocast_dtype``).

    CUDA autocast casts LayerNorm's input to float32 (autograd then keeps that float32 copy for
    backward) and returns float32, so the residual stream after it is float32 in a bf16 run too. With
    the flag, under autocast, the layer runs the native kernel on the half-precision input with the
    float32 weight and bias (mixed-dtype LayerNorm: statistics accumulated in float32, output rounded
    once to the autocast dtype — the precision the next matmul rounds it to anyway); the residual
    additions after it then run in that dtype. Without autocast, or with the flag off, it is exactly
    ``nn.LayerNorm``.
    """

    def __init__(self, dim: int, eps: float = LAYER_NORM_EPS, autocast_output: bool = False) -> None:
        super().__init__(dim, eps=eps)
        self.autocast_output = autocast_output

    def forward(self, x: Tensor) -> Tensor:
        device_type = x.device.type
        if self.autocast_output and torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            with autocast_disabled(x.device):
                return F.layer_norm(x.to(dtype), self.normalized_shape, self.weight, self.bias, self.eps)
        return super().forward(x)


class FusionBlock(nn.Module):
    """Pre-LN transformer block.

    ``x = x + Attn(LN1(x), mask);  x = x + MLP(LN2(x))`` with LayerNorm eps 1e-6 and a GELU MLP of
    hidden width ``int(dim * mlp_ratio)``. Shapes: ``x`` (B, L, D), ``key_mask`` (B, L) bool.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, dropout: float = 0.0,
        norm_autocast_output: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = AutocastLayerNorm(dim, eps=LAYER_NORM_EPS, autocast_output=norm_autocast_output)
        self.attn = MaskedSelfAttention(dim, num_heads, qkv_bias=qkv_bias, dropout=dropout)
        self.norm2 = AutocastLayerNorm(dim, eps=LAYER_NORM_EPS, autocast_output=norm_autocast_output)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout)

    def forward(self, x: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of the valid tokens, in float32.

    ``out[b] = Σ_l mask[b, l] · tokens[b, l] / max(1, Σ_l mask[b, l])``.

    ``tokens`` (B, L, D) any float dtype, ``mask`` (B, L) bool or 0/1 float. Returns (B, D) float32
    (float32 so that long sums under bf16/fp16 autocast do not lose precision). A row without any
    valid token gives zeros.

    Computed as ``Σ_l (mask · tokens)`` with float32 accumulation: the 0/1 products are exact in any
    dtype, and autograd keeps only the mask for backward — not a float32 copy of half-precision tokens
    (a batched matmul of the upcast tokens would save that copy: 0.7 GiB for the paper's text tokens).
    """
    with autocast_disabled(tokens.device):
        weights = mask.to(torch.float32)
        total = (tokens * weights.unsqueeze(2).to(tokens.dtype)).sum(dim=1, dtype=torch.float32)
        count = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        return total / count


__all__ = [
    "AutocastLayerNorm", "FusionBlock", "GatedEmbeddingUnit", "autocast_disabled", "LAYER_NORM_EPS", "MaskedSelfAttention", "Mlp", "masked_mean",
]
