"""Float32 that stays float32: autocast off and TensorFloat-32 off, for the anchors, Multi-SK and the losses.

Why (the reference computes its losses, Multi-SK included, outside autocast in float32; docs/losses.md):
Multi-SK divides anchor scores by a small ε (0.07) and exponentiates them, so a relative rounding of
``u`` in a score or in a column sum becomes ``u / ε`` in an exponent.  bf16 (u = 4e-3) moves the
targets by ~2e-2 (measured on a (12, 2000, 64) stack under CPU bf16 autocast); TF32 (u = 5e-4, the
10-bit mantissa CUDA's cuBLAS / cuDNN use for float32 matmuls when TF32 is allowed) by ~1e-3 per
product.  The model itself may run in bf16/fp16 autocast or with TF32 in fp32 runs; this module lets
the trainer allow TF32 globally (:func:`set_model_tf32`) while the score, solver and loss code paths
run under :func:`exact_float32`, which turns both off for its duration and restores them after.

Both use torch's per-backend ``fp32_precision`` flags where they exist (torch ≥ 2.9; reading the
legacy ``allow_tf32`` flags after the new API has been used raises there), else the legacy flags.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Tuple

import torch

__all__ = ["AUTOCAST_DTYPES", "autocast_context", "autocast_disabled", "configure_model_math", "exact_float32", "set_model_tf32", "tf32_flags"]


# run precision ("fp32" / "bf16" / "fp16") -> the autocast dtype (None: no autocast)
AUTOCAST_DTYPES: Dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16 / fp16 (training and evaluation forwards), nothing for fp32."""
    dtype = AUTOCAST_DTYPES[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which autocast is off for ``device`` (so float32 math stays float32)."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _precision_backends() -> List[Tuple[object, str]]:
    """(backend object, attribute) pairs of the float32 matmul/convolution precision flags."""
    backends = torch.backends
    if hasattr(backends.cuda.matmul, "fp32_precision"):
        found = [(backends.cuda.matmul, "fp32_precision")]
        for owner in (getattr(backends.cudnn, "conv", None), getattr(backends.mkldnn, "matmul", None),
                      getattr(backends.mkldnn, "conv", None)):
            if owner is not None and hasattr(owner, "fp32_precision"):
                found.append((owner, "fp32_precision"))
        return found
    return [(backends.cuda.matmul, "allow_tf32"), (backends.cudnn, "allow_tf32")]


def tf32_flags() -> Tuple[object, ...]:
    """The current values of the flags :func:`exact_float32` switches (for tests and reports)."""
    return tuple(getattr(owner, name) for owner, name in _precision_backends())


def _exact_value(name: str) -> object:
    return "ieee" if name == "fp32_precision" else False


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Autocast off for ``device`` and IEEE float32 matmuls / convolutions (no TF32, no reduced
    precision CPU paths) inside; every flag is restored on exit, also on an exception."""
    backends = _precision_backends()
    saved = [getattr(owner, name) for owner, name in backends]
    try:
        for owner, name in backends:
            setattr(owner, name, _exact_value(name))
        with autocast_disabled(device):
            yield
    finally:
        for (owner, name), value in zip(backends, saved):
            setattr(owner, name, value)


def set_model_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 for CUDA float32 matmuls and cuDNN convolutions process-wide — for the
    model's forward and backward in fp32 runs. Anchors, Multi-SK and the losses still run exact float32
    (they enter :func:`exact_float32`). Uses the same flag family as :func:`exact_float32`."""
    backends = torch.backends
    if hasattr(backends.cuda.matmul, "fp32_precision"):
        value = "tf32" if enabled else "ieee"
        backends.cuda.matmul.fp32_precision = value
        if hasattr(getattr(backends.cudnn, "conv", None), "fp32_precision"):
            backends.cudnn.conv.fp32_precision = value
    else:
        backends.cuda.matmul.allow_tf32 = bool(enabled)
        backends.cudnn.allow_tf32 = bool(enabled)


def configure_model_math(precision: str, static_shapes: bool = True) -> None:
    """The process-wide CUDA math settings of a training or benchmark run (issue 13 item 7).

    * ``cudnn.benchmark = static_shapes``: the batches have fixed shapes (crops and padding to the
      configured token counts), so cuDNN may time its convolution algorithms once and keep the fastest;
    * TF32 for the model's float32 matmuls and convolutions only in ``"fp32"`` runs (bf16 / fp16 runs
      do their heavy math in autocast; their float32 remainder stays IEEE). Anchors, Multi-SK and the
      losses never see TF32: they run under :func:`exact_float32`.
    """
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision: expected 'fp32', 'bf16' or 'fp16', got {precision!r}")
    torch.backends.cudnn.benchmark = bool(static_shapes)
    set_model_tf32(precision == "fp32")
