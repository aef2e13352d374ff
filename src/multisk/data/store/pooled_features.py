"""One frozen feature vector per item of a feature-store modality: what the training-free baselines
(:mod:`multisk.evaluate.baselines`) regress and what the structure metric
(:func:`multisk.metrics.structure.structure_preservation`) compares the joint space with."""

from __future__ import annotations

from typing import Mapping, Optional, Tuple

import numpy as np

from multisk.data.store.feature_store import FeatureStore, FeatureStoreError


def picture_grid(store: FeatureStore) -> Optional[int]:
    """The side of the picture encoder's token grid a store records (``picture_encoder.grid``), or None."""
    encoder = store.info.get("picture_encoder")
    if isinstance(encoder, Mapping) and isinstance(encoder.get("grid"), int):
        return int(encoder["grid"])
    return None


def pooled_features(store: FeatureStore, modality: str) -> Tuple[np.ndarray, np.ndarray]:
    """One frozen feature vector per item of a store modality.

    Args:
        store: one split of a feature store.
        modality: a store modality name: ``video`` (pictures / frames), ``audio`` (log-mel frames, time
            first) or a text modality (``text``, ``text_minilm``: the mean token, L2-normalised).

    Returns:
        ``(features (N, d') float64, present (N,) bool)``; rows of items lacking the modality are 0.
        ``d'`` is ``2 * n_mels`` for audio (mean ; std over frames), else the store's dim.
    """
    dims = store.modalities
    if modality not in dims:
        raise FeatureStoreError(f"{store.dir}: no modality {modality!r} (have: {', '.join(sorted(dims))})")
    n, dim = len(store), dims[modality]
    is_audio = modality == "audio"
    is_text = modality.startswith("text")
    grid = picture_grid(store) if modality == "video" else None
    features = np.zeros((n, 2 * dim if is_audio else dim), dtype=np.float64)
    present = np.zeros(n, dtype=bool)
    for i in range(n):
        tokens = np.asarray(store.tokens(modality, i), dtype=np.float64)
        if tokens.shape[0] == 0:
            continue
        present[i] = True
        if is_audio:
            features[i] = np.concatenate([tokens.mean(axis=0), tokens.std(axis=0)])
        elif grid is not None and tokens.shape[0] == 1 + grid * grid:
            features[i] = tokens[0]  # the picture's global-mean token
        else:
            features[i] = tokens.mean(axis=0)
        if is_text:
            norm = np.linalg.norm(features[i])
            if norm > 0:
                features[i] /= norm
    return features, present


__all__ = ["picture_grid", "pooled_features"]
