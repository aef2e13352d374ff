"""A searchable embedding index: one ``.npz`` with the joint embeddings of a collection plus its item
metadata; text queries are embedded with the checkpoint's text branch and ranked by cosine (a plain
matrix product — exact, and fast for the collection sizes this writes; use faiss on the saved matrix for
millions of items).

Portable and safe. The file holds only arrays and one UTF-8 JSON record (read with
``allow_pickle=False``: opening an index runs no code). The record names the checkpoint three ways: its
path **relative to the index's folder**, its absolute path when the index was written, and its SHA-256.
Search looks for the relative path first (an index moved together with its run folder, or received with
the checkpoint beside it, keeps working), then the absolute one; ``--checkpoint`` overrides both. The
file found must have the recorded SHA-256 (else a clear error: another model would give meaningless
scores), and it is loaded with ``torch.load(weights_only=True)``. The text encoder record says how to
embed a query (:mod:`multisk.evaluate.text_queries`); a word-vector file that is not where it was can be
given with ``--word-vectors``. Since version 3 the record also holds a score calibration (per search
target, the best score that 95 % of real captions reach; :mod:`multisk.evaluate.search_calibration`), so
search can say when a query matches nothing well; older indexes load and search without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from multisk.errors import DataFormatError
from multisk.evaluate.loading import load_model
from multisk.evaluate.text_queries import describe, embed_texts

INDEX_VERSION = 3  # 3: a score calibration (multisk.evaluate.search_calibration)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_index(path: str | Path, embeddings: Mapping[str, Any], items, *, checkpoint: str | Path,
               text_encoder: Optional[Mapping[str, Any]], calibration: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``embeddings`` (:func:`multisk.evaluate.pipeline.embed_dataset` output) and item metadata;
    ``calibration``: :func:`multisk.evaluate.search_calibration.calibrate`'s record (None: not recorded,
    as in indexes written before version 3)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(checkpoint).resolve()
    arrays = {f"joint/{k}": v.numpy().astype(np.float32) for k, v in embeddings["joint"].items()}
    arrays.update({f"nonempty/{k}": v.numpy().astype(bool) for k, v in embeddings["nonempty"].items()})
    meta = {
        "version": INDEX_VERSION,
        "checkpoint": {
            "relative": os.path.relpath(checkpoint, path.parent.resolve()),
            "absolute": str(checkpoint),
            "sha256": file_sha256(checkpoint),
        },
        "text_encoder": dict(text_encoder) if text_encoder else None,
        "items": [{k: item.get(k) for k in ("id", "caption", "category", "path") if k in item} for item in items],
    }
    if calibration is not None:
        meta["calibration"] = dict(calibration)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8), **arrays)
    tmp.replace(path)
    return path


def load_index(path: str | Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: index not found (write one with `multisk embed`)")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
            joint = {k.split("/", 1)[1]: torch.from_numpy(data[k]) for k in data.files if k.startswith("joint/")}
            nonempty = {k.split("/", 1)[1]: torch.from_numpy(data[k]) for k in data.files if k.startswith("nonempty/")}
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{path}: not a multisk index ({err})") from None
    if not isinstance(meta, dict) or "items" not in meta or "checkpoint" not in meta:
        raise DataFormatError(f"{path}: not a multisk index (field 'meta' lacks 'items' / 'checkpoint')")
    return {"meta": meta, "joint": joint, "nonempty": nonempty, "path": path}


def index_checkpoint(index: Mapping[str, Any], override: Optional[str | Path] = None) -> Path:
    """The checkpoint an index was made with (module docstring: override, relative, absolute; SHA-256)."""
    record = index["meta"]["checkpoint"]
    if isinstance(record, str):  # indexes written before version 2: an absolute path only
        record = {"absolute": record}
    if override is not None:
        candidates = [Path(override)]
    else:
        candidates = []
        if record.get("relative"):
            candidates.append(Path(index["path"]).resolve().parent / record["relative"])
        if record.get("absolute"):
            candidates.append(Path(record["absolute"]))
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        tried = ", ".join(str(c) for c in candidates)
        raise FileNotFoundError(f"{index['path']}: the index's checkpoint is not found (tried {tried}); "
                                f"pass it with --checkpoint PATH")
    expected = record.get("sha256")
    if expected and file_sha256(found) != expected:
        raise DataFormatError(f"{found}: not the checkpoint {index['path']} was made with (its SHA-256 differs from "
                              f"the recorded {expected[:12]}...); embed the collection again with this checkpoint, "
                              f"or pass the original with --checkpoint")
    return found


def target_embeddings(index: Mapping[str, Any], target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gallery (N, E) L2-normalised, valid (N,) bool)`` of a search target: one embedding (``video``),
    or the mean of several L2-normalised ones, normalised again (late fusion, ``video+audio``); an item is
    valid when it has every modality the target reads. Raises when no item is."""
    names = target.split("+")
    missing = [n for n in names if n not in index["joint"]]
    if missing:
        raise DataFormatError(f"{index['path']}: --target {target!r}: no embedding {missing} "
                              f"(have: {sorted(index['joint'])})")
    fused = sum(torch.nn.functional.normalize(index["joint"][n].float(), dim=-1) for n in names) / len(names)
    valid = torch.ones(fused.shape[0], dtype=torch.bool)
    for n in names:
        for m in n.split("_"):
            if m in index["nonempty"]:
                valid &= index["nonempty"][m]
    if not bool(valid.any()):
        have = {m: int(flag.sum()) for m, flag in index["nonempty"].items()}
        raise DataFormatError(f"{index['path']}: --target {target!r}: no item of the index has {' and '.join(names)} "
                              f"(items having each modality: {have}); choose another --target")
    return torch.nn.functional.normalize(fused, dim=-1), valid


def search_index(index: Mapping[str, Any], query: str, *, target: str = "video", top: int = 10,
                 device: str | torch.device = "cpu", checkpoint: Optional[str | Path] = None,
                 word_vectors: Optional[str] = None) -> List[Dict[str, Any]]:
    """The ``top`` items whose ``target`` embedding has the highest cosine with the query's text embedding.

    Returns dicts ``{"score", "id", "caption"?, "category"?, "path"?}``, best first. Raises (with a clear
    message) for an empty query, a query with no token in the text encoder's vocabulary (the model would
    answer with its masking token, i.e. noise), or a target no item has.
    """
    if not query.strip():
        raise DataFormatError("query: empty search text")
    spec = index["meta"].get("text_encoder")
    if not spec:
        raise DataFormatError(f"{index['path']}: field 'text_encoder' is missing: the store the index was made from "
                              f"records no text encoder for the model's text input, so a query cannot be embedded "
                              f"like its captions")
    gallery, valid = target_embeddings(index, target)
    model, _ = load_model(index_checkpoint(index, checkpoint), device=device)
    q, has_tokens = embed_texts(model, [query], spec, device=device, word_vectors=word_vectors)
    if not bool(has_tokens[0]):
        raise DataFormatError(f"query {query!r}: none of its words is in the vocabulary of {describe(spec)}, so the "
                              f"model has nothing to match (it would answer with its masking token); try other words")
    scores = gallery @ q[0]
    scores[~valid] = -float("inf")
    order = torch.argsort(scores, descending=True)[: min(top, int(valid.sum()))]
    items = index["meta"]["items"]
    return [{"score": float(scores[i]), **items[i]} for i in order.tolist()]


__all__ = ["file_sha256", "index_checkpoint", "load_index", "save_index", "search_index", "target_embeddings"]
