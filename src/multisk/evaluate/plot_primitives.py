"""Figures for training and evaluation, written as PNG files.

Every function draws on its own ``matplotlib.figure.Figure`` rendered by the Agg canvas (no pyplot,
no global backend switch, safe in headless runs and threads) and returns the path it wrote.

* :func:`plot_training_curves` — losses against step from a ``metrics.jsonl``;
* :func:`plot_anchor_usage` — how many samples pick each anchor as their argmax, per space and
  modality, with the normalised entropy of that usage;
* :func:`plot_recall_curves` — R@K for K = 1..100 per retrieval direction;
* :func:`plot_embedding_map` — a 2-D map (PCA, or t-SNE) of joint embeddings coloured by category;
* :func:`plot_anchor_top_items` — for a few anchors, the items that score highest on them.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from multisk.errors import DataFormatError
from multisk.metrics.retrieval import recall_curve

ArrayLike = Union[np.ndarray, torch.Tensor]
PathLike = Union[str, os.PathLike]

_DPI = 100


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _save(fig: Figure, out_path: PathLike) -> Path:
    path = Path(out_path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: plots are written as PNG; use a .png file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, format="png")
    return path


# --------------------------------------------------------------------------------------------------
# training curves


def read_metrics_jsonl(path: PathLike) -> List[Dict[str, Any]]:
    """Parse a metrics.jsonl: one JSON object per line, each with a numeric ``"step"``.

    Blank lines are skipped. Raises :class:`DataFormatError` naming the file and line on bad content
    and when the file holds no record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metrics file not found")
    records: List[Dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for line_number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}:{line_number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise DataFormatError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
            step = record.get("step")
            if isinstance(step, bool) or not isinstance(step, (int, float)):
                raise DataFormatError(f"{path}:{line_number}: field 'step' missing or not a number")
            records.append(record)
    if not records:
        raise DataFormatError(f"{path}: no metrics records (the file is empty)")
    return records


def plot_training_curves(
    metrics_path: PathLike,
    out_path: PathLike,
    keys: Optional[Sequence[str]] = None,
    log_y: bool = False,
) -> Path:
    """One panel per key: its value against ``step`` over the records that carry it.

    Args:
        metrics_path: metrics.jsonl (see :func:`read_metrics_jsonl`).
        out_path: PNG to write.
        keys: keys to plot; default every key whose name contains "loss" and has a numeric value.
        log_y: logarithmic y axis (positive values only).
    """
    records = read_metrics_jsonl(metrics_path)

    def numeric(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if keys is None:
        keys = sorted({k for r in records for k, v in r.items() if "loss" in k and numeric(v)})
        if not keys:
            raise DataFormatError(f"{metrics_path}: no numeric key containing 'loss' to plot")
    else:
        absent = [k for k in keys if not any(numeric(r.get(k)) for r in records)]
        if absent:
            raise DataFormatError(f"{metrics_path}: no numeric values for key(s) {absent}")
    fig = Figure(figsize=(7, 2.2 * len(keys) + 0.6))
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        points = sorted((r["step"], float(r[key])) for r in records if numeric(r.get(key)))
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 50 else None, linewidth=1.2)
        ax.set_ylabel(key)
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.suptitle(Path(metrics_path).name)
    fig.tight_layout()
    return _save(fig, out_path)


# --------------------------------------------------------------------------------------------------
# anchor usage


def anchor_usage(scores: ArrayLike) -> Tuple[np.ndarray, float]:
    """How many samples pick each anchor as argmax, and the normalised entropy of that usage.

    Args:
        scores: (N, K) assignment scores, K >= 2.

    Returns:
        counts (K,) int64 with ``counts[k] = #{n : argmax_j S[n, j] = k}`` (first maximum on ties),
        and ``H(p) / log K`` with ``p = counts / N``, ``H(p) = -Σ_k p_k log p_k`` (0 log 0 = 0):
        1 when every anchor is used equally, 0 when one anchor takes every sample.
    """
    array = _to_numpy(scores, "scores")
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] < 2:
        raise ValueError(f"scores: expected (N >= 1, K >= 2) scores, got shape {array.shape}")
    num_anchors = array.shape[1]
    counts = np.bincount(np.argmax(array, axis=1), minlength=num_anchors).astype(np.int64)
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log(p)).sum())
    return counts, entropy / math.log(num_anchors)


