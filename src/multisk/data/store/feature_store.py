"""The multisk feature store: one on-disk format for every prepared or converted dataset.

Layout (see docs/feature-format.md)::

    ROOT/manifest.json                 format, version, per split: item count, modalities
                                       ({dim, dtype, tokens}), sha256 of every file
    ROOT/SPLIT/items.jsonl             one JSON object per item: {"id", "caption", "category", ...}
    ROOT/SPLIT/MODALITY.bin            raw little-endian token matrix (total_tokens, dim), dtype as
                                       recorded in the manifest (float16 by default)
    ROOT/SPLIT/MODALITY.offsets.npy    int64 (n_items + 1,): item i owns rows offsets[i]:offsets[i+1];
                                       an empty range means the item lacks that modality

Tokens of item i for modality m are a (T_i, dim) matrix: word vectors for text, per-time-step features
for video / pictures, and spectrogram frames (F, n_mels) for audio. The reader memory-maps the
``.bin`` files, so a store larger than memory is streamed, never loaded whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

import numpy as np

from multisk.errors import FeatureStoreError  # defined in the leaf module, re-exported here

FORMAT_NAME = "multisk-features"
FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class FeatureStoreWriter:
    """Writes one split of a store, item by item (append-only; call :meth:`close` to finish).

    Args:
        root: store root directory (created if missing).
        split: split name, e.g. ``"train"``.
        modalities: modality name -> token dimension, e.g. ``{"text": 50, "video": 1280, "audio": 40}``.
        dtype: storage dtype of token matrices.
        metadata: free-form JSON-able information recorded for the split in the manifest.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        modalities: Mapping[str, int],
        dtype: str = "float16",
        metadata: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.dims = dict(modalities)
        self.dtype = np.dtype(dtype)
        self.metadata = dict(metadata or {})
        self.dir = self.root / split
        self.dir.mkdir(parents=True, exist_ok=True)
        self._bins = {m: open(self.dir / f"{m}.bin.partial", "wb") for m in self.dims}
        self._offsets: Dict[str, List[int]] = {m: [0] for m in self.dims}
        self._items = open(self.dir / "items.jsonl.partial", "w", encoding="utf-8")
        self._ids: set[str] = set()
        self._closed = False

    def add(self, item_id: str, tokens: Mapping[str, Optional[np.ndarray]], **fields: Any) -> None:
        """Append one item.

        Args:
            item_id: unique id within the split.
            tokens: modality -> (T, dim) array, or None / missing for an absent modality.
            fields: JSON-able item fields (``caption``, ``category``, ``source``, ...).
        """
        if item_id in self._ids:
            raise FeatureStoreError(f"{self.dir}: duplicate item id {item_id!r}")
        unknown = set(tokens) - set(self.dims)
        if unknown:
            raise FeatureStoreError(f"{self.dir}: item {item_id!r} has unknown modality {sorted(unknown)}")
        for m, dim in self.dims.items():
            arr = tokens.get(m)
            n = 0
            if arr is not None:
                arr = np.asarray(arr)
                if arr.ndim != 2 or arr.shape[1] != dim:
                    raise FeatureStoreError(
                        f"{self.dir}: item {item_id!r} field {m!r}: expected shape (T, {dim}), got {arr.shape}"
                    )
                if not np.isfinite(arr).all():
                    raise FeatureStoreError(f"{self.dir}: item {item_id!r} field {m!r}: contains NaN or inf")
                self._bins[m].write(np.ascontiguousarray(arr, dtype=self.dtype).tobytes())
                n = arr.shape[0]
            self._offsets[m].append(self._offsets[m][-1] + n)
        record = {"id": item_id, **fields}
        self._items.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._ids.add(item_id)

    def __len__(self) -> int:
        return len(self._ids)

    def close(self) -> Dict[str, Any]:
        """Finish the split: rename partial files into place and record it in the manifest."""
        if self._closed:
            raise FeatureStoreError(f"{self.dir}: writer already closed")
        self._closed = True
        self._items.close()
        os.replace(self.dir / "items.jsonl.partial", self.dir / "items.jsonl")
        info: Dict[str, Any] = {"count": len(self._ids), "modalities": {}, "files": {}, **self.metadata}
        for m, fh in self._bins.items():
            fh.close()
            os.replace(self.dir / f"{m}.bin.partial", self.dir / f"{m}.bin")
            np.save(self.dir / f"{m}.offsets.npy", np.asarray(self._offsets[m], dtype=np.int64))
            info["modalities"][m] = {
                "dim": self.dims[m],
                "dtype": self.dtype.name,
                "tokens": int(self._offsets[m][-1]),
                "items_present": int(np.count_nonzero(np.diff(self._offsets[m]))),
            }
        for name in ["items.jsonl", *[f"{m}.bin" for m in self.dims], *[f"{m}.offsets.npy" for m in self.dims]]:
            info["files"][name] = _sha256(self.dir / name)
        manifest_path = self.root / "manifest.json"
        manifest = (
            json.loads(manifest_path.read_text(encoding="utf-8"))
            if manifest_path.exists()
            else {"format": FORMAT_NAME, "version": FORMAT_VERSION, "splits": {}}
        )
        manifest["splits"][self.split] = info
        _atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
        return info

    def __enter__(self) -> "FeatureStoreWriter":
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None and not self._closed:
            self.close()
        elif not self._closed:  # leave no half-written split behind a failure
            self._items.close()
            for fh in self._bins.values():
                fh.close()


