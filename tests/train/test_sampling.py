"""ResumableBatchSampler: train.batch_size is the global batch; the ranks' shares joined are exactly the
single-process batch, and start_batch resumes exactly (under any world size)."""

from __future__ import annotations

import pytest
import torch

from multisk.config import ConfigError
from multisk.train.sampling import ResumableBatchSampler


def _literal_epoch(num_items: int, global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The documented order, written out: the permutation of randperm(n, seed * 100003 + epoch), cut
    into consecutive global batches, the incomplete last one dropped."""
    perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [perm[b * global_batch:(b + 1) * global_batch] for b in range(num_items // global_batch)]


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_ranks_joined_are_the_single_process_global_batches(world_size):
    n, global_batch, seed, epoch = 103, 12, 7, 3
    expected = _literal_epoch(n, global_batch, seed, epoch)
    shares = [list(ResumableBatchSampler(n, global_batch, seed=seed, epoch=epoch, rank=r, world_size=world_size))
              for r in range(world_size)]
    assert all(len(s) == len(expected) == 8 for s in shares)
    for b, batch in enumerate(expected):
        parts = [shares[r][b] for r in range(world_size)]
        assert all(len(p) == global_batch // world_size for p in parts)
        assert sum(parts, []) == batch
    seen = [i for batch in expected for i in batch]
    assert len(set(seen)) == len(seen) == 96  # an epoch draws without replacement


def test_start_batch_resumes_exactly_and_epochs_differ():
    n, global_batch = 50, 8
    full = list(ResumableBatchSampler(n, global_batch, seed=1, epoch=2))
    assert list(ResumableBatchSampler(n, global_batch, seed=1, epoch=2, start_batch=4)) == full[4:]
    assert len(ResumableBatchSampler(n, global_batch, seed=1, epoch=2, start_batch=4)) == len(full) - 4
    # a position saved by 2 ranks means the same data for 1 rank (and back)
    two_ranks = [list(ResumableBatchSampler(n, global_batch, seed=1, epoch=2, start_batch=4, rank=r, world_size=2))
                 for r in range(2)]
    assert [a + b for a, b in zip(*two_ranks)] == full[4:]
    assert list(ResumableBatchSampler(n, global_batch, seed=1, epoch=3)) != full


def test_a_global_batch_that_does_not_divide_into_the_ranks_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.batch_size: the global batch 10 does not divide into 4 ranks"):
        ResumableBatchSampler(100, 10, seed=0, world_size=4)
    with pytest.raises(ConfigError, match="fewer than one global batch of 16"):
        ResumableBatchSampler(10, 16, seed=0)