def plot_anchor_usage(
    scores: Mapping[str, Mapping[str, ArrayLike]], out_path: PathLike, title: Optional[str] = None
) -> Path:
    """Bars of argmax counts per anchor: one row of panels per space, one column per modality.

    Args:
        scores: space name (e.g. "input", "joint") -> modality -> (N, K) scores. The normalised
            entropy (see :func:`anchor_usage`) is shown in each panel's title.
        out_path: PNG to write.
    """
    if not scores or not all(isinstance(v, Mapping) and v for v in scores.values()):
        raise ValueError("scores: expected a non-empty dict space -> {modality -> (N, K) scores}")
    spaces = list(scores)
    modalities = list(dict.fromkeys(m for space in spaces for m in scores[space]))
    fig = Figure(figsize=(3.4 * len(modalities), 2.6 * len(spaces) + 0.6))
    axes = fig.subplots(len(spaces), len(modalities), squeeze=False)
    for row, space in enumerate(spaces):
        for col, modality in enumerate(modalities):
            ax = axes[row, col]
            if modality not in scores[space]:
                ax.set_axis_off()
                continue
            counts, normalized_entropy = anchor_usage(scores[space][modality])
            ax.bar(np.arange(counts.size), counts, width=1.0, color="tab:blue")
            ax.set_title(f"{space} / {modality}: H/log K = {normalized_entropy:.3f}", fontsize=9)
            ax.set_xlabel("anchor", fontsize=8)
            ax.set_ylabel("# argmax", fontsize=8)
            ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_path)


# --------------------------------------------------------------------------------------------------
# recall curves


def plot_recall_curves(
    ranks: Mapping[str, ArrayLike],
    out_path: PathLike,
    max_k: int = 100,
    complete_size: Optional[int] = None,
) -> Path:
    """R@K (docs/evaluation.md rules: K = 1 counts rank 0 only) for K = 1..max_k, one line per direction.

    Args:
        ranks: direction label -> (Q,) 0-based tie-averaged ranks
            (:func:`multisk.metrics.direction_ranks`).
        out_path: PNG to write.
        max_k: largest K.
        complete_size: percentages over this complete dataset size when given.
    """
    if not ranks:
        raise ValueError("ranks: empty dict, no direction to plot")
    if max_k < 1:
        raise ValueError(f"max_k: must be >= 1, got {max_k}")
    ks = np.arange(1, max_k + 1)
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for label, direction_ranks in ranks.items():
        if isinstance(direction_ranks, torch.Tensor):
            direction_ranks = direction_ranks.detach().cpu().numpy()
        array = np.asarray(direction_ranks, dtype=np.float64)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"ranks[{label!r}]: expected a non-empty 1-D array, got shape {array.shape}")
        ax.plot(ks, recall_curve(array, ks, complete_size), label=label, linewidth=1.3)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))  # 1, 10, 100 rather than 10^0, 10^1, 10^2
    ax.set_xlabel("K")
    ax.set_ylabel("R@K (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    if complete_size is not None:
        ax.set_title(f"R@K over the complete set of {complete_size} items", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_path)


# --------------------------------------------------------------------------------------------------
# embedding map


def pca_2d(x: ArrayLike) -> np.ndarray:
    """Project (N, E) rows onto their first two principal components via the SVD of centred data.

    ``X_c = X - mean(X) = U Σ Vᵀ``; the map is ``X_c V[:, :2] = U[:, :2] Σ[:2]`` (N, 2). The sign of
    each component is fixed so that its largest-magnitude loading is positive.
    """
    array = np.asarray(_to_numpy(x, "embeddings"), dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"embeddings: expected (N >= 2, E) rows, got shape {array.shape}")
    centred = array - array.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:2]
    if components.shape[0] < 2:  # E == 1: pad a zero second axis
        components = np.vstack([components, np.zeros_like(components)])
    signs = np.sign(components[np.arange(2), np.abs(components).argmax(axis=1)])
    signs[signs == 0] = 1.0
    return centred @ (components * signs[:, None]).T


def plot_embedding_map(
    embeddings: ArrayLike,
    categories: Sequence[Any],
    out_path: PathLike,
    method: str = "pca",
    seed: int = 0,
    title: Optional[str] = None,
    tsne_iterations: int = 1000,
) -> Path:
    """Scatter of (N, E) embeddings in 2-D, one colour per category.

    Args:
        embeddings: (N, E) (typically L2-normalised joint embeddings).
        categories: N labels (strings or ints).
        out_path: PNG to write.
        method: ``"pca"`` (:func:`pca_2d`) or ``"tsne"`` (scikit-learn, cosine metric).
        seed: t-SNE random state.
        tsne_iterations: t-SNE optimisation steps (scikit-learn requires >= 250).
    """
    array = np.asarray(_to_numpy(embeddings, "embeddings"), dtype=np.float64)
    labels = [str(c) for c in categories]
    if array.ndim != 2:
        raise ValueError(f"embeddings: expected (N, E), got shape {array.shape}")
    if len(labels) != array.shape[0]:
        raise ValueError(f"categories: {len(labels)} labels for {array.shape[0]} embeddings")
    if method == "pca":
        points = pca_2d(array)
    elif method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError("method='tsne' needs scikit-learn (pip install 'multisk[demo]')") from None
        if array.shape[0] < 4:
            raise ValueError(f"embeddings: t-SNE needs at least 4 points, got {array.shape[0]}")
        perplexity = min(30.0, (array.shape[0] - 1) / 3.0)
        points = TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca",
                      random_state=seed, max_iter=tsne_iterations).fit_transform(array)
    else:
        raise ValueError(f"method: expected 'pca' or 'tsne', got {method!r}")
    names = sorted(set(labels))
    palette = colormaps["tab20"] if len(names) > 10 else colormaps["tab10"]
    fig = Figure(figsize=(7.5, 6))
    ax = fig.subplots()
    label_array = np.asarray(labels)
    for i, name in enumerate(names):
        chosen = label_array == name
        ax.scatter(points[chosen, 0], points[chosen, 1], s=12, alpha=0.8,
                   color=palette(i % palette.N), label=name)
    if len(names) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set_title(title or f"{method.upper()} of {array.shape[0]} embeddings, {len(names)} categories")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, out_path)


