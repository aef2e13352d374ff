"""Map-style datasets over feature stores, token cropping, and the collate function that builds the
batch dict of docs/architecture.md.

Per-item dict (what every multisk dataset's ``__getitem__`` returns, before collation)::

    {"text":  FloatTensor (Lt_i, Dt),      word-vector tokens (Lt_i may be 0)
     "video": FloatTensor (Lv_i, Dv),      per-time-step features (Lv_i may be 0)
     "audio": FloatTensor (F_i, n_mels),   spectrogram frames, time first as stored (F_i may be 0)
     "index": int,                         position in the dataset
     "id":    str}

:func:`collate_batch` pads each modality to a common length, builds the 0/1 masks and transposes the
audio to ``(B, n_mels, F)``. Cropping happens in the dataset, before collation, so every item already
fits the padded length:

* text: the first ``max_tokens["text"]`` tokens (the reference keeps the first 20 words);
* video: ``video_crop="center"`` (default) keeps the ``n`` middle time steps, ``"start"`` the first ``n``
  (what the reference's evaluation loaders do), ``"even"`` ``n`` time steps spread evenly over the item
  (indices ``round(linspace(0, T-1, n))``);
* audio: ``audio_crop="center"`` (default) keeps the ``n`` middle frames, ``"start"`` the first ``n``.

Every crop is a pure function of the item, so the dataset is deterministic and any sampler (including
``DistributedSampler``) sees the same data on every rank.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from multisk.data.feature_store import FeatureStore, FeatureStoreError

MODALITY_ORDER = ("text", "video", "audio")
CROP_MODES = ("center", "start", "even")


def crop_tokens(tokens: np.ndarray, max_len: int, mode: str = "start") -> np.ndarray:
    """Keep at most ``max_len`` rows of a ``(T, dim)`` array.

    Modes: ``"start"`` rows ``[0, n)``; ``"center"`` rows ``[s, s + n)`` with ``s = (T - n) // 2``;
    ``"even"`` rows ``round(linspace(0, T - 1, n))`` (time order kept). ``T <= max_len`` returns the input.
    """
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    length = tokens.shape[0]
    if length <= max_len:
        return tokens
    if mode == "start":
        return tokens[:max_len]
    if mode == "center":
        start = (length - max_len) // 2
        return tokens[start : start + max_len]
    if mode == "even":
        if max_len == 0:
            return tokens[:0]
        rows = np.rint(np.linspace(0, length - 1, max_len)).astype(np.int64)
        return tokens[rows]
    raise ValueError(f"unknown crop mode {mode!r} (known: {', '.join(CROP_MODES)})")


def collate_batch(items: Sequence[Mapping[str, Any]], pad_to: Optional[Mapping[str, int]] = None) -> Dict[str, Any]:
    """Stack per-item dicts into the batch dict of docs/architecture.md.

    Args:
        items: per-item dicts (see module docstring); ``audio`` is ``(F_i, n_mels)``.
        pad_to: modality -> fixed padded length (text tokens, video tokens, audio frames). A modality not
            given pads to the longest item in the batch (at least 1, so an all-empty modality still has a
            well-formed, fully masked tensor). Fixed lengths keep shapes static across steps.

    Returns:
        ``text`` (B, Lt, Dt), ``text_mask`` (B, Lt), ``video`` (B, Lv, Dv), ``video_mask`` (B, Lv),
        ``audio`` (B, n_mels, F), ``audio_mask`` (B, F) — float32, masks 0/1 with ``mask[b, j] = 1`` iff
        ``j < len_b`` — plus ``index`` (B,) int64 and ``id`` list[str]. Padding positions are 0.

    Raises:
        ValueError: empty batch, inconsistent feature dims, or an item longer than ``pad_to``.
    """
    if not items:
        raise ValueError("collate_batch: empty batch")
    pad_to = dict(pad_to or {})
    batch: Dict[str, Any] = {}
    size = len(items)
    for modality in MODALITY_ORDER:
        arrays = [torch.as_tensor(item[modality]) for item in items]
        dims = {a.shape[1] for a in arrays}
        if len(dims) != 1 or any(a.ndim != 2 for a in arrays):
            shapes = [tuple(a.shape) for a in arrays]
            raise ValueError(f"collate_batch: field {modality!r} has inconsistent shapes {shapes}")
        dim = dims.pop()
        lengths = [a.shape[0] for a in arrays]
        length = pad_to.get(modality, max(1, max(lengths)))
        if max(lengths) > length:
            worst = items[int(np.argmax(lengths))].get("id")
            raise ValueError(
                f"collate_batch: item {worst!r} field {modality!r} has {max(lengths)} tokens, more than pad_to={length}"
            )
        values = torch.zeros(size, length, dim, dtype=torch.float32)
        mask = torch.zeros(size, length, dtype=torch.float32)
        for b, (array, n) in enumerate(zip(arrays, lengths)):
            if n:
                values[b, :n] = array.to(torch.float32)
                mask[b, :n] = 1.0
        if modality == "audio":
            values = values.transpose(1, 2).contiguous()  # (B, F, n_mels) -> (B, n_mels, F)
        batch[modality] = values
        batch[f"{modality}_mask"] = mask
    batch["index"] = torch.as_tensor([int(item["index"]) for item in items], dtype=torch.int64)
    batch["id"] = [str(item["id"]) for item in items]
    return batch


class FeatureStoreDataset(Dataset):
    """One split of a multisk feature store as a map-style dataset of per-item dicts.

    Args:
        root: feature-store root (the directory holding ``manifest.json``).
        split: split name.
        modality_map: model modality (``text`` / ``video`` / ``audio``) -> store modality name. A model
            modality missing from the map, or whose store modality does not exist, is empty in every
            item (all-zero mask); its feature size then comes from ``dims``.
        max_tokens: model modality -> crop length (text tokens, video tokens, audio frames); also the
            fixed padded length used by :attr:`collate_fn`.
        dims: model modality -> feature size, required only for modalities absent from the store.
        video_crop / audio_crop: crop modes (module docstring).

    Attributes:
        ids, captions, categories: per-item lists from ``items.jsonl`` (None where absent), used by
            evaluation (identical captions count as correct answers).
        complete_size: size of the complete benchmark (manifest field ``complete_size``, else ``len``):
            retrieval percentages are divided by it (SPEC §7).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        modality_map: Optional[Mapping[str, str]] = None,
        max_tokens: Optional[Mapping[str, int]] = None,
        dims: Optional[Mapping[str, int]] = None,
        video_crop: str = "center",
        audio_crop: str = "center",
    ) -> None:
        self.store = FeatureStore(root, split)
        self.modality_map = dict(modality_map) if modality_map is not None else {m: m for m in MODALITY_ORDER}
        unknown = set(self.modality_map) - set(MODALITY_ORDER)
        if unknown:
            raise FeatureStoreError(f"modality_map: unknown model modality {sorted(unknown)} (known: text, video, audio)")
        default_max = {"text": 20, "video": 12, "audio": 768}
        self.max_tokens = {**default_max, **dict(max_tokens or {})}
        for mode, name in ((video_crop, "video_crop"), (audio_crop, "audio_crop")):
            if mode not in CROP_MODES:
                raise FeatureStoreError(f"{name}: unknown crop mode {mode!r} (known: {', '.join(CROP_MODES)})")
        if audio_crop == "even":
            raise FeatureStoreError("audio_crop: 'even' would drop frames inside the spectrogram; use center or start")
        self.video_crop = video_crop
        self.audio_crop = audio_crop
        store_dims = self.store.modalities
        self.dims: Dict[str, int] = {}
        self._source: Dict[str, Optional[str]] = {}
        for modality in MODALITY_ORDER:
            name = self.modality_map.get(modality)
            if name is not None and name in store_dims:
                self._source[modality] = name
                self.dims[modality] = store_dims[name]
            else:
                self._source[modality] = None
                if dims is None or modality not in dims:
                    have = ", ".join(sorted(store_dims))
                    raise FeatureStoreError(
                        f"{self.store.root / 'manifest.json'}: split {split!r} has no modality "
                        f"{name or modality!r} for model modality {modality!r} (have: {have}); map it in "
                        f"data.modality_map or pass its feature size in dims"
                    )
                self.dims[modality] = int(dims[modality])
        items = self.store.items
        self.ids: List[str] = [str(item["id"]) for item in items]
        self.captions: List[Optional[str]] = [item.get("caption") for item in items]
        self.categories: List[Optional[str]] = [item.get("category") for item in items]
        self.complete_size: int = int(self.store.info.get("complete_size", len(items)))

    def __len__(self) -> int:
        return len(self.store)

    def _tokens(self, modality: str, index: int) -> np.ndarray:
        name = self._source[modality]
        if name is None:
            return np.zeros((0, self.dims[modality]), dtype=np.float32)
        tokens = self.store.tokens(name, index)
        mode = {"text": "start", "video": self.video_crop, "audio": self.audio_crop}[modality]
        # a copy: the memory map is read-only and torch tensors must own writable memory
        return np.array(crop_tokens(tokens, self.max_tokens[modality], mode), dtype=np.float32)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = int(index) % len(self)
        item: Dict[str, Any] = {m: torch.from_numpy(self._tokens(m, index)) for m in MODALITY_ORDER}
        item["index"] = index
        item["id"] = self.ids[index]
        return item

    @property
    def collate_fn(self) -> Callable[[Sequence[Mapping[str, Any]]], Dict[str, Any]]:
        """:func:`collate_batch` padding to the fixed ``max_tokens`` lengths (static shapes)."""
        return partial(collate_batch, pad_to=dict(self.max_tokens))


__all__ = ["CROP_MODES", "FeatureStoreDataset", "MODALITY_ORDER", "collate_batch", "crop_tokens"]
