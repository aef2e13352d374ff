"""A searchable embedding index: one ``.npz`` with the joint embeddings of a collection plus its item
metadata; text queries are embedded with the checkpoint's text branch and ranked by cosine (a plain
matrix product — exact, and fast for the collection sizes this writes; use faiss on the saved matrix for
millions of items)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from multisk.errors import DataFormatError


def save_index(path: str | Path, embeddings: Mapping[str, Any], items, *, checkpoint: str,
               text_encoder: Optional[Mapping[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"joint/{k}": v.numpy().astype(np.float32) for k, v in embeddings["joint"].items()}
    arrays.update({f"nonempty/{k}": v.numpy().astype(bool) for k, v in embeddings["nonempty"].items()})
    meta = {"checkpoint": checkpoint, "text_encoder": dict(text_encoder) if text_encoder else None,
            "items": [{k: item.get(k) for k in ("id", "caption", "category", "path") if k in item} for item in items]}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8), **arrays)
    tmp.replace(path)
    return path


def load_index(path: str | Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: index not found (write one with `multisk embed`)")
    try:
        with np.load(path) as data:
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
            joint = {k.split("/", 1)[1]: torch.from_numpy(data[k]) for k in data.files if k.startswith("joint/")}
            nonempty = {k.split("/", 1)[1]: torch.from_numpy(data[k]) for k in data.files if k.startswith("nonempty/")}
    except (OSError, ValueError, KeyError) as err:
        raise DataFormatError(f"{path}: not a multisk index ({err})") from None
    return {"meta": meta, "joint": joint, "nonempty": nonempty, "path": path}


def _target_embeddings(index: Mapping[str, Any], target: str) -> tuple[torch.Tensor, torch.Tensor]:
    names = target.split("+")
    missing = [n for n in names if n not in index["joint"]]
    if missing:
        raise DataFormatError(f"{index['path']}: --target {target!r}: no embedding {missing} "
                              f"(have: {sorted(index['joint'])})")
    fused = sum(torch.nn.functional.normalize(index["joint"][n], dim=-1) for n in names) / len(names)
    valid = torch.ones(fused.shape[0], dtype=torch.bool)
    for n in names:
        for m in n.split("_"):
            if m in index["nonempty"]:
                valid &= index["nonempty"][m]
    return torch.nn.functional.normalize(fused, dim=-1), valid


def search_index(index: Mapping[str, Any], query: str, *, target: str = "video", top: int = 10,
                 device: str | torch.device = "cpu") -> List[Dict[str, Any]]:
    from multisk.evaluate.classification import embed_texts
    from multisk.evaluate.loading import load_model

    if not query.strip():
        raise DataFormatError("query: empty search text")
    spec = index["meta"].get("text_encoder")
    if not spec:
        raise DataFormatError(f"{index['path']}: field 'text_encoder' is missing; cannot embed a text query")
    model, _ = load_model(index["meta"]["checkpoint"], device=device)
    q = embed_texts(model, [query], spec, device=device, text_dim=model.cfg.text_dim)[0]
    gallery, valid = _target_embeddings(index, target)
    scores = gallery @ torch.nn.functional.normalize(q, dim=-1)
    scores[~valid] = -float("inf")
    order = torch.argsort(scores, descending=True)[: min(top, int(valid.sum()))]
    items = index["meta"]["items"]
    return [{"score": float(scores[i]), **items[i]} for i in order.tolist()]
