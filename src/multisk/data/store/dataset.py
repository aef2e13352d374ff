"""Map-style datasets over feature stores, token cropping, and the collate function that builds the
batch dict of docs/architecture.md.

Per-item dict (what every multisk dataset's ``__getitem__`` returns, before collation)::

    {"text":  FloatTensor (Lt_i, Dt),      word-vector tokens (Lt_i may be 0)
     "video": FloatTensor (Lv_i, Dv),      per-time-step features (Lv_i may be 0)
     "audio": FloatTensor (F_i, n_mels),   spectrogram frames, time first as stored (F_i may be 0)
     <row>:   FloatTensor (L_i, dim)       one field per further row of the run's modality table
                                           (model.modality_specs; cropped by its rule)
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

Batch transport: with DataLoader workers every collated batch crosses shared memory (``/dev/shm``)
and is then copied to the device. ``dtypes={"video": torch.float16}`` collates the video features in
half precision (half the bytes of the largest tensor; the consumer upcasts on the device);
:func:`batch_nbytes` and :func:`loader_shared_memory_bytes` give the bytes involved (docs/data.md has
the sizing rule).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from multisk.data.store.feature_store import FeatureStore, FeatureStoreError
from multisk.modalities import MODALITIES, MODALITY_SPECS, ModalityTable

MODALITY_ORDER = MODALITIES  # the built-in rows; the loops below read the table they are given (multisk.modalities)
CROP_MODES = ("center", "start", "even")
TRANSPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def resolve_dtype(value: Any) -> torch.dtype:
    """``None`` / ``"float32"`` / ``"float16"`` / a torch float dtype -> torch dtype (None = float32)."""
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        return value
    if value in TRANSPORT_DTYPES:
        return TRANSPORT_DTYPES[value]
    raise ValueError(f"unknown transport dtype {value!r} (known: {', '.join(TRANSPORT_DTYPES)})")


def batch_nbytes(
    batch_items: int,
    max_tokens: Mapping[str, int],
    dims: Mapping[str, int],
    dtypes: Optional[Mapping[str, Any]] = None,
) -> int:
    """Bytes of the tensors of one batch from :func:`collate_batch` with fixed ``pad_to=max_tokens``.

    ``sum_m B * L_m * D_m * itemsize_m`` (values) ``+ sum_m B * L_m * 4`` (float32 masks) ``+ 8 B``
    (int64 index), for B = ``batch_items`` and modality m with padded length L_m, feature size D_m.
    The paper's global batch (2160 clips; 20 x 300 text, 12 x 4096 video, 768 x 40 audio) is 748.9 MB
    in float32 and 536.5 MB with float16 video; one of 8 ranks' shares (270 clips) is 67.1 MB.
    """
    dtypes = dtypes or {}
    total = 0
    for modality in max_tokens:  # every modality of the batch (the rows of the run's modality table)
        length, dim = int(max_tokens[modality]), int(dims[modality])
        itemsize = torch.tensor([], dtype=resolve_dtype(dtypes.get(modality))).element_size()
        total += batch_items * length * (dim * itemsize + 4)
    return total + 8 * batch_items


def loader_shared_memory_bytes(batch_bytes: int, num_workers: int, prefetch_factor: int, ranks: int = 1) -> int:
    """Upper bound of the shared memory that DataLoader batches occupy: ``ranks * (W * P + 1) * batch``.

    With ``W = num_workers > 0`` workers each rank's loader keeps ``W * P`` batches requested ahead
    (``P = prefetch_factor``); a finished batch waits in shared memory until the training loop takes it,
    and the one being taken is the ``+ 1``. ``num_workers = 0`` loads in the main process: no shared
    memory (0). ``ranks``: processes on the node (they share its ``/dev/shm``).
    """
    if num_workers < 0 or prefetch_factor < 1 or ranks < 1:
        raise ValueError(f"need num_workers >= 0, prefetch_factor >= 1, ranks >= 1; got {num_workers}, "
                         f"{prefetch_factor}, {ranks}")
    if num_workers == 0:
        return 0
    return ranks * (num_workers * prefetch_factor + 1) * int(batch_bytes)


def max_workers_within(budget_bytes: int, batch_bytes: int, prefetch_factor: int, ranks: int = 1) -> int:
    """The most workers per rank whose :func:`loader_shared_memory_bytes` stays within ``budget_bytes``.

    ``floor((budget / (ranks * batch) - 1) / prefetch_factor)``, at least 0.
    """
    per_rank_batches = budget_bytes // (ranks * int(batch_bytes))
    return max(0, int((per_rank_batches - 1) // prefetch_factor))


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


def collate_batch(
    items: Sequence[Mapping[str, Any]],
    pad_to: Optional[Mapping[str, int]] = None,
    dtypes: Optional[Mapping[str, Any]] = None,
    table: Optional[ModalityTable] = None,
) -> Dict[str, Any]:
    """Stack per-item dicts into the batch dict of docs/architecture.md.

    Args:
        items: per-item dicts (see module docstring); ``audio`` is ``(F_i, n_mels)``.
        pad_to: modality -> fixed padded length (text tokens, video tokens, audio frames). A modality not
            given pads to the longest item in the batch (at least 1, so an all-empty modality still has a
            well-formed, fully masked tensor). Fixed lengths keep shapes static across steps.
        dtypes: modality -> dtype of its values (``"float16"`` / ``torch.float16``; default float32).
            Masks are always float32.
        table: the modality table whose rows the items carry (default: the built-in rows,
            :data:`multisk.modalities.MODALITY_SPECS`); a ``spectrogram`` row is transposed to (B, dim, F).

    Returns:
        ``text`` (B, Lt, Dt), ``text_mask`` (B, Lt), ``video`` (B, Lv, Dv), ``video_mask`` (B, Lv),
        ``audio`` (B, n_mels, F), ``audio_mask`` (B, F) — values float32 unless ``dtypes`` says otherwise,
        masks float32 0/1 with ``mask[b, j] = 1`` iff ``j < len_b`` — plus ``index`` (B,) int64 and ``id`` list[str]. Padding positions are 0.

    Raises:
        ValueError: empty batch, inconsistent feature dims, or an item longer than ``pad_to``.
    """
    if not items:
        raise ValueError("collate_batch: empty batch")
    pad_to = dict(pad_to or {})
    dtypes = dict(dtypes or {})
    batch: Dict[str, Any] = {}
    size = len(items)
    table = MODALITY_SPECS if table is None else table
    for modality in table:
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
        dtype = resolve_dtype(dtypes.get(modality))
        values = torch.zeros(size, length, dim, dtype=dtype)
        mask = torch.zeros(size, length, dtype=torch.float32)
        for b, (array, n) in enumerate(zip(arrays, lengths)):
            if n:
                values[b, :n] = array.to(dtype)
                mask[b, :n] = 1.0
        if table[modality].encoder == "spectrogram":
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
        video_dtype: dtype of the collated ``video`` in :attr:`collate_fn` (None = float32).
        table: the modality table (:func:`multisk.modalities.modality_table` of the model config;
            default the built-in rows): every row is an item field, cropped by the row's rule.

    Attributes:
        ids, captions, categories: per-item lists from ``items.jsonl`` (None where absent), used by
            evaluation (identical captions count as correct answers).
        complete_size: size of the complete benchmark (manifest field ``complete_size``, else ``len``):
            retrieval percentages are divided by it (docs/evaluation.md).
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
        video_dtype: Any = None,
        table: Optional[ModalityTable] = None,
    ) -> None:
        self.store = FeatureStore(root, split)
        self.video_dtype = video_dtype
        self.modality_table = dict(MODALITY_SPECS if table is None else table)
        rows = self.modality_table
        self.modality_map = dict(modality_map) if modality_map is not None else {m: m for m in rows}
        unknown = set(self.modality_map) - set(rows)
        if unknown:
            raise FeatureStoreError(f"modality_map: unknown model modality {sorted(unknown)} "
                                    f"(known: {', '.join(rows)})")
        default_max = {"text": 20, "video": 12, "audio": 768}
        self.max_tokens = {**default_max, **{m: s.max_tokens for m, s in rows.items() if s.max_tokens is not None},
                           **dict(max_tokens or {})}
        unbudgeted = [m for m in rows if m not in self.max_tokens]
        if unbudgeted:
            raise FeatureStoreError(f"max_tokens: no token budget for modality {unbudgeted}")
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
        for modality in rows:
            name = self.modality_map.get(modality)
            if name is not None and name in store_dims:
                self._source[modality] = name
                self.dims[modality] = store_dims[name]
            else:
                self._source[modality] = None
                # an explicit remapping (e.g. text -> text_minilm) to a modality the store lacks is a
                # mistake, not an absent modality: training on it would silently see only masking tokens
                remapped = name is not None and name != modality
                if remapped or dims is None or modality not in dims:
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

    def shuffle_captions(self, fraction: float, seed: int) -> np.ndarray:
        """Misalign a seeded ``fraction`` of the pairs (weakly aligned data, as HowTo100M's ASR is).

        ``m = round(fraction * n_text)`` of the items with text are drawn with ``seed``; in the drawn
        order, item j takes the text of item j + 1 (the last takes the first's), so every drawn item
        gets another item's caption (m = 1 changes nothing). Only the text is moved; pictures and
        sounds stay. Returns ``text_source`` (N,) int64: item i reads the text of item text_source[i].
        """
        if not 0.0 <= fraction <= 1.0:
            raise FeatureStoreError(f"data.corrupt_fraction: must be in [0, 1], got {fraction}")
        name = self._source["text"]
        with_text = [i for i in range(len(self)) if name is not None and self.store.has(name, i)]
        count = int(round(fraction * len(with_text)))
        drawn = np.random.default_rng(seed).permutation(np.asarray(with_text, dtype=np.int64))[:count]
        source = np.arange(len(self), dtype=np.int64)
        if count >= 2:
            source[drawn] = np.roll(drawn, -1)
            self.captions = [self.captions[int(j)] for j in source]
        self.text_source = source
        return source

    def _tokens(self, modality: str, index: int) -> np.ndarray:
        name = self._source[modality]
        if name is None:
            return np.zeros((0, self.dims[modality]), dtype=np.float32)
        if modality == "text" and getattr(self, "text_source", None) is not None:
            index = int(self.text_source[index])  # shuffle_captions moved this item's caption
        tokens = self.store.tokens(name, index)
        # video / audio crops are settable (evaluation windows crop from the start); others: the table's rule
        mode = {"video": self.video_crop, "audio": self.audio_crop}.get(modality, self.modality_table[modality].crop)
        # a copy: the memory map is read-only and torch tensors must own writable memory
        return np.array(crop_tokens(tokens, self.max_tokens[modality], mode), dtype=np.float32)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = int(index) % len(self)
        item: Dict[str, Any] = {m: torch.from_numpy(self._tokens(m, index)) for m in self.modality_table}
        item["index"] = index
        item["id"] = self.ids[index]
        return item

    @property
    def collate_fn(self) -> Callable[[Sequence[Mapping[str, Any]]], Dict[str, Any]]:
        """:func:`collate_batch` padding to the fixed ``max_tokens`` lengths (static shapes)."""
        dtypes = {"video": self.video_dtype} if self.video_dtype is not None else None
        return partial(collate_batch, pad_to=dict(self.max_tokens), dtypes=dtypes, table=self.modality_table)


__all__ = [
    "CROP_MODES", "FeatureStoreDataset", "MODALITY_ORDER", "TRANSPORT_DTYPES", "batch_nbytes", "collate_batch",
    "crop_tokens", "loader_shared_memory_bytes", "max_workers_within", "resolve_dtype",
]
