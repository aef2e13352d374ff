"""The field's evaluation pickles: MSR-VTT 1k-A and YouCook2 val (docs/data.md).

**Security: these files are Python pickles, and loading a pickle executes code stored in it.** Only
load pickles from a source you trust (the files the EAO / Multi-SK authors distribute); convert them
once with ``multisk data convert`` and use the resulting feature store afterwards.

MSR-VTT (``msrvtt_jsfusion_test.pkl``): a list of dicts ``id``, ``2d`` and ``3d`` ((T, 2048) arrays),
``audio`` ((40, F) log-mel), ``eval_caption`` (str). The 1k-A test pickle holds 968 items; retrieval
percentages are divided by the complete size 1000 (the 32 missing clips count as misses). Training
pickles carry ``caption`` (a list of strings) instead of ``eval_caption``: every caption becomes an item
(id ``"<id>#<k>"``), or only the first with ``all_captions=False``.

YouCook2 (``youcook_val.pkl``): a list of dicts ``id``, ``2d_full``, ``3d_full``, ``audio``, ``caption``
(str). Items without ``2d_full`` are skipped — the reference's rule; they are counted in
``EvalSet.skipped_by_rule`` — and the complete size is 3350.

Windows (docs/data.md, docs/evaluation.md), taken from the start of each item as the reference's evaluation loaders do (its
``clip`` strategy): video tokens ``[n(2D resampled to the 3D rate) ; n(3D)]`` first 48 (MSR-VTT, 32 s) /
72 (YouCook2, 48 s) time steps; audio first 3072 / 4608 frames, stored time-first as (F, 40). An item
whose 2D or 3D array has no time step gets an empty video (the reference masks the whole video then);
an item with a (40, 0) spectrogram gets an empty audio. Empty modalities are kept: evaluation sends
them through the model's masking token.

Bad items (missing key, wrong shape or feature size, NaN/inf, empty or non-UTF-8 caption) raise
:class:`DataFormatError` naming the file, the item and the field; with ``skip_bad=True`` they are left out
and listed in ``EvalSet.bad`` as ``{"file", "item", "field", "reason"}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from multisk.data.formats.arrays import FEATURE_DIM_2D, FEATURE_DIM_3D, check_array, combine_video_features, read_pickle
from multisk.data.formats.howto100m import N_MELS
from multisk.data.encoders.text import check_caption
from multisk.errors import DataFormatError

MSRVTT_COMPLETE_SIZE = 1000
MSRVTT_TEST_COUNT = 968
YOUCOOK2_COMPLETE_SIZE = 3350
WINDOWS = {
    "msrvtt": {"video": 48, "audio": 3072},
    "youcook2": {"video": 72, "audio": 4608},
}


@dataclass
class EvalSet:
    """Items of an evaluation pickle in the multisk raw-item shape.

    ``items``: dicts ``id`` (str), ``caption`` (str), ``video`` (Tv, 4096) float32, ``audio`` (F, 40)
    float32 frames, ``source_index`` (position in the pickle). ``complete_size``: divisor for retrieval
    percentages. ``skipped_by_rule``: ids left out by the dataset's documented rule. ``bad``: records of
    items left out by ``skip_bad``.
    """

    name: str
    path: Path
    items: List[Dict[str, Any]]
    complete_size: int
    window: Dict[str, int]
    skipped_by_rule: List[str] = field(default_factory=list)
    bad: List[Dict[str, str]] = field(default_factory=list)


_FIELD_IN_MESSAGE = re.compile(r"field '([^']+)'")


def bad_item_record(path: Path, item: str, err: DataFormatError) -> Dict[str, str]:
    """A ``--skip-bad`` report entry: file, item, the field named in the error message, full reason."""
    match = _FIELD_IN_MESSAGE.search(str(err))
    return {"file": str(path), "item": item, "field": match.group(1) if match else "", "reason": str(err)}


def _read_item_list(path: Path) -> List[Any]:
    data = read_pickle(path, field="items")
    if not isinstance(data, (list, tuple)):
        raise DataFormatError(f"{path}: field 'items': expected a list of dicts, got {type(data).__name__}")
    return list(data)


def _require(record: Any, key: str, where: str) -> Any:
    if not isinstance(record, Mapping):
        raise DataFormatError(f"{where}: expected a dict, got {type(record).__name__}")
    if key not in record:
        have = ", ".join(map(str, record.keys()))
        raise DataFormatError(f"{where}: missing field {key!r} (keys present: {have})")
    return record[key]


def _video_and_audio(record: Mapping[str, Any], where: str, key_2d: str, key_3d: str, window: Mapping[str, int]):
    f2d = check_array(_require(record, key_2d, where), where, key_2d, shape=(None, FEATURE_DIM_2D))
    f3d = check_array(_require(record, key_3d, where), where, key_3d, shape=(None, FEATURE_DIM_3D))
    spec = check_array(_require(record, "audio", where), where, "audio", shape=(N_MELS, None))
    if f2d.shape[0] == 0 or f3d.shape[0] == 0:
        # the reference's ``clip`` strategy masks every video token when either half is empty, so
        # the item's video goes through the masking token (docs/evaluation.md) rather than half a feature
        video = np.zeros((0, FEATURE_DIM_2D + FEATURE_DIM_3D), dtype=np.float32)
    else:
        video = combine_video_features(f2d, f3d)[: window["video"]]
    audio = np.ascontiguousarray(spec.T[: window["audio"]])
    return video, audio


def _item_where(path: Path, position: int, record: Any) -> str:
    ident = record.get("id") if isinstance(record, Mapping) else None
    return f"{path}: item {position}" + (f" (id {ident!r})" if ident is not None else "")


def load_msrvtt(
    path: str | Path,
    *,
    max_video_tokens: int = WINDOWS["msrvtt"]["video"],
    max_audio_frames: int = WINDOWS["msrvtt"]["audio"],
    complete_size: Optional[int] = None,
    all_captions: bool = True,
    skip_bad: bool = False,
) -> EvalSet:
    """Load an MSR-VTT pickle (test: ``eval_caption``; train: ``caption`` list).

    **Unpickles the file: executes code stored in it — trusted files only.**

    ``complete_size`` defaults to 1000 for a test pickle (every item has ``eval_caption``), else to the
    number of items loaded.
    """
    path = Path(path)
    records = _read_item_list(path)
    window = {"video": int(max_video_tokens), "audio": int(max_audio_frames)}
    items: List[Dict[str, Any]] = []
    bad: List[Dict[str, str]] = []
    is_test = bool(records) and all(isinstance(r, Mapping) and "eval_caption" in r for r in records)
    for position, record in enumerate(records):
        where = _item_where(path, position, record)
        try:
            ident = str(_require(record, "id", where))
            video, audio = _video_and_audio(record, where, "2d", "3d", window)
            if "eval_caption" in record:
                captions = [check_caption(record["eval_caption"], f"{where} field 'eval_caption'")]
                ids = [ident]
            else:
                raw = _require(record, "caption", where)
                if isinstance(raw, (str, bytes)) or not isinstance(raw, (list, tuple, np.ndarray)) or len(raw) == 0:
                    raise DataFormatError(f"{where} field 'caption': expected a non-empty list of strings")
                captions = [check_caption(c, f"{where} field 'caption'") for c in raw]
                if not all_captions:
                    captions = captions[:1]
                ids = [f"{ident}#{k}" for k in range(len(captions))]
        except DataFormatError as err:
            if not skip_bad:
                raise
            bad.append(bad_item_record(path, str(record.get("id", position)) if isinstance(record, Mapping) else str(position), err))
            continue
        for item_id, caption in zip(ids, captions):
            items.append({"id": item_id, "caption": caption, "video": video, "audio": audio, "source_index": position})
    size = complete_size if complete_size is not None else (MSRVTT_COMPLETE_SIZE if is_test else len(items))
    return EvalSet("msrvtt", path, items, int(size), window, [], bad)


def load_youcook2(
    path: str | Path,
    *,
    max_video_tokens: int = WINDOWS["youcook2"]["video"],
    max_audio_frames: int = WINDOWS["youcook2"]["audio"],
    complete_size: int = YOUCOOK2_COMPLETE_SIZE,
    skip_bad: bool = False,
) -> EvalSet:
    """Load the YouCook2 val pickle; items without ``2d_full`` are skipped and counted (the reference).

    **Unpickles the file: executes code stored in it — trusted files only.**
    """
    path = Path(path)
    records = _read_item_list(path)
    window = {"video": int(max_video_tokens), "audio": int(max_audio_frames)}
    items: List[Dict[str, Any]] = []
    bad: List[Dict[str, str]] = []
    skipped: List[str] = []
    for position, record in enumerate(records):
        where = _item_where(path, position, record)
        try:
            ident = str(_require(record, "id", where))
            if "2d_full" not in record:
                skipped.append(ident)
                continue
            video, audio = _video_and_audio(record, where, "2d_full", "3d_full", window)
            caption = check_caption(_require(record, "caption", where), f"{where} field 'caption'")
        except DataFormatError as err:
            if not skip_bad:
                raise
            bad.append(bad_item_record(path, str(record.get("id", position)) if isinstance(record, Mapping) else str(position), err))
            continue
        items.append({"id": ident, "caption": caption, "video": video, "audio": audio, "source_index": position})
    return EvalSet("youcook2", path, items, int(complete_size), window, skipped, bad)


__all__ = [
    "EvalSet", "bad_item_record", "MSRVTT_COMPLETE_SIZE", "MSRVTT_TEST_COUNT", "WINDOWS", "YOUCOOK2_COMPLETE_SIZE",
    "load_msrvtt", "load_youcook2",
]
