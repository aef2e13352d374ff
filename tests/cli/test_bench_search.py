"""benchmarks/bench_search.py (exact vs faiss search) run as a user runs it (--quick), and the search
engines of multisk.evaluate.ann against a numpy reference. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("faiss")

from multisk.evaluate.ann import ApproximateSearch, ExactSearch, GallerySearch  # noqa: E402
from repo_paths import REPO

SCRIPT = REPO / "benchmarks" / "bench_search.py"


def unit_rows(count: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_exact_search_is_numpys_argsort():
    gallery, queries = unit_rows(500, 16, 0), unit_rows(7, 16, 1)
    scores, rows = ExactSearch(gallery).search(queries, 10)
    reference = gallery.astype(np.float64) @ queries.T.astype(np.float64)
    for q in range(7):
        order = np.argsort(-reference[:, q])[:10]
        np.testing.assert_array_equal(rows[q], order)
        np.testing.assert_allclose(scores[q], reference[order, q], atol=1e-5)


def test_approximate_search_scanning_every_cell_is_exact_and_scores_are_true_cosines():
    gallery, queries = unit_rows(3000, 16, 2), unit_rows(5, 16, 3)
    approx = ApproximateSearch(gallery, nlist=20, nprobe=20)  # every cell scanned: nothing can be missed
    scores, rows = approx.search(queries, 10)
    exact_scores, exact_rows = ExactSearch(gallery).search(queries, 10)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


def test_gallery_search_maps_back_to_full_rows_and_skips_invalid_ones():
    gallery, queries = unit_rows(400, 8, 4), unit_rows(3, 8, 5)
    valid = np.arange(400) % 3 != 0
    for limit in (None, 10):  # exact, then the approximate index (more valid rows than the limit)
        search = GallerySearch(gallery, valid, exact_limit=limit)
        assert search.kind == ("exact" if limit is None else "approximate")
        scores, rows = search.search(queries, 5)
        assert valid[rows].all()
        for q in range(3):
            np.testing.assert_allclose(scores[q], gallery[rows[q]] @ queries[q], atol=1e-5)
    exact_rows = GallerySearch(gallery, valid).search(queries, 5)[1]
    reference = np.where(valid[:, None], gallery @ queries.T, -np.inf)
    np.testing.assert_array_equal(exact_rows, np.argsort(-reference, axis=0)[:5].T)


def test_quick_benchmark_prints_recall_and_latency(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(SCRIPT.parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "search.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("# machine:") and "recall@10" in lines[1]
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["rows"] == 20000 and row["nlist"] == 141
    assert [p["nprobe"] for p in row["probes"]] == [8, 32, 128]
    recalls = [p["recall@10"] for p in row["probes"]]
    assert all(0.5 < r <= 1.0 for r in recalls) and recalls == sorted(recalls)  # more cells scanned, more found
    assert all(p["exact_ms"] > 0 and p["approx_ms"] > 0 for p in row["probes"])
    assert len(lines) == 2 + len(row["probes"])


def test_recall_at_k_counts_shared_ids():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_search
    finally:
        sys.path.remove(str(SCRIPT.parent))
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, 10], [8, 7, 6, 5]])
    assert bench_search.recall_at_k(found, truth) == pytest.approx((2 / 4 + 1) / 2)
