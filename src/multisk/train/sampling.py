"""Deterministic, resumable, rank-sharded batch order.

Epoch ``e`` uses the permutation of ``torch.randperm(n, generator=seed + e)``; the global batch ``b``
of that epoch is ``perm[b * G:(b + 1) * G]`` with ``G = batch_size * world_size``, and rank ``r`` takes
the slice ``[r * batch_size:(r + 1) * batch_size]`` of it. So the concatenation of the ranks' batches is
exactly the batch a single process with batch size ``G`` would see — what makes multi-GPU training
comparable with one process — and resuming at (epoch, batch) needs no replay.
"""

from __future__ import annotations

from typing import Iterator, List

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[List[int]]):
    """Yields the index lists of one epoch, starting at ``start_batch`` (last incomplete batch dropped)."""

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
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        global_batch = batch_size * world_size
        if num_items < global_batch:
            raise ValueError(
                f"the training set has {num_items} items, fewer than one global batch "
                f"({batch_size} x {world_size} ranks = {global_batch}); lower train.batch_size"
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle

    @property
    def batches_per_epoch(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self) -> Iterator[List[int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_items, generator=gen)
        else:
            order = torch.arange(self.num_items)
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            chunk = order[b * global_batch : (b + 1) * global_batch]
            mine = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            yield mine.tolist()


__all__ = ["ResumableBatchSampler"]
