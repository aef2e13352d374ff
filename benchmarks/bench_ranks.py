"""W gloo ranks vs one process on the same global batch, and where each rank's step time goes.

1. One process trains the small synthetic configuration (text + video, SSPC with queues on, global batch
   ``2 x W``); ``torchrun --nproc_per_node W`` trains the same configuration. The script prints the two
   loss curves side by side and the largest difference of the final weights, objective state (SSPC
   queues) and Adam moments, and exits non-zero when they differ by more than float32 reduction order
   explains (losses: rel 2e-4; tensors: see ``--atol``).
2. A second W-rank run, instrumented, prints per rank and step: data wait (blocked on the DataLoader),
   collectives (blocked in the losses' all-gathers and reductions and in the gradient all-reduce) and
   compute (the rest of the step). For the split the gradient all-reduce runs synchronously inside the
   backward (a DDP comm hook), so the collective time is everything communication could cost a step,
   before any overlap with the backward.

Audio is left out as in tests/train/test_train.py: DAVEnet's BatchNorm normalises with each rank's statistics
(as the reference's DataParallel did), so an audio run differs from one process by design.

    python benchmarks/bench_ranks.py [--ranks 8] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from distributed_runs import CONFIG, run_timed, torchrun_path  # noqa: E402
from synthetic_store import tiny_overrides, write_synthetic_store  # noqa: E402

TEXT_VIDEO = {"model.modalities": "[text,video]", "loss.contrastive.pair_weights.text-audio": 0.0,
              "loss.contrastive.pair_weights.video-audio": 0.0, "data.eval_splits": "[]"}


# ------------------------------------------------------------------------------ instrumented worker
def _instrument(timings: Dict[str, List[float]]) -> None:
    """Patch the trainer's pieces to record, per step: data wait, step time, blocking collective time."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from multisk.losses import collectives
    from multisk.train import step as step_module
    from multisk.train import trainer

    in_collective = {"s": 0.0}

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                in_collective["s"] += time.perf_counter() - t0
        return wrapper

    for name in ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "all_gather_single",
                 "reduce_scatter_single"):
        if hasattr(dist, name):
            setattr(dist, name, timed(getattr(dist, name)))
    collectives._all_gather_single = timed(collectives._all_gather_single)

    def sync_allreduce_hook(_, bucket):
        buffer = bucket.buffer()
        buffer.div_(dist.get_world_size())
        dist.all_reduce(buffer)  # the timed wrapper: blocking, so its wall time is the communication
        future = torch.futures.Future()
        future.set_result(buffer)
        return future

    real_init = DistributedDataParallel.__init__

    def init_with_hook(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.register_comm_hook(None, sync_allreduce_hook)

    DistributedDataParallel.__init__ = init_with_hook
    real_call = step_module.TrainStep.__call__

    def timed_step(self, batch):
        in_collective["s"] = 0.0
        t0 = time.perf_counter()
        out = real_call(self, batch)
        timings["step"].append(time.perf_counter() - t0)
        timings["collectives"].append(in_collective["s"])
        return out

    step_module.TrainStep.__call__ = timed_step
    real_loader = trainer._epoch_loader

    def timed_loader(run):
        loader = real_loader(run)

        class Timed:
            def __iter__(self):
                source = iter(loader)
                while True:
                    t0 = time.perf_counter()
                    try:
                        batch = next(source)
                    except StopIteration:
                        return
                    timings["data_wait"].append(time.perf_counter() - t0)
                    yield batch

        return Timed()

    trainer._epoch_loader = timed_loader


def worker(argv: List[str]) -> int:
    """Entry point of each rank of the instrumented run (``bench_ranks.py --worker OUT TRAIN_ARGS...``)."""
    from multisk.cli import main as cli_main

    out, train_args = Path(argv[0]), argv[1:]
    timings: Dict[str, List[float]] = defaultdict(list)
    _instrument(timings)
    code = cli_main(["train", *train_args])
    (out / f"timing_rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(timings), encoding="utf-8")
    return code


# ------------------------------------------------------------------------------------------ driver
def _losses(run: Path) -> Dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _largest_differences(a, b, prefix: str = "") -> Dict[str, float]:
    """Largest |a - b| per checkpoint section (model, objective, optimizer) over floating tensors."""
    worst: Dict[str, float] = {}

    def walk(x, y, section):
        if isinstance(x, dict):
            for k in x:
                walk(x[k], y[k], section)
        elif isinstance(x, (list, tuple)):
            for u, v in zip(x, y):
                walk(u, v, section)
        elif torch.is_tensor(x) and x.is_floating_point():
            worst[section] = max(worst.get(section, 0.0), float((x - y).abs().max()) if x.numel() else 0.0)

    for section in ("model", "objective", "optimizer"):
        walk(a[section], b[section], section)
    return worst


def _run(cmd: List[str], what: str) -> float:
    return run_timed(cmd, what, {**os.environ, "OMP_NUM_THREADS": "1"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--atol", type=float, default=1e-4, help="largest weight / queue / moment difference allowed")
    args = parser.parse_args()
    torchrun = torchrun_path()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = write_synthetic_store(tmp / "store")
        batch = 2 * args.ranks
        settings = {**TEXT_VIDEO, "train.batch_size": batch, "train.steps": args.steps,
                    "train.epochs": -(-args.steps // (48 // batch))}
        single_s = _run([sys.executable, "-m", "multisk.cli", "train", "--no-progress", "--config", str(CONFIG),
                         *tiny_overrides(store, tmp / "single", **settings)], "the 1-process run")
        many_s = _run([torchrun, "--standalone", "--nproc_per_node", str(args.ranks), "-m", "multisk.cli", "train",
                       "--no-progress", "--config", str(CONFIG), *tiny_overrides(store, tmp / "many", **settings)],
                      f"the {args.ranks}-rank run")
        timed = tmp / "timed"
        _run([torchrun, "--standalone", "--nproc_per_node", str(args.ranks), str(Path(__file__).resolve()),
              "--worker", str(tmp), "--no-progress", "--config", str(CONFIG),
              *tiny_overrides(store, timed, **settings)], "the instrumented run")
        single, many = _losses(tmp / "single"), _losses(tmp / "many")
        worst = _largest_differences(torch.load(tmp / "single" / "checkpoints" / "latest.pt", weights_only=False),
                                     torch.load(tmp / "many" / "checkpoints" / "latest.pt", weights_only=False))
        splits = [json.loads((tmp / f"timing_rank{r}.json").read_text()) for r in range(args.ranks)]
    return report(args, batch, single, many, worst, splits, single_s, many_s)


def report(args, batch, single, many, worst, splits, single_s, many_s) -> int:
    print(f"1 process vs {args.ranks} gloo ranks, global batch {batch} ({batch // args.ranks} per rank), "
          f"text + video, SSPC with queues; wall {single_s:.1f} s vs {many_s:.1f} s (shared 2-core machine)")
    print("| step | loss, 1 process | loss, %d ranks | relative difference |" % args.ranks)
    print("|---|---|---|---|")
    rel = {s: abs(many[s] - single[s]) / max(abs(single[s]), 1e-12) for s in single}
    for s in sorted(single):
        print(f"| {s} | {single[s]:.6f} | {many[s]:.6f} | {rel[s]:.1e} |")
    print("largest difference of the final checkpoint: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    print("per-step time split per rank (ms, mean over steps 2..; gradient all-reduce made blocking):")
    print("| rank | data wait | compute | collectives | collectives share |")
    print("|---|---|---|---|---|")
    for r, t in enumerate(splits):
        wait = 1e3 * sum(t["data_wait"][1:]) / max(len(t["data_wait"]) - 1, 1)
        coll = 1e3 * sum(t["collectives"][1:]) / max(len(t["collectives"]) - 1, 1)
        step = 1e3 * sum(t["step"][1:]) / max(len(t["step"]) - 1, 1)
        print(f"| {r} | {wait:.1f} | {step - coll:.1f} | {coll:.1f} | {coll / max(wait + step, 1e-9) * 100:.0f} % |")
    ok = sorted(single) == sorted(many) and max(rel.values()) <= 2e-4 and max(worst.values()) <= args.atol
    print(json.dumps({"ranks": args.ranks, "losses_single": single, "losses_ranks": many, "largest_difference": worst,
                      "split": splits, "equal_within_tolerance": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[2:]))
    sys.exit(main())
