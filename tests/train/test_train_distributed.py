"""Host-side coordination of the trainer's processes (gloo, 2 CPU processes): a rank that works alone
(rank 0 writing a checkpoint or evaluating) is waited for on a CPU barrier, and one that does not arrive
within train.barrier_timeout_s is an error naming what the ranks were waiting for."""

from __future__ import annotations

import os
import time

import torch.multiprocessing as mp

from multisk.train.process_group import gather_objects, host_barrier, init_distributed


def _worker(rank: int, port: int, results) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"})
    ctx = init_distributed("cpu", barrier_timeout_s=2.0)
    outcome = {"gathered": gather_objects(ctx, {"rank": rank})}
    for delay in (0.2, 5.0):  # rank 0 "writes a checkpoint" briefly, then for longer than the timeout
        if rank == 0:
            time.sleep(delay)
        try:
            host_barrier(ctx, "rank 0 writing checkpoint step_4.pt")
            outcome[delay] = "passed"
        except RuntimeError as err:
            outcome[delay] = str(err)
    results.put((rank, outcome))


def test_ranks_meet_at_the_host_barrier_and_a_late_rank_0_is_named_in_the_error(free_port):
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    procs = [context.Process(target=_worker, args=(r, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert got[0][0.2] == got[1][0.2] == "passed"
    assert got[1]["gathered"] == [{"rank": 0}, {"rank": 1}]
    message = got[1][5.0]
    assert "rank 1: ranks did not meet after rank 0 writing checkpoint step_4.pt" in message
    assert "train.barrier_timeout_s=2 s" in message
