"""What evaluation feeds the model: the window of each modality and what happens to empty modalities.

Two sources, in this order (docs/evaluation.md):

* the split's manifest records an ``eval_window`` (``multisk data convert`` does for MSR-VTT and
  YouCook2: the first 48 / 3072 or 72 / 4608 steps, the reference's ``clip`` strategy). Evaluation uses
  it, cropping from the start, **whatever lengths the checkpoint was trained on**. A store converted
  before ``eval_window`` existed is recognised by ``source: msrvtt | youcook2`` and its ``max_tokens``;
* otherwise (the picture benchmark, your own folders, HowTo100M stores) the model's training lengths
  ``data.max_{text,video}_tokens`` / ``data.max_audio_frames`` with the datasets' centre crop — every
  stored item of those stores already fits them, so nothing is cut.

Empty modalities. ``"masking_token"``: every item is a query and a gallery entry; a modality an item
lacks goes through the model's masking token (the reference; the default for the field's formats, which
record ``empty_modalities: masking_token``). ``"excluded"``: an item lacking a modality is left out of the
sides that need it (the default for other stores, where a missing picture means "this item has no
picture", e.g. spoken captions). Either way, a modality that **no** item of a split has cannot be
retrieved: the directions that need it are listed as skipped with the reason.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from multisk.config import Config
from multisk.data.store.dataset import FeatureStoreDataset
from multisk.data.store.feature_store import read_manifest
from multisk.data.store.store_for_config import store_dataset
from multisk.errors import DataFormatError

EMPTY_MODALITY_MODES = ("masking_token", "excluded")
FIELD_EVAL_SOURCES = ("msrvtt", "youcook2")


def recorded_window(info: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The evaluation window a split's manifest entry records, or None.

    Returns ``{"text": int, "video": int, "audio": int, "crop": "start"}``.
    """
    window = info.get("eval_window")
    if window is None and info.get("source") in FIELD_EVAL_SOURCES and isinstance(info.get("max_tokens"), Mapping):
        window = {**info["max_tokens"], "crop": "start"}
    if window is None:
        return None
    try:
        return {"text": int(window["text"]), "video": int(window["video"]), "audio": int(window["audio"]),
                "crop": str(window.get("crop", "start"))}
    except (KeyError, TypeError, ValueError) as err:
        raise DataFormatError(f"manifest.json: field 'eval_window' is malformed ({window!r}: {err})") from None


def eval_store_dataset(cfg: Config, root: str, split: str) -> FeatureStoreDataset:
    """One split of a store as evaluation feeds it to the model of ``cfg`` (window of docs/evaluation.md when the
    store records one, else the model's lengths). The dataset's ``eval_inputs`` says which."""
    info = read_manifest(root).get("splits", {}).get(split)  # a missing split: the store names it below
    window = recorded_window(info) if isinstance(info, Mapping) else None
    # the recorded window replaces the built-in budgets at construction; configured rows keep theirs
    dataset = store_dataset(cfg, root, split, window=window)
    source = "recorded in the store at conversion" if window is not None else "the model's training lengths (data.max_*)"
    dataset.eval_inputs = {  # type: ignore[attr-defined]
        "text_tokens": int(dataset.max_tokens["text"]),
        "video_tokens": int(dataset.max_tokens["video"]),
        "audio_frames": int(dataset.max_tokens["audio"]),
        "crop": {"video": dataset.video_crop, "audio": dataset.audio_crop, "text": "start"},
        "window_from": source,
    }
    return dataset


def empty_modalities_mode(dataset, requested: str = "auto") -> str:
    """``"masking_token"`` or ``"excluded"`` for a split: ``requested`` unless it is ``"auto"``, then what
    the store records (``masking_token`` for converted MSR-VTT / YouCook2), else ``"excluded"``."""
    if requested != "auto":
        if requested not in EMPTY_MODALITY_MODES:
            raise DataFormatError(f"empty_modalities: expected auto, {' or '.join(EMPTY_MODALITY_MODES)}, got {requested!r}")
        return requested
    info = getattr(getattr(dataset, "store", None), "info", {}) or {}
    recorded = info.get("empty_modalities")
    if recorded is None and info.get("source") in FIELD_EVAL_SOURCES:
        recorded = "masking_token"
    if recorded is None:
        return "excluded"
    if recorded not in EMPTY_MODALITY_MODES:
        raise DataFormatError(f"manifest.json: field 'empty_modalities' must be one of {EMPTY_MODALITY_MODES}, got {recorded!r}")
    return str(recorded)


def dataset_inputs(dataset) -> Dict[str, Any]:
    """The windows a dataset feeds (``eval_inputs`` when built by :func:`eval_store_dataset`)."""
    if hasattr(dataset, "eval_inputs"):
        return dict(dataset.eval_inputs)
    max_tokens = getattr(dataset, "max_tokens", None) or {}
    return {"text_tokens": max_tokens.get("text"), "video_tokens": max_tokens.get("video"),
            "audio_frames": max_tokens.get("audio"),
            "crop": {"video": getattr(dataset, "video_crop", None), "audio": getattr(dataset, "audio_crop", None),
                     "text": "start"},
            "window_from": "the dataset as given"}


__all__ = ["EMPTY_MODALITY_MODES", "dataset_inputs", "empty_modalities_mode", "eval_store_dataset", "recorded_window"]
