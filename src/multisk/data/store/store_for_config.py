"""A feature-store split as the model of a config expects it: which stored modality feeds each model
input (``data.modality_map``), the token budget of each input (``data.max_*``) and its feature width.

Library code (config + data only), so that the training application and the evaluation application
both build their store datasets here instead of importing each other.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from multisk.config import Config, ConfigError
from multisk.data.store.dataset import FeatureStoreDataset
from multisk.modalities import feature_dim, modality_table, token_budget


def token_budgets(cfg: Config) -> Dict[str, int]:
    """Modality → the most tokens (audio: spectrogram frames) one item feeds the model, for every row
    of the config's modality table (``data.<budget_key>`` or a configured row's ``max_tokens``)."""
    table = modality_table(cfg.model)
    return {m: token_budget(cfg.data, m, table) for m in table}


def feature_dims(cfg: Config) -> Dict[str, int]:
    """Modality → the feature width the model's input projection expects (audio: mel bins), for every
    row of the config's modality table (``model.<dim_key>`` or a configured row's ``dim``)."""
    table = modality_table(cfg.model)
    return {m: feature_dim(cfg.model, m, table) for m in table}


def store_modalities(cfg: Config) -> Dict[str, str]:
    """Model modality → the feature-store modality that feeds it (``data.modality_map``)."""
    missing = [m for m in cfg.model.modalities if m not in cfg.data.modality_map]
    if missing:
        raise ConfigError(f"data.modality_map: no feature-store modality given for {missing}")
    return {m: cfg.data.modality_map[m] for m in cfg.model.modalities}


def store_dataset(cfg: Config, root: str, split: str,
                  window: Optional[Mapping[str, Any]] = None) -> FeatureStoreDataset:
    """One split of a feature store as the model of ``cfg`` expects it (modality map, crops, dims).

    ``window``: an evaluation window ``{"text": int, "video": int, "audio": int, "crop": str}`` (what a
    converted split records, docs/evaluation.md) that replaces the built-in rows' budgets and the video /
    audio crop; configured rows (``model.modality_specs``) keep theirs.
    """
    budgets = token_budgets(cfg)
    crops: Dict[str, str] = {}
    if window is not None:
        budgets.update({m: int(window[m]) for m in ("text", "video", "audio")})
        crops = {"video_crop": str(window["crop"]), "audio_crop": str(window["crop"])}
    return FeatureStoreDataset(root, split, store_modalities(cfg), budgets, dims=feature_dims(cfg),
                               table=modality_table(cfg.model), **crops)


__all__ = ["feature_dims", "store_dataset", "store_modalities", "token_budgets"]
