"""Zero-shot classification from class names: name → word-vector tokens → the model's text branch →
nearest class by cosine to each item's picture/video embedding (SPEC §6 asks us to design it)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from multisk.metrics.classification import zero_shot_classification


def text_encoder_spec(manifest: Mapping[str, Any], split: str, store_text_modality: str = "text") -> Optional[Dict[str, Any]]:
    """How the store's ``text`` tokens were made (recorded by the preparers), or None if unknown.

    The record describes the store modality ``text`` only: a model fed another text modality (e.g.
    ``text_minilm`` through data.modality_map) gets None, so nothing embeds queries the wrong way.
    """
    if store_text_modality != "text":
        return None
    split_info = manifest.get("splits", {}).get(split, {})
    return split_info.get("text_encoder") or manifest.get("text_encoder")


@torch.no_grad()
def embed_texts(model, names, spec: Mapping[str, Any], *, device, text_dim: int) -> torch.Tensor:
    """(C, E) normalised joint text embeddings of free-form texts (class names, search queries), made
    with the same word vectors as the store's text tokens (``spec`` = the manifest's text_encoder)."""
    from multisk.data.text import encode_text
    from multisk.data.word_vectors import load_word_vectors

    kv = load_word_vectors(spec["name"])
    if kv.vector_size != text_dim:
        from multisk.errors import DataFormatError

        raise DataFormatError(f"text_encoder {spec['name']!r}: {kv.vector_size}-d word vectors, but the model "
                              f"expects model.text_dim={text_dim}")
    rows = [encode_text(kv, name.replace("_", " "), max_words=int(spec.get("max_words", 20)),
                        lowercase=bool(spec.get("lowercase", False))) for name in names]
    length = max(1, max(r.shape[0] for r in rows))
    text = torch.zeros(len(rows), length, text_dim)
    mask = torch.zeros(len(rows), length)
    for i, r in enumerate(rows):
        text[i, : r.shape[0]] = torch.from_numpy(np.asarray(r, dtype=np.float32))
        mask[i, : r.shape[0]] = 1
    batch = {"text": text.to(device), "text_mask": mask.to(device)}
    # the other modalities are present but empty, as for a text-only item
    for key, shape in (("video", (len(rows), 1, model.cfg.video_dim)), ("audio", (len(rows), model.cfg.audio_mels, 64))):
        if key in model.cfg.modalities:
            batch[key] = torch.zeros(shape, device=device)
            batch[f"{key}_mask"] = torch.zeros(shape[0], shape[-1] if key == "audio" else shape[1], device=device)
    batch["index"] = torch.arange(len(rows), device=device)
    batch["id"] = list(names)
    return model(batch)["joint_normalized"]["text"].float().cpu()


def classify_by_category(model, dataset, embeddings: Mapping[str, Any], manifest: Mapping[str, Any], *,
                         device) -> Optional[Dict[str, Any]]:
    """Top-1/top-5 accuracy of picture (video) embeddings against category names; None when the split
    has fewer than two categories, no text encoder record, or no video modality."""
    items = dataset.store.items
    spec = text_encoder_spec(manifest, dataset.store.split, dataset.modality_map.get("text", "text"))
    if not items or spec is None or "video" not in embeddings["joint"] or "text" not in embeddings["joint"]:
        return None
    categories = [item.get("category") for item in items]
    names = sorted({c for c in categories if c})
    if len(names) < 2:
        return None
    valid = torch.tensor([c is not None for c in categories]) & embeddings["nonempty"]["video"].bool()
    labels = torch.tensor([names.index(c) if c else -1 for c in categories])
    class_emb = embed_texts(model, names, spec, device=device, text_dim=model.cfg.text_dim)
    result = zero_shot_classification(embeddings["joint"]["video"][valid], class_emb, labels[valid])
    result["classes"] = len(names)
    return result
