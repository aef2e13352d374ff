"""Zero-shot classification from class names: name → the store's text encoder → the model's text branch
→ nearest class by cosine to each item's embedding (the reference has none; this design is ours, docs/evaluation.md).

Every input the split allows is classified: each non-text modality of the model's modality table
(``video`` (pictures), ``audio``, a configured row such as ``flow``), then the late fusion (docs/evaluation.md) of
each two of them (``video+audio``), each over the items that have a category and that input. What cannot be classified is
reported with the reason (no categories, no item with pictures, no recorded text encoder, ...), never
raised: a split without pictures still gets its audio classified.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from multisk.errors import DataFormatError
from multisk.evaluate.text_queries import embed_texts, query_encoder_spec
from multisk.metrics.classification import zero_shot_classification
from multisk.modalities import MODALITY_SPECS, ModalityTable


def classified_inputs(table: ModalityTable = MODALITY_SPECS) -> Tuple[str, ...]:
    """What class names (text) are matched against: every other modality of ``table`` in table order,
    then each two of them fused late (``"a+b"``)."""
    singles = [m for m in table if m != "text"]
    return tuple(singles) + tuple(f"{a}+{b}" for a, b in combinations(singles, 2))


CLASSIFIED_INPUTS = classified_inputs()  # over the built-in rows: video, audio, video+audio


def text_encoder_spec(manifest: Mapping[str, Any], split: str, store_text_modality: str = "text") -> Optional[Dict[str, Any]]:
    """How the store modality the model reads as ``text`` was made (see :mod:`multisk.evaluate.text_queries`)."""
    return query_encoder_spec(manifest, split, store_text_modality)


def _item_embeddings(embeddings: Mapping[str, Any], name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    parts = name.split("+")
    normalized = [torch.nn.functional.normalize(embeddings["joint"][p].float(), dim=-1) for p in parts]
    valid = torch.ones(normalized[0].shape[0], dtype=torch.bool)
    for p in parts:
        valid &= embeddings["nonempty"][p].bool()
    return sum(normalized) / len(parts), valid


def classify_by_category(model, dataset, embeddings: Mapping[str, Any], manifest: Mapping[str, Any], *,
                         device, word_vectors: Optional[str] = None) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Top-1 / top-5 accuracy of every classifiable input against the split's category names.

    Returns ``(results, skipped)``: input name (:func:`classified_inputs` of the model's modality table:
    ``video``, ``audio``, ``video+audio`` and those of configured rows) -> metrics of
    :func:`multisk.metrics.zero_shot_classification` plus ``classes`` and ``classes_without_tokens``;
    and input name (or ``"all"``) -> the reason it was not classified.
    """
    items = dataset.store.items
    categories = [item.get("category") for item in items]
    names = sorted({c for c in categories if c})
    if len(names) < 2:
        return {}, {"all": "the split's items carry fewer than two categories ('category' field)"}
    text_modality = dataset.modality_map.get("text", "text")
    spec = query_encoder_spec(manifest, dataset.store.split, text_modality)
    if spec is None:
        return {}, {"all": f"the store records no text encoder for its modality {text_modality!r}"}
    if "text" not in embeddings["joint"]:
        return {}, {"all": "the model has no text branch"}
    results: Dict[str, Any] = {}
    skipped: Dict[str, str] = {}
    has_category = torch.tensor([c is not None for c in categories])
    labels = torch.tensor([names.index(c) if c else -1 for c in categories])
    class_emb = None
    for name in classified_inputs(getattr(model, "modality_table", MODALITY_SPECS)):
        parts = name.split("+")
        if any(p not in embeddings["joint"] for p in parts):
            skipped[name] = f"the model has no {' / '.join(p for p in parts if p not in embeddings['joint'])} branch"
            continue
        item_emb, valid = _item_embeddings(embeddings, name)
        valid &= has_category
        if not bool(valid.any()):
            skipped[name] = f"no item with a category has {' and '.join(parts)}"
            continue
        if class_emb is None:
            try:
                class_emb, has_tokens = embed_texts(model, names, spec, device=device, word_vectors=word_vectors)
            except (FileNotFoundError, DataFormatError) as err:
                # e.g. the word-vector file has moved: retrieval results still stand, the reason is reported
                return results, {"all": f"class names cannot be embedded: {err}"}
        result = zero_shot_classification(item_emb[valid], class_emb, labels[valid])
        result["classes"] = len(names)
        # a class name without any in-vocabulary word is represented by the masking token
        result["classes_without_tokens"] = [n for n, ok in zip(names, has_tokens.tolist()) if not ok]
        results[name] = result
    return results, skipped


__all__ = ["CLASSIFIED_INPUTS", "classified_inputs", "classify_by_category", "text_encoder_spec"]
