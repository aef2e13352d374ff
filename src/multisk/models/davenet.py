"""Residual DAVEnet audio encoders (Harwath et al.), as used by Everything-at-Once (docs/architecture.md).

The reference writes these networks with ``nn.Conv2d`` on an NCHW tensor of height 1: a stem
``Conv2d(1 → C0, kernel (n_mels, 1))`` that collapses the mel axis, then residual stages of
``(1 × k)`` convolutions. Mathematically the stem is a kernel-1 ``Conv1d`` over the mel bins as input
channels, and every ``(1 × k)`` ``Conv2d`` is a ``Conv1d`` with kernel ``k``; this module uses the
1-D forms directly on (B, C, T) tensors (same weights up to a reshape, same outputs), which keeps
cuDNN on tensor-core kernels and avoids NCHW↔NHWC conversions.

Architecture (``stem_width`` C0, stage widths C1..Cs, blocks per stage n1..ns, kernel k = 9):

    x (B, n_mels, F) → Conv1d(n_mels → C0, 1) → BN → ReLU
      → for each stage i: n_i residual blocks, the first with stride 2 (and a 1×1 strided
        projection shortcut), i.e. block(x) = ReLU(BN(conv_k(ReLU(BN(conv_k,stride(x))))) + shortcut(x))
      → tokens (B, ceil(F / 2^s), Cs)

* DAVEnet v2 (EAO's default, ``davenet_v2``): C0 = 128, widths 128, 256, 512, 1024, 2048, 4096,
  blocks 2, 2, 1, 1, 1, 1 → one 4096-d token per 64 frames (0.64 s at 100 frames/s).
* DAVEnet v1 (``davenet_v1``): the ResDAVEnet of Harwath et al. (ICLR 2020) that AVLnet and EAO load
  when ``davenet_v2`` is off: C0 = 128, widths 128, 256, 512, 1024, blocks 2, 2, 2, 2 → one 1024-d
  token per 16 frames.

``width_divisor`` (``model.audio_width_divisor``) divides every channel width, keeping depth, kernel
and stride: a cheap encoder for CPU runs and tests (1 = the paper's network).

Convolutions have no bias (each is followed by BatchNorm). The reference also builds an input
``BatchNorm2d(1)`` that its forward never uses; it is not reproduced here.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from multisk.config import AUDIO_ENCODER_NAMES, ConfigError, check_choice, check_registry


def _same_padding(kernel_size: int) -> int:
    # the reference pads k // 2 on both sides ((k - 1) / 2 for odd k), so stride-1 convs keep length
    return kernel_size // 2


class ResidualBlock1d(nn.Module):
    """``ReLU(BN(conv2(ReLU(BN(conv1(x))))) + shortcut(x))`` on (B, C_in, T) → (B, C_out, ceil(T / stride)).

    ``conv1`` has kernel ``k`` and the block's stride, ``conv2`` kernel ``k`` stride 1; the shortcut is
    the identity, or ``BN(Conv1d(C_in → C_out, 1, stride))`` when the stride or width changes.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 9, stride: int = 1) -> None:
        super().__init__()
        pad = _same_padding(kernel_size)
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size, stride=1, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv1d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm1d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out, inplace=True)


