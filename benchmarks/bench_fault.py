"""Time lost to a killed rank under ``torchrun --max-restarts``: an uninterrupted W-rank gloo run of the small
synthetic configuration, then the same run with one rank SIGKILLed after a random step; torchrun restarts
the group, ``multisk train`` resumes from the latest checkpoint by itself (``--resume auto``).

Prints both wall times, the time lost (difference), the steps redone (killed step − checkpoint resumed
from) and whether the final checkpoints are bit for bit equal (they must be).

    python benchmarks/bench_fault.py [--ranks 4] [--epochs 4] [--checkpoint-every 4] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from distributed_runs import checkpoint_differences, logged_steps, rank_pids, run_timed, torchrun_train, wait_for  # noqa: E402
from synthetic_store import tiny_overrides, write_synthetic_store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--checkpoint-every", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None, help="chooses the killed rank and step")
    args = parser.parse_args()
    pick = random.Random(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = write_synthetic_store(tmp / "store", n_train=96)
        run = {"train.epochs": args.epochs, "train.checkpoint_every": args.checkpoint_every, "train.ema_decay": 0.9,
               "data.eval_splits": "[]", "train.batch_size": 2 * args.ranks}
        total = args.epochs * (96 // (2 * args.ranks))
        full_s = run_timed(torchrun_train(args.ranks, tiny_overrides(store, tmp / "full", **run)), "uninterrupted run", env)
        victim, kill_after = pick.randrange(args.ranks), pick.randint(2, total - 2)
        killed = tmp / "killed"
        start = time.perf_counter()
        proc = subprocess.Popen(torchrun_train(args.ranks, tiny_overrides(store, killed, **run), max_restarts=2),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: logged_steps(killed) >= kill_after, 600, f"step {kill_after}", proc)
        os.kill(rank_pids(proc.pid)[victim], signal.SIGKILL)
        output, _ = proc.communicate()
        faulty_s = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"the killed run did not finish:\n{output[-3000:]}")
        records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
        resumed_at = [r["step"] for r in records if "world_size" in r][-1]
        same = checkpoint_differences(torch.load(tmp / "full" / "checkpoints" / "latest.pt", weights_only=False),
                                      torch.load(killed / "checkpoints" / "latest.pt", weights_only=False))
    print(f"ranks {args.ranks} (gloo, CPU), {total} steps, checkpoint every {args.checkpoint_every} steps")
    print(f"rank {victim} SIGKILLed after step {kill_after}; the restarted group resumed at step {resumed_at} "
          f"({kill_after - resumed_at} step(s) redone, plus the step in flight)")
    print(f"uninterrupted: {full_s:.1f} s   with the fault: {faulty_s:.1f} s   time lost: {faulty_s - full_s:.1f} s "
          f"({(faulty_s - full_s) / full_s * 100:.0f} %)")
    print(f"final checkpoints bit for bit equal: {not same}" + ("" if not same else f" (differ at {same[:5]})"))
    print(json.dumps({"ranks": args.ranks, "steps": total, "killed_rank": victim, "killed_after": kill_after,
                      "resumed_at": resumed_at, "uninterrupted_s": full_s, "faulty_s": faulty_s,
                      "lost_s": faulty_s - full_s, "bit_identical": not same}))


if __name__ == "__main__":
    main()
