"""Moved to :mod:`multisk.train.datasets_for_config` (the datasets a training config names) and
:mod:`multisk.data.store_for_config` (``store_dataset``); this re-export keeps old imports working."""

from multisk.data.store_for_config import store_dataset  # noqa: F401
from multisk.train.datasets_for_config import (  # noqa: F401
    build_eval_datasets,
    build_train_dataset,
    collate_fn_for,
    estimate_loader_memory,
    loader_options,
)

__all__ = [
    "build_eval_datasets", "build_train_dataset", "collate_fn_for", "estimate_loader_memory", "loader_options",
    "store_dataset",
]
