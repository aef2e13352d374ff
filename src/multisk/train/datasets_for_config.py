"""Datasets of a training run, chosen by ``cfg.data`` (feature store or the HowTo100M layout)."""

from __future__ import annotations

from typing import Callable, Dict

from torch.utils.data import Dataset

from multisk.config import Config, ConfigError
from multisk.data.store.dataset import FeatureStoreDataset, batch_nbytes, collate_batch, loader_shared_memory_bytes
from multisk.data.formats.howto100m import HowTo100MDataset
from multisk.data.store.store_for_config import feature_dims, store_dataset, token_budgets
from multisk.evaluate.inputs import eval_store_dataset


def build_train_dataset(cfg: Config) -> Dataset:
    """The training set of ``cfg.data`` (its ``collate_fn`` collates video as ``data.video_transfer_dtype``)."""
    if cfg.data.train_format == "store":
        dataset = store_dataset(cfg, cfg.data.root, cfg.data.train_split)
        if cfg.data.corrupt_fraction > 0:
            dataset.shuffle_captions(cfg.data.corrupt_fraction, seed=cfg.train.seed)
        dataset.video_dtype = cfg.data.video_transfer_dtype
        return dataset
    if cfg.data.train_format == "howto100m":
        d = cfg.data
        return HowTo100MDataset(
            d.howto_csv, d.howto_features_path, d.howto_audio_path, d.howto_caption_path, d.word_vectors,
            clips_per_video=d.clips_per_video, clip_seconds=d.clip_seconds, max_words=d.max_text_tokens,
            max_video_tokens=d.max_video_tokens, max_audio_frames=d.max_audio_frames, seed=cfg.train.seed,
            text_audio_misaligned=d.flag_text_audio_misaligned, video_dtype=d.video_transfer_dtype,
        )
    raise ConfigError(f"data.train_format: expected 'store' or 'howto100m', got {cfg.data.train_format!r}")


def build_eval_datasets(cfg: Config) -> Dict[str, FeatureStoreDataset]:
    """One dataset per ``cfg.data.eval_splits`` entry of the store at ``cfg.data.root``, fed exactly as
    ``multisk eval`` feeds it: the evaluation window the store records (MSR-VTT / YouCook2: the first
    48 / 3072 or 72 / 4608 steps), whatever the training lengths (:mod:`multisk.evaluate.inputs`)."""
    if not cfg.data.eval_splits:
        return {}
    return {split: eval_store_dataset(cfg, cfg.data.root, split) for split in cfg.data.eval_splits}


def estimate_loader_memory(cfg: Config, world_size: int = 1, ranks_per_node: int | None = None) -> Dict[str, int]:
    """Shared memory the training DataLoaders of ``cfg`` occupy on one node (bytes; docs/data.md).

    ``train.batch_size`` is the global batch (videos for HowTo100M, items for a store); each of
    ``world_size`` ranks collates ``batch_size / world_size`` of it (x ``clips_per_video`` for HowTo100M)
    at the fixed padded lengths. Returns ``batch_items`` (per rank), ``batch_bytes`` (one rank's batch,
    :func:`multisk.data.store.dataset.batch_nbytes`), ``per_rank_bytes`` and ``node_bytes``
    (:func:`multisk.data.store.dataset.loader_shared_memory_bytes` with 1 and ``ranks_per_node`` ranks;
    default: every rank on one node).
    """
    d = cfg.data
    ranks_per_node = world_size if ranks_per_node is None else ranks_per_node
    per_rank = -(-cfg.train.batch_size // world_size)  # ceil: the largest share when it does not divide
    items = per_rank * (d.clips_per_video if d.train_format == "howto100m" else 1)
    batch = batch_nbytes(items, token_budgets(cfg), feature_dims(cfg), {"video": d.video_transfer_dtype})
    return {
        "batch_items": items,
        "batch_bytes": batch,
        "per_rank_bytes": loader_shared_memory_bytes(batch, d.num_workers, d.prefetch_factor, 1),
        "node_bytes": loader_shared_memory_bytes(batch, d.num_workers, d.prefetch_factor, ranks_per_node),
    }


def loader_options(cfg: Config, device_type: str = "cpu") -> Dict[str, object]:
    """Keyword arguments for the training ``DataLoader``: workers, prefetch depth, pinned memory.

    ``prefetch_factor`` is only given with workers (torch rejects it otherwise). Workers are not
    persistent: each epoch's loader forks them anew, so ``set_epoch`` on the dataset reaches them.
    """
    options: Dict[str, object] = {"num_workers": cfg.data.num_workers, "pin_memory": device_type == "cuda"}
    if cfg.data.num_workers > 0:
        options["prefetch_factor"] = cfg.data.prefetch_factor
    return options


def collate_fn_for(dataset) -> Callable:
    """The dataset's own collate (fixed padding for stores, clip flattening for HowTo100M)."""
    return getattr(dataset, "collate_fn", collate_batch)


__all__ = [
    "build_eval_datasets", "build_train_dataset", "collate_fn_for", "estimate_loader_memory", "loader_options",
]