class DAVEnet(nn.Module):
    """Residual DAVEnet on (B, n_mels, F) log-mel spectrograms; see the module docstring.

    Attributes: ``out_dim`` (token width, the last stage width) and ``total_stride`` (frames per token,
    ``2 ** len(stage_widths)``).
    """

    def __init__(
        self,
        n_mels: int = 40,
        stem_width: int = 128,
        stage_widths: Sequence[int] = (128, 256, 512, 1024, 2048, 4096),
        stage_blocks: Sequence[int] = (2, 2, 1, 1, 1, 1),
        kernel_size: int = 9,
        recompute: bool = False,
    ) -> None:
        super().__init__()
        # keep only each stage's input for backward and run the stage again there (training only)
        self.recompute = recompute
        if len(stage_widths) != len(stage_blocks):
            raise ValueError(f"stage_widths {tuple(stage_widths)} and stage_blocks {tuple(stage_blocks)} differ in length")
        self.n_mels = n_mels
        self.out_dim = int(stage_widths[-1])
        self.total_stride = 2 ** len(stage_widths)
        self.stem_conv = nn.Conv1d(n_mels, stem_width, kernel_size=1, bias=False)
        self.stem_bn = nn.BatchNorm1d(stem_width)
        stages = []
        width = stem_width
        for stage_width, n_blocks in zip(stage_widths, stage_blocks):
            blocks = [ResidualBlock1d(width, stage_width, kernel_size, stride=2)]
            blocks += [ResidualBlock1d(stage_width, stage_width, kernel_size, stride=1) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            width = stage_width
        self.stages = nn.Sequential(*stages)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The reference's initialisation of its 2-D layers, reproduced on the 1-D ones.

        The reference (ResDAVEnet) gives every ``Conv2d`` He-normal weights with fan-out,
        ``N(0, 2 / (C_out · k_h · k_w))``, and every BatchNorm weight 1, bias 0.  A ``(1 × k)`` Conv2d
        has the fan of the ``Conv1d`` with kernel ``k``; the stem ``Conv2d(1 → C0, (n_mels, 1))`` has fan
        ``C0 · n_mels``, not the ``C0 · 1`` of its 1-D form ``Conv1d(n_mels → C0, 1)`` — so the fan is
        written per layer.  Draws happen in module order, as the reference's ``self.modules()`` loop.
        """
        for layer in self.modules():
            if isinstance(layer, nn.Conv1d):
                reference_kernel_height = self.n_mels if layer is self.stem_conv else 1
                fan_out = layer.out_channels * reference_kernel_height * layer.kernel_size[0]
                layer.weight.normal_(0.0, math.sqrt(2.0) / math.sqrt(fan_out))  # kaiming_normal_'s formula
            elif isinstance(layer, nn.BatchNorm1d):
                nn.init.ones_(layer.weight)
                nn.init.zeros_(layer.bias)

    def num_tokens(self, num_frames: int) -> int:
        """Output length for ``num_frames`` input frames: ``ceil(num_frames / total_stride)``."""
        return -(-num_frames // self.total_stride)

    def forward(self, spectrogram: Tensor, frame_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """Encode a spectrogram into tokens.

        ``spectrogram`` (B, n_mels, F); ``frame_mask`` (B, F), bool or 0/1 float, marks valid frames.
        Returns ``tokens`` (B, T', out_dim) with ``T' = ceil(F / total_stride)`` and ``token_mask``
        (B, T') bool: a token is valid when any frame of its ``total_stride``-frame window is valid
        (the frame mask max-pooled with kernel = stride = ``total_stride``).

        Note: like the reference, the convolutions see padded frames inside their receptive field, so
        tokens near the end of a clip depend on what the padding contains.
        """
        batch, n_mels, n_frames = spectrogram.shape
        frame_mask = frame_mask.to(torch.float32)
        if n_frames == 0:
            return spectrogram.new_zeros(batch, 0, self.out_dim), frame_mask.new_zeros(batch, 0, dtype=torch.bool)
        x = F.relu(self.stem_bn(self.stem_conv(spectrogram)), inplace=True)
        if self.recompute and self.training and torch.is_grad_enabled():
            for stage in self.stages:
                x = _recomputed_in_backward(stage, x)
        else:
            x = self.stages(x)  # (B, out_dim, T')
        token_mask = F.max_pool1d(
            frame_mask.unsqueeze(1), kernel_size=self.total_stride, stride=self.total_stride, ceil_mode=True
        ).squeeze(1) > 0
        return x.transpose(1, 2), token_mask


@contextlib.contextmanager
def _running_statistics_frozen(module: nn.Module):
    """BatchNorms of ``module`` normalise with batch statistics as usual but leave their running
    statistics and counters unchanged (momentum 0; the counter restored)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    try:
        for m in norms:
            m.momentum = 0.0  # running = (1 − 0) · running + 0 · batch: unchanged
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def _recomputed_in_backward(stage: nn.Module, x: Tensor) -> Tensor:
    """``stage(x)`` through activation checkpointing: only ``x`` is kept for backward, where the stage
    runs again. The forward run updates the BatchNorm running statistics once, as without
    checkpointing; the recomputation sees the same batch, so it gives the same outputs and must not
    update them a second time."""
    runs = []

    def run(inputs: Tensor) -> Tensor:
        runs.append(1)
        if len(runs) == 1:
            return stage(inputs)
        with _running_statistics_frozen(stage):
            return stage(inputs)

    return checkpoint(run, x, use_reentrant=False, preserve_rng_state=False)


V2_WIDTHS = (128, 128, 256, 512, 1024, 2048, 4096)  # stem, then the six stages
V2_BLOCKS = (2, 2, 1, 1, 1, 1)
V1_WIDTHS = (128, 128, 256, 512, 1024)  # stem, then the four stages
V1_BLOCKS = (2, 2, 2, 2)


def _scaled(widths: Sequence[int], divisor: int, name: str) -> Tuple[int, ...]:
    if divisor < 1 or any(w % divisor for w in widths):
        raise ConfigError(
            f"model.audio_width_divisor: must be a positive divisor of every {name} width {tuple(widths)}, got {divisor}"
        )
    return tuple(w // divisor for w in widths)


def davenet_v2(n_mels: int = 40, width_divisor: int = 1, recompute: bool = False) -> DAVEnet:
    """EAO's DAVEnet v2: 6 stages (128, 256, 512, 1024, 2048, 4096), one 4096-d token per 64 frames.
    ``width_divisor`` divides every channel width (1 = the paper's network)."""
    widths = _scaled(V2_WIDTHS, width_divisor, "davenet_v2")
    return DAVEnet(n_mels, widths[0], widths[1:], V2_BLOCKS, kernel_size=9, recompute=recompute)


def davenet_v1(n_mels: int = 40, width_divisor: int = 1, recompute: bool = False) -> DAVEnet:
    """ResDAVEnet (Harwath et al.) as EAO loads it without v2: 4 stages (128, 256, 512, 1024) × 2 blocks,
    one 1024-d token per 16 frames. ``width_divisor`` divides every channel width."""
    widths = _scaled(V1_WIDTHS, width_divisor, "davenet_v1")
    return DAVEnet(n_mels, widths[0], widths[1:], V1_BLOCKS, kernel_size=9, recompute=recompute)


AUDIO_ENCODERS = {"davenet_v1": davenet_v1, "davenet_v2": davenet_v2}  # model.audio_encoder
check_registry("model.audio_encoder", AUDIO_ENCODERS, AUDIO_ENCODER_NAMES)


def build_audio_encoder(name: str, n_mels: int = 40, width_divisor: int = 1, recompute: bool = False) -> DAVEnet:
    """``name`` is ``model.audio_encoder`` (a key of :data:`AUDIO_ENCODERS`), ``width_divisor`` is
    ``model.audio_width_divisor``, ``recompute`` is ``model.recompute_audio_encoder``."""
    check_choice("model.audio_encoder", name, AUDIO_ENCODER_NAMES)
    return AUDIO_ENCODERS[name](n_mels, width_divisor, recompute)


__all__ = ["AUDIO_ENCODERS", "DAVEnet", "ResidualBlock1d", "build_audio_encoder", "davenet_v1", "davenet_v2"]
