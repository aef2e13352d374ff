"""Incremental, resumable indexing of a media folder: ``multisk embed --folder PATH --index DIR``.

The index folder ``DIR`` holds::

    DIR/index.npz                the searchable index (multisk.evaluate.index; version 4)
    DIR/checkpoints/SHA16.pt     the copy of the checkpoint that made it (self-contained index)
    DIR/pending/chunk-*.npz      embeddings written since the last completed run (resume points)

A run scans the folder (:func:`multisk.data.formats.folder.index_folder`: pictures, videos, sounds and their
captions), and compares each item's files with what the index recorded:

* unchanged: every file has the recorded size and modification time, or, where the time differs, the
  recorded SHA-256 (a copy or a ``touch`` is not a change); the caption and clip length are the same;
* changed (re-embedded) otherwise; new (embedded); gone from the folder (dropped).

Items to embed go through the feature encoders and the model in chunks of ``chunk_items``; each
chunk's embeddings are written atomically to ``pending/`` as soon as they exist. A run that is killed
loses at most the chunk it was working on: the next run finds the pending chunks, reuses them (their
files' identities are checked like the index's) and embeds only the rest. The last step merges
everything into ``index.npz`` (atomic rename), recomputes the score calibration
(:mod:`multisk.evaluate.search_calibration`, each caption with its own item left out) and deletes the
pending chunks. Every file records the SHA-256 of the checkpoint that made it; a run with another
checkpoint is refused (:class:`ModelMismatchError`): one index never mixes two models' embeddings.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from multisk.data.encoders.encoding import FeatureCache, progress_bar, write_split
from multisk.data.formats.folder import (
    clip_video_items,
    encode_folder,
    folder_split_metadata,
    index_folder,
    read_caption_csv,
)
from multisk.data.encoders.image_features import PictureEncoder
from multisk.errors import DataFormatError
from multisk.evaluate.index import INDEX_FILE, file_sha256, save_index
from multisk.evaluate.inputs import eval_store_dataset
from multisk.evaluate.loading import load_model
from multisk.evaluate.pipeline import embed_dataset
from multisk.evaluate.search_calibration import CALIBRATION_QUANTILE, calibrate
from multisk.evaluate.text_queries import query_encoder_spec

PENDING_DIR = "pending"
CHUNK_ITEMS = 32
ITEM_FIELDS = ("id", "caption", "category", "file", "path", "media", "start", "end", "entry")


class ModelMismatchError(DataFormatError):
    """An index folder holds embeddings of another checkpoint than the one given."""


def _file_record(path: Path, with_hash: bool = True) -> Dict[str, Any]:
    stat = path.stat()
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if with_hash:
        record["sha256"] = file_sha256(path)
    return record


def entry_files(entry: Mapping[str, Any], folder: Path) -> Dict[str, Path]:
    """Relative path (``/``-separated) -> path of every file of a folder entry (media and caption file)."""
    return {p.relative_to(folder).as_posix(): p for paths in entry["files"].values() for p in paths}


def entry_unchanged(entry: Mapping[str, Any], folder: Path, recorded: Optional[Mapping[str, Any]],
                    clip_seconds: Optional[float]) -> bool:
    """Whether ``recorded`` (an indexed item's ``source`` record) still describes the entry (module
    docstring: size and time, else SHA-256; caption; clip length)."""
    if recorded is None or recorded.get("caption") != entry["caption"] or recorded.get("clip_seconds") != clip_seconds:
        return False
    files = entry_files(entry, folder)
    if set(files) != set(recorded.get("files", {})):
        return False
    times = {}
    for name, path in files.items():
        then = recorded["files"][name]
        now = _file_record(path, with_hash=False)
        if now["size"] != then.get("size"):
            return False
        if now["mtime_ns"] != then.get("mtime_ns") and file_sha256(path) != then.get("sha256"):
            return False
        times[name] = now["mtime_ns"]
    for name, mtime in times.items():  # same content, new time: remember the time (no hashing next run)
        recorded["files"][name]["mtime_ns"] = mtime
    return True


def _read_npz(path: Path) -> Dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
            arrays = {k: data[k] for k in data.files if k != "meta"}
    except (OSError, ValueError, KeyError, UnicodeDecodeError, EOFError) as err:
        raise DataFormatError(f"{path}: unreadable index part ({err}); delete it and run `multisk embed` again") from None
    return {"meta": meta, "arrays": arrays, "path": path}


def _recorded_sha(part: Mapping[str, Any]) -> Optional[str]:
    record = part["meta"].get("checkpoint")
    return record.get("sha256") if isinstance(record, Mapping) else None


class _Rows:
    """Embedded items known so far, by entry stem: ``{stem: [(item meta, {array key: row})]}``."""

    def __init__(self) -> None:
        self.by_entry: Dict[str, List[tuple]] = {}
        self.origin: Dict[str, str] = {}  # stem -> "index" | "pending" | "new"

    def add_part(self, part: Mapping[str, Any], origin: str) -> set:
        """Add a part's items (a later part's items of an entry replace the earlier ones); returns their stems."""
        fresh: Dict[str, List[tuple]] = {}
        for row, item in enumerate(part["meta"]["items"]):
            stem = item.get("entry", item["id"])
            fresh.setdefault(stem, []).append((item, {k: v[row] for k, v in part["arrays"].items()}))
        self.by_entry.update(fresh)
        self.origin.update({stem: origin for stem in fresh})
        return set(fresh)


def load_known(index_dir: Path, sha256: str, checkpoint: Path) -> tuple[_Rows, List[Path]]:
    """The index's and the pending chunks' embedded items; raises :class:`ModelMismatchError` for a part
    made by another checkpoint. Returns ``(rows, pending chunk paths)``."""
    rows = _Rows()
    for stale in (index_dir / PENDING_DIR).glob(".chunk-*.tmp"):  # a chunk being written when a run was killed
        stale.unlink()
    parts = [index_dir / INDEX_FILE] if (index_dir / INDEX_FILE).is_file() else []
    pending = sorted((index_dir / PENDING_DIR).glob("chunk-*.npz"))
    for path in parts + pending:
        part = _read_npz(path)
        recorded = _recorded_sha(part)
        if recorded != sha256:
            raise ModelMismatchError(
                f"{path}: made with the checkpoint of SHA-256 {str(recorded)[:12]}..., but --checkpoint {checkpoint} "
                f"has SHA-256 {sha256[:12]}...; one index never mixes two models' embeddings: index with the "
                f"original checkpoint, or give a new --index folder (or delete {index_dir}) to embed everything "
                f"with this one")
        rows.add_part(part, "index" if path.name == INDEX_FILE else "pending")
    return rows, pending


def _atomic_savez(path: Path, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``path`` whole or not at all: a hidden temporary file (``.NAME.PID.tmp``, which no reader
    globs), flushed to disk, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8), **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class CollectionEmbedder:
    """The model, encoders and settings of one ``multisk embed --folder`` run (module docstring)."""

    def __init__(self, checkpoint: str | Path, folder: str | Path, index_dir: str | Path, *, device="cpu",
                 captions: Optional[str | Path] = None, clip_seconds: Optional[float] = None,
                 chunk_items: int = CHUNK_ITEMS, batch_size: int = 64, skip_bad: bool = False,
                 copy_checkpoint: bool = True, progress: bool = False, quantile: Optional[float] = None) -> None:
        self.checkpoint = Path(checkpoint)
        self.folder = Path(folder)
        self.index_dir = Path(index_dir)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: media folder not found")
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"{self.checkpoint}: checkpoint not found")
        if chunk_items < 1:
            raise DataFormatError(f"--chunk-items: must be >= 1, got {chunk_items}")
        self.device, self.clip_seconds, self.chunk_items = device, clip_seconds, chunk_items
        self.batch_size, self.skip_bad, self.copy_checkpoint, self.progress = batch_size, skip_bad, copy_checkpoint, progress
        self.caption_table = read_caption_csv(Path(captions)) if captions is not None else None
        self.sha256 = file_sha256(self.checkpoint)
        self.model, self.cfg = load_model(self.checkpoint, device=device)
        self.encoder = PictureEncoder()
        self.cache = FeatureCache(self.index_dir / "cache")
        self.metadata = folder_split_metadata(self.folder, self.encoder, 0, clip_seconds)
        text_modality = dict(self.cfg.data.modality_map).get("text", "text")
        self.spec = query_encoder_spec({"splits": {"folder": self.metadata}}, "folder", text_modality)
        self.skipped: List[Dict[str, str]] = []
        self.quantile = CALIBRATION_QUANTILE if quantile is None else quantile

    def _source_record(self, entry: Mapping[str, Any]) -> Dict[str, Any]:
        files = {name: _file_record(path) for name, path in entry_files(entry, self.folder).items()}
        return {"files": files, "caption": entry["caption"], "clip_seconds": self.clip_seconds}

    def embed_chunk(self, entries: Sequence[Mapping[str, Any]], number: int) -> Optional[Path]:
        """Encode and embed some entries; write ``pending/chunk-NUMBER.npz`` atomically (None: all bad).
        Each item records its entry's files (size, time, SHA-256), caption and clip length (``source``)."""
        records = {e["stem"]: self._source_record(e) for e in entries}  # before reading: a later edit re-embeds
        items, skipped = encode_folder(list(entries), self.folder, self.encoder, self.cache, skip_bad=self.skip_bad)
        self.skipped += skipped
        if not items:
            return None
        items = clip_video_items(items, self.clip_seconds)
        work = Path(tempfile.mkdtemp(prefix="chunk-", dir=self.index_dir))
        try:
            write_split(work, "chunk", items, metadata=self.metadata)
            dataset = eval_store_dataset(self.cfg, str(work), "chunk")
            emb = embed_dataset(self.model, dataset, device=self.device, batch_size=self.batch_size)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        metas = []
        for item in items:
            meta = {k: item[k] for k in ITEM_FIELDS if k in item}
            meta["source"] = records[item.get("entry", item["id"])]
            metas.append(meta)
        arrays = {f"joint/{k}": v.numpy().astype(np.float32) for k, v in emb["joint"].items()}
        arrays.update({f"nonempty/{k}": v.numpy().astype(bool) for k, v in emb["nonempty"].items()})
        path = self.index_dir / PENDING_DIR / f"chunk-{number:06d}.npz"
        _atomic_savez(path, {"checkpoint": {"sha256": self.sha256}, "items": metas}, arrays)
        return path

    def merge(self, entries: Sequence[Mapping[str, Any]], rows: _Rows) -> Dict[str, Any]:
        """Write ``index.npz`` from the known rows of ``entries`` (in folder order); returns the calibration."""
        items, columns = [], {}
        for entry in entries:
            for item, arrays in rows.by_entry.get(entry["stem"], []):
                items.append(item)
                for key, value in arrays.items():
                    columns.setdefault(key, []).append(value)
        if not items:
            raise DataFormatError(f"{self.folder}: no item could be embedded (every media file was bad)")
        emb = {"joint": {}, "nonempty": {}}
        for key, values in columns.items():
            group, name = key.split("/", 1)
            emb[group][name] = torch.from_numpy(np.stack(values))
        calibration = self._calibration(emb, items)
        save_index(self.index_dir / INDEX_FILE, emb, items, checkpoint=self.checkpoint, text_encoder=self.spec,
                   calibration=calibration, copy_checkpoint=self.copy_checkpoint, item_fields=None,
                   sha256=self.sha256, extra={"collection": {"root": str(self.folder.resolve()),
                                                             "clip_seconds": self.clip_seconds}})
        return calibration

    def _calibration(self, emb: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        if self.spec is None:
            return {"reason": f"the model reads text as {self.cfg.data.modality_map.get('text')!r}, which a folder "
                              f"store does not have"}
        source = {"split": "folder", "captions": [item.get("caption") for item in items], "leave_own_item_out": True,
                  "describe": "the collection's own captions, each with its own item left out"}
        return calibrate(self.model, emb, source, self.spec, device=self.device, quantile=self.quantile)


def embed_collection(embedder: CollectionEmbedder) -> Dict[str, Any]:
    """One incremental run (module docstring). Returns ``{"index", "items", "entries", "new", "changed",
    "removed", "unchanged", "resumed" (of the unchanged: embedded by an interrupted run), "skipped",
    "calibration", "seconds"}`` (counts of folder entries; ``items`` counts moments of videos apart)."""
    started = time.perf_counter()
    index_dir = embedder.index_dir
    index_dir.mkdir(parents=True, exist_ok=True)
    rows, pending = load_known(index_dir, embedder.sha256, embedder.checkpoint)
    entries = index_folder(embedder.folder, embedder.caption_table)
    stems = {e["stem"] for e in entries}
    indexed: set = set()
    if (index_dir / INDEX_FILE).is_file():
        indexed = {item.get("entry", item["id"]) for item in _read_npz(index_dir / INDEX_FILE)["meta"]["items"]}
    todo, counts = [], {"new": 0, "changed": 0, "unchanged": 0, "resumed": 0}
    for entry in entries:
        known = rows.by_entry.get(entry["stem"])
        if known and all(entry_unchanged(entry, embedder.folder, item.get("source"), embedder.clip_seconds)
                         for item, _ in known):
            counts["unchanged"] += 1
            counts["resumed"] += rows.origin.get(entry["stem"]) == "pending"
            continue
        counts["changed" if entry["stem"] in indexed else "new"] += 1
        todo.append(entry)
    first = 1 + max([int(p.stem.split("-")[1]) for p in pending] or [0])
    chunks = [todo[i: i + embedder.chunk_items] for i in range(0, len(todo), embedder.chunk_items)]
    for number, chunk in enumerate(progress_bar(chunks, len(chunks), "embedding", embedder.progress), first):
        path = embedder.embed_chunk(chunk, number)
        embedded = rows.add_part(_read_npz(path), "new") if path is not None else set()
        for entry in chunk:  # an entry whose files were all bad (--skip-bad) is dropped with its old rows
            if entry["stem"] not in embedded:
                rows.by_entry.pop(entry["stem"], None)
    removed = len(indexed - stems)
    calibration = embedder.merge(entries, rows)
    for path in sorted((index_dir / PENDING_DIR).glob("chunk-*.npz")):
        path.unlink()
    items = sum(len(rows.by_entry.get(e["stem"], [])) for e in entries)
    return {"index": str(index_dir / INDEX_FILE), "items": items, "entries": len(entries), **counts,
            "removed": removed, "skipped": embedder.skipped, "calibration": calibration,
            "seconds": round(time.perf_counter() - started, 2)}


__all__ = ["CHUNK_ITEMS", "CollectionEmbedder", "ModelMismatchError", "embed_collection", "entry_files",
           "entry_unchanged", "load_known"]
