"""Sharded rows over 2 gloo processes give the single-process Multi-SK / classic SK result."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from multisk.sinkhorn import multi_sinkhorn, multi_sinkhorn_two_level, sinkhorn

WORLD_SIZE = 2
# Uneven shards on purpose: rank 0 gets the first 23 rows, rank 1 the other 18.
SPLIT = (23, 18)


def _scores() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    rows = torch.nn.functional.normalize(torch.randn(3, sum(SPLIT), 24, generator=generator), dim=-1)
    anchors = torch.nn.functional.normalize(torch.randn(16, 24, generator=generator), dim=-1)
    return rows @ anchors.T  # (3 problems, 41 rows, 16 anchors)


def _solve_all(scores, process_group):
    return {
        "multi": multi_sinkhorn(scores, 8, 0.07, 20, process_group=process_group),
        "multi_small_eps": multi_sinkhorn(scores, 4, 0.005, 20, process_group=process_group),
        "multi_r1": multi_sinkhorn(scores, 1, 0.05, 10, process_group=process_group),
        "multi_low": multi_sinkhorn_two_level(scores, 8, 0.07, 20, process_group=process_group).low,
        "classic": sinkhorn(scores, 0.05, 3, process_group=process_group),
        "classic_small_eps": sinkhorn(scores, 0.005, 5, process_group=process_group),
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        start = sum(SPLIT[:rank])
        shard = _scores()[:, start:start + SPLIT[rank]]
        torch.save(_solve_all(shard, dist.group.WORLD), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_sharded_rows_equal_single_process(free_port, tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    single = _solve_all(_scores(), None)
    shards = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    for name, expected in single.items():
        sharded = torch.cat([shard[name] for shard in shards], dim=1)
        assert sharded.shape == expected.shape, name
        torch.testing.assert_close(sharded, expected, atol=2e-6, rtol=0, msg=lambda m: f"{name}: {m}")
