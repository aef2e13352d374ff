"""Search latency and recall on large synthetic collections: exact (one matrix product) vs the faiss
inverted-file index that `multisk search` / `multisk serve` switch to above
``multisk.evaluate.ann.EXACT_LIMIT`` rows.

Synthetic gallery: ``N`` L2-normalised rows of ``--dim`` dimensions drawn around ``--clusters`` random
centres (``x = normalise(c_j + s z)``, ``z ~ N(0, I / dim)``, ``s = --spread``), so that the rows have the
cluster structure of real embeddings (uniform random vectors have none, and no index can do better than
scanning them all). Queries: gallery rows with fresh noise of the same scale, normalised.

Printed per size: build time of the approximate index, mean latency per query (queries answered one at
a time, as the server does; exact and approximate interleaved query by query so that load changes hit
both alike), their ratio, and recall@10 of the approximate search against exact search (the share of
the exact top 10 that the approximate top 10 finds), for each ``nprobe`` (cells scanned per query).

    python benchmarks/bench_search.py                 # 100k and 1M rows (about 2 GiB of memory at 1M)
    python benchmarks/bench_search.py --quick         # 20k rows, seconds (what tests/test_benchmarks runs)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from common import format_machine, machine_description

from multisk.evaluate.ann import DEFAULT_NPROBE, ApproximateSearch, ExactSearch


def synthetic(count: int, dim: int, clusters: int, spread: float, queries: int, seed: int = 0):
    """``(gallery (count, dim), queries (queries, dim))`` float32, rows L2-normalised (module docstring)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) / np.sqrt(dim)
    gallery = np.empty((count, dim), dtype=np.float32)
    block = 100_000
    for start in range(0, count, block):
        rows = min(block, count - start)
        noise = rng.standard_normal((rows, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        gallery[start:start + rows] = centres[rng.integers(0, clusters, rows)] + noise
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    picked = gallery[rng.choice(count, queries, replace=False)]
    query = picked + rng.standard_normal(picked.shape).astype(np.float32) * (spread / np.sqrt(dim))
    return gallery, (query / np.linalg.norm(query, axis=1, keepdims=True)).astype(np.float32)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of ``|found_q ∩ truth_q| / k`` for row ids (Q, k)."""
    k = truth.shape[1]
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def measure(count: int, args: argparse.Namespace) -> Dict[str, object]:
    gallery, queries = synthetic(count, args.dim, args.clusters, args.spread, args.queries, seed=args.seed)
    exact = ExactSearch(gallery)
    started = time.perf_counter()
    approx = ApproximateSearch(gallery, nprobe=args.nprobe[0])
    build = time.perf_counter() - started
    truth = exact.search(queries, args.k)[1]
    row: Dict[str, object] = {"rows": count, "dim": args.dim, "nlist": approx.nlist, "build_s": round(build, 2),
                              "probes": []}
    for nprobe in args.nprobe:
        approx.index.nprobe = nprobe
        exact_times: List[float] = []
        approx_times: List[float] = []
        found = np.empty_like(truth)
        for q in range(len(queries)):  # one query at a time, exact and approximate in turn
            t0 = time.perf_counter()
            exact.search(queries[q:q + 1], args.k)
            t1 = time.perf_counter()
            found[q] = approx.search(queries[q:q + 1], args.k)[1][0]
            t2 = time.perf_counter()
            exact_times.append(t1 - t0)
            approx_times.append(t2 - t1)
        exact_ms, approx_ms = 1e3 * float(np.mean(exact_times)), 1e3 * float(np.mean(approx_times))
        row["probes"].append({"nprobe": nprobe, "exact_ms": round(exact_ms, 3), "approx_ms": round(approx_ms, 3),
                              "speedup": round(exact_ms / approx_ms, 2),
                              f"recall@{args.k}": round(recall_at_k(found, truth), 4)})
    del gallery, exact, approx
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="gallery sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension (the demo model's: 256)")
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=1.0, help="noise scale around the cluster centres")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", default=f"8,{DEFAULT_NPROBE},128", help="cells scanned per query, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch and faiss threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="20k rows, 20 queries (a smoke run)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.clusters = "20000", 20, 200
    args.nprobe = [int(n) for n in str(args.nprobe).split(",")]
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    print(f"# {format_machine(machine_description(torch.device('cpu')))}; {args.threads} thread(s); dim {args.dim}, "
          f"{args.queries} queries, "
          f"{args.clusters} clusters, spread {args.spread}")
    print(f"{'rows':>9} {'nlist':>6} {'build s':>8} {'nprobe':>6} {'exact ms/q':>11} {'approx ms/q':>12} "
          f"{'speed-up':>9} {'recall@' + str(args.k):>10}")
    rows = []
    for count in [int(s) for s in args.sizes.split(",")]:
        row = measure(count, args)
        rows.append(row)
        for probe in row["probes"]:
            print(f"{row['rows']:>9} {row['nlist']:>6} {row['build_s']:>8.2f} {probe['nprobe']:>6} "
                  f"{probe['exact_ms']:>11.3f} {probe['approx_ms']:>12.3f} {probe['speedup']:>9.2f} "
                  f"{probe['recall@' + str(args.k)]:>10.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