# --------------------------------------------------------------------------------------------------
# anchors by their top items


def top_items_per_anchor(scores: ArrayLike, anchors: Sequence[int], top: int) -> np.ndarray:
    """(len(anchors), top) indices of the highest-scoring items of each anchor (descending score,
    lower index first on ties)."""
    array = _to_numpy(scores, "scores")
    columns = array[:, list(anchors)].T  # (A, N)
    order = np.argsort(-columns, axis=1, kind="stable")
    return order[:, :top]


def _thumbnail(path: Path, size: int = 160) -> Optional[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image = image.convert("RGBA")
            image.thumbnail((size, size))
            return np.asarray(image)
    except UnidentifiedImageError:
        return None  # formats PIL cannot draw (e.g. SVG): the caption is shown instead


def plot_anchor_top_items(
    scores: ArrayLike,
    out_path: PathLike,
    anchors: Optional[Sequence[int]] = None,
    num_anchors: int = 4,
    top: int = 5,
    image_paths: Optional[Sequence[Optional[PathLike]]] = None,
    captions: Optional[Sequence[str]] = None,
) -> Path:
    """A grid: one row per anchor, its ``top`` highest-scoring items as pictures with captions.

    Args:
        scores: (N, K) assignment scores of N items on K anchors.
        out_path: PNG to write.
        anchors: anchor indices to show; default the ``num_anchors`` anchors chosen as argmax by
            the most items (ties: lower index).
        top: items per anchor.
        image_paths: N picture paths (None or "" for items without one). A missing file is an
            error; a file PIL cannot read (e.g. SVG) shows its caption only.
        captions: N captions shown under the pictures.
    """
    array = _to_numpy(scores, "scores")
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"scores: expected (N, K) with N, K >= 1, got shape {array.shape}")
    num_items, num_anchor_total = array.shape
    if image_paths is not None and len(image_paths) != num_items:
        raise ValueError(f"image_paths: {len(image_paths)} paths for {num_items} scored items")
    if captions is not None and len(captions) != num_items:
        raise ValueError(f"captions: {len(captions)} captions for {num_items} scored items")
    if top < 1:
        raise ValueError(f"top: must be >= 1, got {top}")
    if anchors is None:
        counts = np.bincount(np.argmax(array, axis=1), minlength=num_anchor_total)
        anchors = np.argsort(-counts, kind="stable")[: max(1, num_anchors)].tolist()
    else:
        anchors = [int(a) for a in anchors]
        bad = [a for a in anchors if not 0 <= a < num_anchor_total]
        if bad or not anchors:
            raise ValueError(f"anchors: indices must lie in [0, {num_anchor_total}), got {list(anchors)}")
    top = min(top, num_items)
    best = top_items_per_anchor(array, anchors, top)

    fig = Figure(figsize=(2.0 * top + 0.8, 2.3 * len(anchors)))
    axes = fig.subplots(len(anchors), top, squeeze=False)
    for row, anchor in enumerate(anchors):
        for col in range(top):
            ax = axes[row, col]
            item = int(best[row, col])
            ax.set_xticks([])
            ax.set_yticks([])
            caption = captions[item] if captions is not None else f"item {item}"
            picture = None
            if image_paths is not None and image_paths[item]:
                picture = _thumbnail(Path(image_paths[item]))
            if picture is not None:
                ax.imshow(picture)
            else:
                ax.text(0.5, 0.5, "\n".join(textwrap.wrap(str(caption), 18)[:5]), ha="center",
                        va="center", fontsize=7, transform=ax.transAxes)
            wrapped = "\n".join(textwrap.wrap(str(caption), 26)[:2])
            ax.set_title(f"{wrapped}\n{array[item, anchor]:.3f}", fontsize=6)
            if col == 0:
                ax.set_ylabel(f"anchor {anchor}", fontsize=8)
    fig.tight_layout()
    return _save(fig, out_path)


__all__ = [
    "anchor_usage", "pca_2d", "plot_anchor_top_items", "plot_anchor_usage", "plot_embedding_map",
    "plot_recall_curves", "plot_training_curves", "read_metrics_jsonl", "top_items_per_anchor",
]
