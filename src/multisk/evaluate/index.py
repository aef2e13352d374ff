"""A searchable embedding index: one ``.npz`` with the joint embeddings of a collection plus its item
metadata; text queries are embedded with the checkpoint's text branch and ranked by cosine (exact up to
:data:`multisk.evaluate.ann.EXACT_LIMIT` valid items, a faiss approximate index beyond;
:mod:`multisk.evaluate.ann`). An index is named by its ``.npz`` file or by the folder holding
``index.npz`` (what ``multisk embed --folder`` writes; :mod:`multisk.evaluate.collection`).

Self-contained (since version 4). ``multisk embed`` copies the checkpoint into the index's folder
(``checkpoints/SHA16.pt``, one copy per model however many indexes share the folder) and records that
copy's relative path first, so moving or copying the index folder keeps search working even when the
run folder is gone; ``--no-copy-checkpoint`` records the checkpoint by reference only. The text
encoders are packaged (GloVe ``glove-6b-50d``, MiniLM: Python packages, recorded by name); a word-vector
*file* of a converted store is recorded by path, name and size and not copied (it is gigabytes), so an
index of such a store needs ``--word-vectors`` once that file moves.

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
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from multisk.errors import DataFormatError
from multisk.evaluate.ann import DEFAULT_NPROBE, GallerySearch
from multisk.evaluate.loading import load_model
from multisk.evaluate.text_queries import describe, embed_texts

INDEX_VERSION = 4  # 3: a score calibration (multisk.evaluate.search_calibration); 4: a checkpoint copy
INDEX_FILE = "index.npz"  # the index inside an index folder
CHECKPOINT_DIR = "checkpoints"  # the copies of the checkpoints, inside the index's folder
DEFAULT_ITEM_FIELDS = ("id", "caption", "category", "path")
ANY_TARGET = "any"  # search target: each item by whichever of its modalities it has


def index_file(path: str | Path) -> Path:
    """The ``.npz`` of an index named by its file or by its folder (``FOLDER/index.npz``)."""
    path = Path(path)
    return path / INDEX_FILE if path.is_dir() else path


def copy_checkpoint_beside(checkpoint: Path, folder: Path, sha256: str) -> Path:
    """``folder/checkpoints/SHA16.pt``: a copy of ``checkpoint`` (written atomically; kept if there)."""
    target = folder / CHECKPOINT_DIR / f"{sha256[:16]}.pt"
    if target.is_file() and target.stat().st_size == checkpoint.stat().st_size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(checkpoint, tmp)
    os.replace(tmp, target)
    return target


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_index(path: str | Path, embeddings: Mapping[str, Any], items, *, checkpoint: str | Path,
               text_encoder: Optional[Mapping[str, Any]], calibration: Optional[Mapping[str, Any]] = None,
               copy_checkpoint: bool = True, item_fields=DEFAULT_ITEM_FIELDS,
               extra: Optional[Mapping[str, Any]] = None, sha256: Optional[str] = None) -> Path:
    """Write ``embeddings`` (:func:`multisk.evaluate.pipeline.embed_dataset` output) and item metadata;
    ``calibration``: :func:`multisk.evaluate.search_calibration.calibrate`'s record (None: not recorded,
    as in indexes written before version 3); ``copy_checkpoint``: copy the checkpoint into the index's
    folder (module docstring); ``item_fields``: the item fields kept (None: all); ``extra``: more
    top-level metadata; ``sha256``: the checkpoint's, when the caller has it already."""
    path = index_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(checkpoint).resolve()
    sha256 = sha256 or file_sha256(checkpoint)
    record = {"absolute": str(checkpoint), "sha256": sha256}
    if copy_checkpoint:
        copy = copy_checkpoint_beside(checkpoint, path.parent, sha256)
        record = {"relative": os.path.relpath(copy, path.parent.resolve()), "copied_from": str(checkpoint),
                  "sha256": sha256}
    else:
        record["relative"] = os.path.relpath(checkpoint, path.parent.resolve())
    arrays = {f"joint/{k}": v.numpy().astype(np.float32) for k, v in embeddings["joint"].items()}
    arrays.update({f"nonempty/{k}": v.numpy().astype(bool) for k, v in embeddings["nonempty"].items()})
    meta = {
        "version": INDEX_VERSION,
        "checkpoint": record,
        "text_encoder": dict(text_encoder) if text_encoder else None,
        "items": [dict(item) if item_fields is None else {k: item.get(k) for k in item_fields if k in item}
                  for item in items],
        **(dict(extra) if extra else {}),
    }
    if calibration is not None:
        meta["calibration"] = dict(calibration)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8), **arrays)
    tmp.replace(path)
    return path


def load_index(path: str | Path) -> Dict[str, Any]:
    """``{"meta", "joint": {name: (N, E)}, "nonempty": {m: (N,) bool}, "path"}`` of an index file or folder."""
    path = index_file(path)
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


