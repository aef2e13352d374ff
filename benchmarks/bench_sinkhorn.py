"""Benchmark: Multi-SK for all SSPC problems of a training step, literal K × N × K vs multisk.

The literal formulation (``multi_sinkhorn_reference``: the full K × N × K tensor, one problem at a time,
as the authors' code does) against ``multi_sinkhorn`` (exact two-level form, all problems in one
batched call).  Prints wall time (best and median of ``--repeats``), peak memory and the speed ratio,
plus the largest difference between the two results.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU each solver runs once in a fresh
subprocess and the increase of the process's peak resident set (``VmHWM``) over the resident size
just before the call (``VmRSS``) is reported (large allocations forced to separate mappings so
freed memory leaves the resident set), next to the analytic size of the solver's big tensors.

    python benchmarks/bench_sinkhorn.py                      # paper sizes on CPU (N 7660, K 64, r 32, 12)
    python benchmarks/bench_sinkhorn.py --device cuda --repeats 20
    python benchmarks/bench_sinkhorn.py --quick              # CI: small sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from multisk.sinkhorn import multi_sinkhorn, multi_sinkhorn_reference


def make_scores(problems: int, n_rows: int, n_anchors: int, device: str, seed: int = 0) -> torch.Tensor:
    """Cosine similarities of random unit rows with random unit anchors: (problems, N, K) float32."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.empty(problems, n_rows, n_anchors)
    for problem in range(problems):  # one problem at a time keeps the temporaries small
        rows = torch.nn.functional.normalize(torch.randn(n_rows, 128, generator=generator), dim=-1)
        anchors = torch.nn.functional.normalize(torch.randn(n_anchors, 128, generator=generator), dim=-1)
        torch.matmul(rows, anchors.T, out=scores[problem])
    return scores.to(device)


def solve(which: str, scores: torch.Tensor, args) -> torch.Tensor:
    if which == "reference":  # loops over the problems inside, K × N × K each
        return multi_sinkhorn_reference(scores, args.r, args.eps, args.iters, args.low_scale)
    return multi_sinkhorn(scores, args.r, args.eps, args.iters, low_scale=args.low_scale)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_solver(which: str, scores: torch.Tensor, args, repeats: int):
    result = solve(which, scores, args)  # warm-up (allocator, CUDA context, kernels)
    synchronize(args.device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = solve(which, scores, args)
        synchronize(args.device)
        times.append(time.perf_counter() - start)
    return result, times


def analytic_bytes(which: str, args) -> int:
    """Bytes of the solver's large float32 tensors (problem-sized temporaries included)."""
    n, k, b = args.n, args.k, args.problems
    if which == "reference":
        return 4 * 2 * k * n * k  # A and the same-sized temporary of exp(c S / eps), per problem
    chunk = max(1, (24 * 2**20) // (3 * 4 * n * k))  # problems solved together on CPU (multi_assignment)
    working = 3 * min(chunk, b) if args.device == "cpu" else 3 * b  # x and both levels
    return 4 * n * k * (working + b)  # + the (B, N, K) float32 output


def cpu_peak_rss_subprocess(which: str, args) -> int:
    """Peak-RSS increase (bytes) of one solver call, measured in a fresh Python process."""
    command = [sys.executable, os.path.abspath(__file__), "--measure-memory", which,
               "--n", str(args.n), "--k", str(args.k), "--r", str(args.r), "--problems", str(args.problems),
               "--iters", str(args.iters), "--eps", str(args.eps), "--low-scale", str(args.low_scale)]
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout
    return int(json.loads(output.strip().splitlines()[-1])["peak_rss_increase_bytes"])


def proc_status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, from /proc (Linux).

    ``resource.getrusage().ru_maxrss`` is not usable here: Linux carries it over from the forking
    parent across exec, so a child would report at least the parent's size.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not found in /proc/self/status")


def measure_memory_child(args) -> None:
    """Peak RSS during one solver call minus the resident size just before it (Linux).

    Run with MALLOC_MMAP_THRESHOLD_ set so every large tensor is its own mapping, returned to the
    system when freed: then resident memory follows the live tensors instead of malloc's cache.
    """
    scores = make_scores(args.problems, args.n, args.k, "cpu")
    solve("ours", scores[:, :8], args)  # load kernels / thread pools before the baseline
    before = proc_status_bytes("VmRSS")
    solve(args.measure_memory, scores, args)
    print(json.dumps({"peak_rss_increase_bytes": proc_status_bytes("VmHWM") - before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=7660, help="rows per problem (queue 5500 + batch 2160)")
    parser.add_argument("--k", type=int, default=64, help="anchors K")
    parser.add_argument("--r", type=int, default=32, help="assignments r")
    parser.add_argument("--problems", type=int, default=12, help="problems per training step")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--eps", type=float, default=0.07)
    parser.add_argument("--low-scale", type=float, default=0.25)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--skip-reference", action="store_true", help="time only multisk")
    parser.add_argument("--quick", action="store_true", help="small sizes for CI (seconds)")
    parser.add_argument("--measure-memory", choices=["reference", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.n, args.k, args.r, args.problems, args.repeats = 2000, 32, 16, 12, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure_memory:
        measure_memory_child(args)
        return

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"Multi-SK: {args.problems} problems × N {args.n} × K {args.k}, r {args.r}, eps {args.eps}, "
          f"{args.iters} iters | device {device_name} | torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads | CPUs {os.cpu_count()}, load avg {load[0]}")
    scores = make_scores(args.problems, args.n, args.k, args.device)

    ours, ours_times = time_solver("ours", scores, args, args.repeats)
    rows = [("multisk (one call, two-level)", "ours", ours_times)]
    if not args.skip_reference:
        reference, reference_times = time_solver("reference", scores, args, args.repeats)
        rows.insert(0, ("literal K×N×K (loop)", "reference", reference_times))

    for label, which, times in rows:
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            solve(which, scores, args)
            memory = f"peak alloc {(torch.cuda.max_memory_allocated() - base) / 2**20:8.1f} MiB"
        else:
            measured = cpu_peak_rss_subprocess(which, args)
            memory = f"peak RSS +{measured / 2**20:8.1f} MiB (measured)"
        memory += f", {analytic_bytes(which, args) / 2**20:8.1f} MiB (analytic)"
        print(f"{label:30s} best {min(times) * 1e3:10.1f} ms  median {statistics.median(times) * 1e3:10.1f} ms"
              f"  | {memory}")
    if not args.skip_reference:
        ratio_best = min(reference_times) / min(ours_times)
        ratio_median = statistics.median(reference_times) / statistics.median(ours_times)
        difference = (ours.double() - reference.double()).abs().max().item()
        print(f"speed ratio (literal / multisk): best {ratio_best:.1f}x, median {ratio_median:.1f}x; "
              f"max |difference| {difference:.2e}")


if __name__ == "__main__":
    main()
