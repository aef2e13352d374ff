"""The standard set of figures of a run, written next to its logs (``OUTPUT_DIR/plots/``):

- ``training_curves.png`` — total, contrastive and SSPC losses against the step;
- ``anchor_usage_SPLIT.png`` — how evenly samples pick each of the K anchors (argmax counts and
  normalised entropy) per modality, in the input space and the joint space;
- ``recall_SPLIT.png`` — R@K for K = 1..100 of the main directions;
- ``embedding_map_SPLIT.png`` — a PCA map of the joint picture embeddings coloured by category;
- ``anchor_items_SPLIT.png`` — a few joint-space anchors shown by their top-scoring pictures and captions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from multisk.data.store.evaluation_batches import caption_groups
from multisk.metrics.directions import direction_ranks
from multisk.evaluate.pipeline import nonempty_for_joint

MAIN_DIRECTIONS = ("t2v", "v2t", "t2a", "a2t", "t2v+a")


def _image_paths(items) -> Optional[List[Optional[str]]]:
    """Picture files recorded by the preparer (``path``), or None when any is gone (data moved)."""
    paths = [item.get("path") for item in items]
    if not any(paths) or not all(Path(p).is_file() for p in paths if p):
        return None
    return paths


def write_run_figures(out_dir: str | Path, evaluation: Mapping[str, Any], datasets: Mapping[str, Any]) -> List[Path]:
    """Write the figures for ``evaluation`` (from ``evaluate_model(..., keep_embeddings=True)``).

    Returns the paths written. ``datasets`` maps split → the dataset that was evaluated.
    """
    import multisk.evaluate.plot_primitives as plots  # matplotlib: only when figures are written

    out = Path(out_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    metrics = Path(out_dir) / "metrics.jsonl"
    if metrics.is_file():
        keys = ["loss", "loss/contrastive", "loss/sspc"]
        records = plots.read_metrics_jsonl(metrics)
        present = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in records)]
        if present:
            written.append(plots.plot_training_curves(metrics, out / "training_curves.png", keys=present))
    for split, entry in evaluation.items():
        emb = entry.get("embeddings")
        if emb is None:
            continue
        dataset = datasets[split]
        items = dataset.store.items
        scores: Dict[str, Dict[str, Any]] = {}
        if emb["input_anchor_scores"]:
            scores["input"] = {m: s[emb["nonempty"][m]] for m, s in emb["input_anchor_scores"].items()
                               if bool(emb["nonempty"][m].any())}
            scores["joint"] = {m: emb["joint_anchor_scores"][m][m][emb["nonempty"][m]]
                               for m in emb["joint_anchor_scores"] if bool(emb["nonempty"][m].any())}
            scores = {k: v for k, v in scores.items() if v}
        if scores:
            written.append(plots.plot_anchor_usage(scores, out / f"anchor_usage_{split}.png",
                                                   title=f"anchor usage ({split})"))
        nonempty = nonempty_for_joint(emb["nonempty"], emb["joint"].keys())
        ranks = direction_ranks(emb["joint"], nonempty, groups=caption_groups(dataset))
        ranks = {d: r for d, r in ranks.items() if d in MAIN_DIRECTIONS}
        if ranks:
            written.append(plots.plot_recall_curves(ranks, out / f"recall_{split}.png"))
        has_video = emb["nonempty"].get("video")
        categories = [item.get("category") for item in items]
        if has_video is not None and int(has_video.sum()) >= 3 and any(categories):
            keep = has_video.nonzero().flatten().tolist()
            written.append(plots.plot_embedding_map(
                emb["joint"]["video"][keep], [categories[i] or "?" for i in keep],
                out / f"embedding_map_{split}.png", title=f"joint picture embeddings ({split})"))
            if "video" in emb["joint_anchor_scores"]:
                paths = _image_paths(items)
                written.append(plots.plot_anchor_top_items(
                    emb["joint_anchor_scores"]["video"]["video"][keep], out / f"anchor_items_{split}.png",
                    image_paths=[paths[i] for i in keep] if paths else None,
                    captions=[items[i].get("caption") or "" for i in keep]))
    return written


__all__ = ["MAIN_DIRECTIONS", "write_run_figures"]
