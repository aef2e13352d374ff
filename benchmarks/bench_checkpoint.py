"""How long a rank-0 checkpoint of the paper configuration blocks training (``save_checkpoint``: torch.save
to ``NAME.tmp``, fsync, rename, ``latest.pt`` link, directory fsync).

The paper configuration has 892.8 M parameters (configs/paper/howto100m_resnet_tva.yaml; bench_model.py);
a checkpoint holds them four times in float32 (weights, Adam's two moments, the EMA) plus the SSPC queues
(12 rings of 5,500 rows) and small state: ~14.3 GB. That does not fit beside the other work on a 24 GiB
machine, so the state is built at ``--scale`` of the parameters (real float32 tensors of the same layout
mix: a few large matrices and many small vectors) and the time is reported per GB and extrapolated
linearly — torch.save's cost is linear in bytes once the tensors are MBs. Prints the blocking seconds at
the measured size, the write rate, and the projection for the full paper checkpoint.

    python benchmarks/bench_checkpoint.py [--scale 0.125] [--repeats 2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from common import format_machine, machine_description
from multisk.checkpoint import CheckpointWriter, save_checkpoint

PAPER_PARAMETERS = 892_800_000
QUEUE_ROWS, QUEUE_SPACES = 5500, 12


def fake_state(parameters: int) -> dict:
    """model / Adam moments / EMA of ``parameters`` float32 values (1024-wide matrices plus small vectors)."""
    rows = parameters // 1024
    shapes = [(1024, 1024)] * (rows // 1024) + [(rows % 1024 or 1, 1024)] + [(1024,)] * 256
    model = {f"layer{i}.weight": torch.randn(s) for i, s in enumerate(shapes)}
    like = lambda: {k: torch.randn_like(v) for k, v in model.items()}  # noqa: E731
    optimizer = {"state": {i: {"step": torch.tensor(1000.0), "exp_avg": a, "exp_avg_sq": b}
                           for i, (a, b) in enumerate(zip(like().values(), like().values()))},
                 "param_groups": [{"lr": 5e-5, "params": list(range(len(model)))}]}
    queues = {f"queue{i}.rows": torch.randn(QUEUE_ROWS, 512) for i in range(QUEUE_SPACES)}
    return {"model": model, "objective": queues, "optimizer": optimizer, "ema": like(), "epoch": 0,
            "global_step": 1000, "config": {}}


def state_bytes(obj) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.125, help="fraction of the 892.8 M parameters")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    print(format_machine(machine_description(torch.device("cpu"))))
    state = fake_state(int(PAPER_PARAMETERS * args.scale))
    size = state_bytes(state)
    queues = state_bytes(state["objective"])  # the queues do not scale with the parameters
    full = (size - queues) / args.scale + queues
    times = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for r in range(args.repeats):
            start = time.perf_counter()
            save_checkpoint(state, Path(tmp) / f"step_{r}.pt")
            times.append(time.perf_counter() - start)
            (Path(tmp) / f"step_{r}.pt").unlink()
        background, written = [], []
        for r in range(args.repeats):  # train.async_checkpoint=true: the step waits for the snapshot only
            writer = CheckpointWriter(background=True)
            start = time.perf_counter()
            writer.save(state, Path(tmp) / f"async_{r}.pt")
            background.append(time.perf_counter() - start)
            writer.wait()
            written.append(time.perf_counter() - start)
            (Path(tmp) / f"async_{r}.pt").unlink()
    best = min(times)
    rate = size / best
    snapshot_rate = size / min(background)
    print(f"checkpoint of {size / 1e9:.2f} GB ({args.scale:g} x the paper configuration): blocking "
          f"{', '.join(f'{t:.2f}' for t in times)} s -> {rate / 1e9:.2f} GB/s")
    print(f"projection, paper configuration ({full / 1e9:.1f} GB: weights, 2 Adam moments, EMA, queues): "
          f"{full / rate:.0f} s of blocked training per checkpoint, {full / rate / 0.31:.0f} steps of 310 ms")
    print(f"train.async_checkpoint=true: blocking {', '.join(f'{t:.2f}' for t in background)} s (the snapshot; the "
          f"write then took {', '.join(f'{t:.1f}' for t in written)} s in the background) -> paper configuration "
          f"{full / snapshot_rate:.1f} s blocked per checkpoint, {full / rate / (full / snapshot_rate):.0f}x less")
    print(json.dumps({"bytes": size, "seconds": times, "bytes_per_s": rate, "paper_bytes": full,
                      "paper_blocking_s": full / rate, "async_blocking_s": background, "async_total_s": written,
                      "paper_async_blocking_s": full / snapshot_rate}))


if __name__ == "__main__":
    main()