def read_manifest(root: str | Path) -> Dict[str, Any]:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FeatureStoreError(f"{path}: feature-store manifest not found (prepare or convert a dataset first)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FeatureStoreError(f"{path}: manifest is not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT_NAME:
        raise FeatureStoreError(f"{path}: field 'format' is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise FeatureStoreError(f"{path}: field 'version' is {manifest.get('version')!r}, expected {FORMAT_VERSION}")
    return manifest


class FeatureStore:
    """Read-only, memory-mapped view of one split of a feature store."""

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        manifest = read_manifest(self.root)
        if split not in manifest["splits"]:
            raise FeatureStoreError(
                f"{self.root / 'manifest.json'}: no split {split!r} (have: {', '.join(sorted(manifest['splits']))})"
            )
        self.info = manifest["splits"][split]
        self.dir = self.root / split
        items_path = self.dir / "items.jsonl"
        if not items_path.is_file():
            raise FeatureStoreError(f"{items_path}: missing")
        self.items: List[Dict[str, Any]] = []
        with open(items_path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                try:
                    self.items.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise FeatureStoreError(f"{items_path}: line {lineno} is not valid JSON ({err})") from None
        if len(self.items) != self.info["count"]:
            raise FeatureStoreError(
                f"{items_path}: {len(self.items)} items, manifest field 'count' says {self.info['count']}"
            )
        self._data: Dict[str, np.ndarray] = {}
        self._offsets: Dict[str, np.ndarray] = {}
        for m, meta in self.info["modalities"].items():
            off_path = self.dir / f"{m}.offsets.npy"
            bin_path = self.dir / f"{m}.bin"
            try:
                offsets = np.load(off_path)
            except (OSError, ValueError) as err:
                raise FeatureStoreError(f"{off_path}: cannot read offsets ({err})") from None
            if offsets.shape != (len(self.items) + 1,) or offsets[-1] != meta["tokens"]:
                raise FeatureStoreError(f"{off_path}: offsets do not match manifest field 'tokens' of {m!r}")
            dtype = np.dtype(meta["dtype"])
            expected = int(meta["tokens"]) * int(meta["dim"]) * dtype.itemsize
            if not bin_path.is_file() or bin_path.stat().st_size != expected:
                size = bin_path.stat().st_size if bin_path.is_file() else "missing"
                raise FeatureStoreError(f"{bin_path}: size {size} does not match manifest ({expected} bytes)")
            if expected:
                data = np.memmap(bin_path, dtype=dtype, mode="r", shape=(int(meta["tokens"]), int(meta["dim"])))
            else:
                data = np.zeros((0, int(meta["dim"])), dtype=dtype)
            self._data[m] = data
            self._offsets[m] = offsets

    @property
    def modalities(self) -> Dict[str, int]:
        return {m: int(meta["dim"]) for m, meta in self.info["modalities"].items()}

    def __len__(self) -> int:
        return len(self.items)

    def tokens(self, modality: str, index: int) -> np.ndarray:
        """(T, dim) tokens of item ``index`` (T = 0 when the item lacks the modality)."""
        if modality not in self._data:
            raise FeatureStoreError(
                f"{self.dir}: no modality {modality!r} (have: {', '.join(sorted(self._data))})"
            )
        off = self._offsets[modality]
        return self._data[modality][off[index] : off[index + 1]]

    def has(self, modality: str, index: int) -> bool:
        off = self._offsets[modality]
        return bool(off[index + 1] > off[index])

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return iter(self.items)

    def verify(self) -> None:
        """Recompute every file's sha256 and compare with the manifest (raises on mismatch)."""
        for name, digest in self.info.get("files", {}).items():
            if _sha256(self.dir / name) != digest:
                raise FeatureStoreError(f"{self.dir / name}: sha256 does not match the manifest")


__all__ = ["FeatureStore", "FeatureStoreError", "FeatureStoreWriter", "read_manifest", "FORMAT_NAME"]
