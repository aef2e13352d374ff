"""Datasets of a training run, chosen by ``cfg.data`` (feature store or the HowTo100M layout)."""

from __future__ import annotations

from typing import Callable, Dict

from torch.utils.data import Dataset

from multisk.config import Config
from multisk.data.dataset import FeatureStoreDataset, collate_batch


def _max_tokens(cfg: Config) -> Dict[str, int]:
    return {
        "text": cfg.data.max_text_tokens,
        "video": cfg.data.max_video_tokens,
        "audio": cfg.data.max_audio_frames,
    }


def _store_modalities(cfg: Config) -> Dict[str, str]:
    missing = [m for m in cfg.model.modalities if m not in cfg.data.modality_map]
    if missing:
        from multisk.config import ConfigError

        raise ConfigError(f"data.modality_map: no feature-store modality given for {missing}")
    return {m: cfg.data.modality_map[m] for m in cfg.model.modalities}


def store_dataset(cfg: Config, root: str, split: str) -> FeatureStoreDataset:
    """One split of a feature store as the model of ``cfg`` expects it (modality map, crops, dims)."""
    dims = {"text": cfg.model.text_dim, "video": cfg.model.video_dim, "audio": cfg.model.audio_mels}
    return FeatureStoreDataset(root, split, _store_modalities(cfg), _max_tokens(cfg), dims=dims)


def build_train_dataset(cfg: Config) -> Dataset:
    if cfg.data.train_format == "store":
        return store_dataset(cfg, cfg.data.root, cfg.data.train_split)
    if cfg.data.train_format == "howto100m":
        from multisk.data.howto100m import HowTo100MDataset

        d = cfg.data
        return HowTo100MDataset(
            d.howto_csv, d.howto_features_path, d.howto_audio_path, d.howto_caption_path, d.word_vectors,
            clips_per_video=d.clips_per_video, clip_seconds=d.clip_seconds, max_words=d.max_text_tokens,
            max_video_tokens=d.max_video_tokens, max_audio_frames=d.max_audio_frames, seed=cfg.train.seed,
        )
    from multisk.config import ConfigError

    raise ConfigError(f"data.train_format: expected 'store' or 'howto100m', got {cfg.data.train_format!r}")


def build_eval_datasets(cfg: Config) -> Dict[str, FeatureStoreDataset]:
    """One dataset per ``cfg.data.eval_splits`` entry of the store at ``cfg.data.root``."""
    if not cfg.data.eval_splits:
        return {}
    return {split: store_dataset(cfg, cfg.data.root, split) for split in cfg.data.eval_splits}


def collate_fn_for(dataset) -> Callable:
    """The dataset's own collate (fixed padding for stores, clip flattening for HowTo100M)."""
    return getattr(dataset, "collate_fn", collate_batch)


__all__ = ["build_eval_datasets", "build_train_dataset", "collate_fn_for", "store_dataset"]
