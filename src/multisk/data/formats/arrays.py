"""Numpy helpers the field's formats share (HowTo100M, the MSR-VTT / YouCook2 evaluation pickles):
checked float32 arrays, the reference's video token layout ``[n(2D) ; n(3D)]`` and pickle reading.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from multisk.errors import DataFormatError

# the reference's video features: 2048-d 2D (ResNet-152, 1 fps) and 2048-d 3D (ResNeXt-101, 1.5 fps)
FEATURE_DIM_2D = 2048
FEATURE_DIM_3D = 2048


def check_array(value: Any, where: str, field: str, ndim: int = 2, shape: Sequence[Optional[int]] = ()) -> np.ndarray:
    """Return ``value`` as a float32 array after checking rank, fixed sizes and finiteness.

    ``shape`` gives the expected size per axis (None = any), e.g. ``(None, 2048)``. Errors name
    ``where`` (the file / item) and ``field``.
    """
    try:
        array = np.asarray(value)
    except Exception as err:  # ragged lists and the like
        raise DataFormatError(f"{where} field {field!r}: not an array ({err})") from None
    check_layout(array, where, field, ndim, shape)
    return check_values(array, where, field)


def check_layout(array: np.ndarray, where: str, field: str, ndim: int = 2, shape: Sequence[Optional[int]] = ()) -> None:
    """Raise unless ``array`` is numeric with the expected rank and fixed sizes (reads no values)."""
    if array.dtype.kind not in "fiub":
        raise DataFormatError(f"{where} field {field!r}: expected a numeric array, got dtype {array.dtype}")
    expected = tuple(shape) if shape else (None,) * ndim
    if array.ndim != len(expected) or any(e is not None and e != s for e, s in zip(expected, array.shape)):
        pretty = "(" + ", ".join("T" if e is None else str(e) for e in expected) + ")"
        raise DataFormatError(f"{where} field {field!r}: expected shape {pretty}, got {array.shape}")


def check_values(array: np.ndarray, where: str, field: str) -> np.ndarray:
    """``array`` as float32 (a copy of a memory-mapped slice), raising if it holds NaN or inf."""
    array = np.asarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise DataFormatError(f"{where} field {field!r}: contains NaN or inf")
    return array


def l2_normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``x_i / max(||x_i||_2, eps)`` per row (as ``torch.nn.functional.normalize``)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


def nearest_resample(x: np.ndarray, length: int) -> np.ndarray:
    """Resample ``(T, d)`` to ``(length, d)`` by nearest neighbour: row j = ``x[floor(j * T / length)]``.

    This is ``torch.nn.functional.interpolate(mode="nearest")`` along time, which the reference uses to
    bring 1 fps 2D features to the 1.5 fps 3D rate.
    """
    if length == x.shape[0]:
        return x
    rows = np.floor(np.arange(length) * (x.shape[0] / length)).astype(np.int64)
    return x[np.minimum(rows, x.shape[0] - 1)]


def combine_video_features(
    features_2d: Optional[np.ndarray], features_3d: Optional[np.ndarray], dim_2d: int = FEATURE_DIM_2D, dim_3d: int = FEATURE_DIM_3D
) -> np.ndarray:
    """Video tokens ``[n(f2d_t) ; n(f3d_t)]`` of shape ``(T, dim_2d + dim_3d)`` (the reference's video tokens, docs/data.md).

    The time base is the 3D features (T = T3); the 2D features are nearest-resampled to T3 steps. An
    absent (None) or empty half is zeros and the other half sets T; both absent gives ``(0, dim)``.
    """
    has_2d = features_2d is not None and features_2d.shape[0] > 0
    has_3d = features_3d is not None and features_3d.shape[0] > 0
    if not has_2d and not has_3d:
        return np.zeros((0, dim_2d + dim_3d), dtype=np.float32)
    length = features_3d.shape[0] if has_3d else features_2d.shape[0]  # type: ignore[union-attr]
    video = np.zeros((length, dim_2d + dim_3d), dtype=np.float32)
    if has_2d:
        video[:, :dim_2d] = l2_normalize_rows(nearest_resample(features_2d, length))  # type: ignore[arg-type]
    if has_3d:
        video[:, dim_2d:] = l2_normalize_rows(features_3d)  # type: ignore[arg-type]
    return video


def read_pickle(path: Path, field: str = "pickle") -> Any:
    """Unpickle ``path``. **Pickles execute code on load: only read files you trust.**

    Python-2 pickles (str as bytes) are retried with ``encoding="latin1"``. Any failure raises
    :class:`DataFormatError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: field {field!r}: file not found")
    for encoding in ("ASCII", "latin1"):
        try:
            with open(path, "rb") as fh:
                return pickle.load(fh, encoding=encoding)
        except UnicodeDecodeError:
            continue
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, MemoryError) as err:
            raise DataFormatError(
                f"{path}: field {field!r}: truncated or corrupt pickle ({type(err).__name__}: {err})"
            ) from None
    raise DataFormatError(f"{path}: field {field!r}: pickle has undecodable strings")


__all__ = ["FEATURE_DIM_2D", "FEATURE_DIM_3D", "check_array", "check_layout", "check_values", "combine_video_features",
           "l2_normalize_rows", "nearest_resample", "read_pickle"]
