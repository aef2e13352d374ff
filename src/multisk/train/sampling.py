"""Deterministic, resumable, rank-sharded batch order.

``batch_size`` is the GLOBAL batch ``G`` (``train.batch_size``, whatever the world size). Epoch ``e``
uses the permutation ``perm`` of ``torch.randperm(n, generator=seed * 100003 + e)``; the global batch
``b`` of that epoch is ``perm[b * G:(b + 1) * G]``, and rank ``r`` of ``W`` takes the slice
``[r * G/W:(r + 1) * G/W]`` of it. So the concatenation of the ranks' batches is exactly the batch a
single process sees — what makes multi-GPU training comparable with one process — and the position
(epoch, global batch b) means the same data under any world size: resuming needs no replay, even on
another number of ranks.
"""

from __future__ import annotations

from typing import Iterator, List

import torch
from torch.utils.data import Sampler

from multisk.config import ConfigError


class ResumableBatchSampler(Sampler[List[int]]):
    """Yields this rank's index lists of one epoch, starting at global batch ``start_batch`` (the last
    incomplete global batch is dropped). ``batch_size``: the global batch, divisible by ``world_size``."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        seed: int,
        epoch: int = 0,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"train.batch_size: must be >= 1, got {batch_size}")
        if batch_size % world_size:
            raise ConfigError(f"train.batch_size: the global batch {batch_size} does not divide into "
                              f"{world_size} ranks (choose a multiple of {world_size})")
        if num_items < batch_size:
            raise ConfigError(f"train.batch_size: the training set has {num_items} items, fewer than one "
                              f"global batch of {batch_size}; lower train.batch_size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle

    @property
    def per_rank_batch_size(self) -> int:
        return self.batch_size // self.world_size

    @property
    def batches_per_epoch(self) -> int:
        """Global batches per epoch."""
        return self.num_items // self.batch_size

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self) -> Iterator[List[int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_items, generator=gen)
        else:
            order = torch.arange(self.num_items)
        share = self.per_rank_batch_size
        for b in range(self.start_batch, self.batches_per_epoch):
            chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield chunk[self.rank * share : (self.rank + 1) * share].tolist()


__all__ = ["ResumableBatchSampler"]