def _any_embeddings(index: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Target ``any``: per item, the normalised mean of the L2-normalised single-modality embeddings it
    has (``video`` and/or ``audio``, ...): pictures, videos and sounds of a collection in one ranking."""
    names = [n for n in index["joint"] if n != "text" and "_" not in n]
    total = torch.zeros_like(index["joint"][names[0]].float()) if names else None
    valid = torch.zeros(total.shape[0] if names else 0, dtype=torch.bool)
    for n in names:
        has = index["nonempty"].get(n, torch.ones(total.shape[0], dtype=torch.bool))
        total += torch.nn.functional.normalize(index["joint"][n].float(), dim=-1) * has[:, None]
        valid |= has
    if not bool(valid.any()):
        raise DataFormatError(f"{index['path']}: --target any: no item has a picture, video or sound embedding")
    return torch.nn.functional.normalize(total, dim=-1), valid


def target_embeddings(index: Mapping[str, Any], target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gallery (N, E) L2-normalised, valid (N,) bool)`` of a search target: one embedding (``video``),
    or the mean of several L2-normalised ones, normalised again (late fusion, ``video+audio``); an item is
    valid when it has every modality the target reads. Raises when no item is. ``any``: every item by
    the modalities it has (:func:`_any_embeddings`)."""
    if target == ANY_TARGET:
        return _any_embeddings(index)
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


class IndexSearcher:
    """Text search over one index with its model loaded once (``multisk search`` and ``multisk serve``).

    ``checkpoint`` / ``word_vectors`` override the recorded ones (:func:`index_checkpoint`);
    ``exact_limit``, ``nprobe``: see :class:`multisk.evaluate.ann.GallerySearch`.
    """

    def __init__(self, index: Mapping[str, Any], *, device: str | torch.device = "cpu",
                 checkpoint: Optional[str | Path] = None, word_vectors: Optional[str] = None,
                 exact_limit: Optional[int] = None, nprobe: int = DEFAULT_NPROBE) -> None:
        self.index = index
        self.spec = index["meta"].get("text_encoder")
        if not self.spec:
            raise DataFormatError(f"{index['path']}: field 'text_encoder' is missing: the store the index was made "
                                  f"from records no text encoder for the model's text input, so a query cannot be "
                                  f"embedded like its captions")
        self.device = device
        self.word_vectors = word_vectors
        self.exact_limit = exact_limit
        self.nprobe = nprobe
        self.model, _ = load_model(index_checkpoint(index, checkpoint), device=device)
        self._galleries: Dict[str, GallerySearch] = {}

    def gallery(self, target: str) -> GallerySearch:
        if target not in self._galleries:
            gallery, valid = target_embeddings(self.index, target)
            self._galleries[target] = GallerySearch(gallery, valid, exact_limit=self.exact_limit,
                                                    nprobe=self.nprobe)
        return self._galleries[target]

    def embed(self, texts: List[str]) -> torch.Tensor:
        """(C, E) joint text embeddings; raises for a text with no in-vocabulary word (module docstring)."""
        q, has_tokens = embed_texts(self.model, texts, self.spec, device=self.device, word_vectors=self.word_vectors)
        for text, ok in zip(texts, has_tokens.tolist()):
            if not ok:
                raise DataFormatError(f"query {text!r}: none of its words is in the vocabulary of "
                                      f"{describe(self.spec)}, so the model has nothing to match (it would answer "
                                      f"with its masking token); try other words")
        return q

    def search(self, query: str, *, target: str = "video", top: int = 10) -> List[Dict[str, Any]]:
        """See :func:`search_index`."""
        if not query.strip():
            raise DataFormatError("query: empty search text")
        engine = self.gallery(target)
        q = self.embed([query])
        scores, rows = engine.search(q, top)
        items = self.index["meta"]["items"]
        return [{"score": float(s), **items[r]} for s, r in zip(scores[0].tolist(), rows[0].tolist()) if r >= 0]


def search_index(index: Mapping[str, Any], query: str, *, target: str = "video", top: int = 10,
                 device: str | torch.device = "cpu", checkpoint: Optional[str | Path] = None,
                 word_vectors: Optional[str] = None, exact_limit: Optional[int] = None,
                 nprobe: int = DEFAULT_NPROBE) -> List[Dict[str, Any]]:
    """The ``top`` items whose ``target`` embedding has the highest cosine with the query's text embedding.

    Returns dicts ``{"score", "id", "caption"?, "category"?, "path"?, ...}``, best first. Raises (with a
    clear message) for an empty query, a query with no token in the text encoder's vocabulary (the model
    would answer with its masking token, i.e. noise), or a target no item has.
    """
    if not query.strip():
        raise DataFormatError("query: empty search text")
    searcher = IndexSearcher(index, device=device, checkpoint=checkpoint, word_vectors=word_vectors,
                             exact_limit=exact_limit, nprobe=nprobe)
    return searcher.search(query, target=target, top=top)


__all__ = ["ANY_TARGET", "INDEX_FILE", "IndexSearcher", "copy_checkpoint_beside", "file_sha256", "index_checkpoint",
           "index_file",
           "load_index", "save_index", "search_index", "target_embeddings"]
