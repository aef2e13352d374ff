"""Choosing on held-out data: the validation pairs, the seeded carve of the training split and the
retrieval score every choice of the text-space prior maximises.

Every choice maximises the validation "rsum" (R@1 + R@5 + R@10) of the text → modality directions,
scored by :func:`multisk.metrics.directions.evaluate_directions` (group-aware: items with identical
captions are all correct answers). Never a test split.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from multisk.config import ConfigError
from multisk.metrics.directions import evaluate_directions

#: the held-out share of the training pairs when no validation split has the modality
VAL_FRACTION = 0.1


def carve_validation(n_items: int, usable: np.ndarray, seed: int) -> np.ndarray:
    """(n,) bool: a seeded VAL_FRACTION of the usable items (at least 1, leaving at least 2)."""
    candidates = np.flatnonzero(usable)
    count = min(max(1, int(round(VAL_FRACTION * candidates.size))), max(0, candidates.size - 2))
    chosen = np.random.default_rng(seed).permutation(candidates)[:count]
    mask = np.zeros(n_items, dtype=bool)
    mask[chosen] = True
    return mask



def rsum(metrics: Mapping[str, float]) -> float:
    """R@1 + R@5 + R@10 of one direction's metrics (the model-selection number of retrieval papers)."""
    return float(metrics["R1"] + metrics["R5"] + metrics["R10"])


def text_to(modality: str, table) -> str:
    """The label of the text → ``modality`` direction in ``table``'s letters (``t2v``)."""
    return f"{table['text'].letter}2{table[modality].letter}"


def val_rsum(text: np.ndarray, other: np.ndarray, modality: str, groups: Optional[np.ndarray], table) -> float:
    """:func:`rsum` of text → ``modality`` retrieval between paired rows ``text`` (n, T) and ``other`` (n, T)
    (``groups`` (n,): identical captions are all correct answers)."""
    direction = text_to(modality, table)
    ones = np.ones(len(text), dtype=bool)
    scored = evaluate_directions({"text": text.astype(np.float32), modality: other.astype(np.float32)},
                                 {"text": ones, modality: ones}, groups=groups, directions=[direction], table=table)
    return rsum(scored[direction])


def validation_pairs(modality: str, train: Mapping, val: Optional[Mapping], val_groups, train_groups, seed: int):
    """The pairs a choice for ``modality`` is scored on: ``data.val_split``'s items that have the modality
    and text (at least 2), else a seeded :data:`VAL_FRACTION` of the training pairs held out of the fit.

    ``train`` / ``val``: ``{modality: (pool (N, d) float64, present (N,) bool)}`` (:func:`multisk.prior.fit.pooled_dataset`).
    Returns ``(fit mask over train (N,), val X (n, d), val T (n, T), val groups (n,) or None, description)``."""
    x, present = train[modality]
    t, t_present = train["text"]
    paired = present & t_present
    if val is not None and modality in val and "text" in val:
        vx, vp = val[modality]
        if vx.shape[1] != x.shape[1] or val["text"][0].shape[1] != t.shape[1]:
            raise ConfigError(f"data.val_split: its {modality} / text features are {vx.shape[1]} / "
                              f"{val['text'][0].shape[1]} wide, the training data's {x.shape[1]} / {t.shape[1]}: "
                              "the validation split must come from the training source")
        vt, vtp = val["text"]
        val_paired = vp & vtp
        if val_paired.sum() >= 2:
            groups = val_groups[val_paired] if val_groups is not None else None
            return paired, vx[val_paired], vt[val_paired], groups, f"validation split ({int(val_paired.sum())} pairs)"
    held_mask = carve_validation(len(paired), paired, seed)  # the linear probe's carve, same seed rule
    groups = train_groups[held_mask] if train_groups is not None else None
    return (paired & ~held_mask, x[held_mask], t[held_mask], groups,
            f"seeded {int(held_mask.sum())} of the {int(paired.sum())} training pairs (seed {seed})")


__all__ = ["VAL_FRACTION", "carve_validation", "rsum", "text_to", "val_rsum", "validation_pairs"]
