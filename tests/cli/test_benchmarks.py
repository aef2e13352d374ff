"""Benchmark scripts: a CI-sized smoke run of benchmarks/bench_train_step.py and checks of its helpers.

No timing is asserted (timings belong to the benchmark's output); what is checked is that the script
runs end to end, that its report is internally consistent, and that the pieces it relies on measure what
they claim (synthetic batch shapes and masks, FLOP counting, peak-RSS measurement).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from repo_paths import REPO

REPO_ROOT = REPO
BENCHMARKS = REPO_ROOT / "benchmarks"
SCRIPT = BENCHMARKS / "bench_train_step.py"


@pytest.fixture(scope="module")
def bench():
    """The benchmark module, imported the way the script imports its helpers (benchmarks/ on the path)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_train_step

        yield bench_train_step
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_quick_run_reports_consistent_figures(tmp_path):
    json_path = tmp_path / "step.json"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(json_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert out.startswith("machine: ")
    assert "| contrastive only |" in out and "| contrastive + SSPC |" in out
    assert "SSPC overhead over the contrastive-only step" in out

    result = json.loads(json_path.read_text())
    assert json.loads(out.strip().splitlines()[-1]) == result  # the printed JSON line is the file
    assert result["preset"] == "quick" and result["machine"]["torch"] == torch.__version__
    batch, queue = result["batch"], result["queue"]
    assert (batch, queue) == (16, 64)
    solver = result["solver"]
    assert solver["problems"] == 12  # 3 input-space + 9 joint-space problems
    assert solver["rows"] == queue + batch and solver["anchors"] == 16
    assert solver["median_ms"] > 0

    variants = result["variants"]
    assert set(variants) == {"contrastive", "sspc"}
    for entry in variants.values():
        assert 0 < entry["min_ms"] <= entry["median_ms"]
        assert math.isclose(entry["samples_per_s"], batch / (entry["median_ms"] / 1e3), rel_tol=1e-9)
        assert entry["flops_per_step"] > 0
        assert math.isclose(entry["tflops_per_s"], entry["flops_per_step"] / (entry["median_ms"] / 1e3) / 1e12,
                            rel_tol=1e-9)
        assert entry["memory"]["peak_bytes"] > 0
    # SSPC adds the queue rows' anchor scores (matrix products) to the same model step
    assert variants["sspc"]["flops_per_step"] > variants["contrastive"]["flops_per_step"]
    expected_overhead = 100 * (variants["sspc"]["median_ms"] / variants["contrastive"]["median_ms"] - 1)
    assert math.isclose(result["sspc_overhead_percent"], expected_overhead, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(result["multisk_share_of_sspc_step_percent"],
                        100 * solver["median_ms"] / variants["sspc"]["median_ms"], rel_tol=1e-9)
    # the queues (16 rows per step into 64 slots) are full after 4 steps; the run makes more
    assert result["sspc_gate_active_after_run"] is True


def test_synthetic_batch_has_paper_shapes_padding_and_empty_modalities(bench):
    from multisk.config import load_config

    cfg = load_config(bench.PAPER_CONFIG)
    batch = bench.synthetic_batch(cfg, 200, seed=3)
    assert batch["text"].shape == (200, 20, 300) and batch["text_mask"].shape == (200, 20)
    assert batch["video"].shape == (200, 12, 4096) and batch["video_mask"].shape == (200, 12)
    assert batch["audio"].shape == (200, 40, 768) and batch["audio_mask"].shape == (200, 768)
    empty_rows = {}
    for modality, length in (("text", 20), ("video", 12), ("audio", 768)):
        mask = batch[f"{modality}_mask"]
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        valid = mask.sum(1)
        # masks are a prefix of ones (trailing padding)
        assert torch.equal(mask, (torch.arange(length)[None] < valid[:, None]).float())
        assert (valid[valid > 0] < length).any(), f"{modality}: no padded clip"
        empty_rows[modality] = set(torch.nonzero(valid == 0).flatten().tolist())
        assert len(empty_rows[modality]) == round(bench.EMPTY_FRACTION[modality] * 200)
    assert not (empty_rows["text"] & empty_rows["video"] or empty_rows["text"] & empty_rows["audio"]
                or empty_rows["video"] & empty_rows["audio"])
    # padding holds zeros; valid video steps have unit-norm 2D and 3D halves
    assert torch.all(batch["text"][batch["text_mask"] == 0] == 0)
    assert torch.all(batch["audio"].transpose(1, 2)[batch["audio_mask"] == 0] == 0)
    valid_video = batch["video"][batch["video_mask"] == 1]
    for half in valid_video.split(2048, dim=-1):
        assert torch.allclose(half.norm(dim=-1), torch.ones(len(half)), atol=1e-5)


def test_count_flops_matches_hand_count(bench):
    a = torch.randn(32, 48, requires_grad=True)
    b = torch.randn(48, 16)

    def step():
        (a @ b).sum().backward()

    # forward (32x48)@(48x16): 2·32·48·16; backward grad_a = grad_out (32x16) @ bᵀ (16x48): the same again
    assert bench.count_flops(step) == 2 * (2 * 32 * 48 * 16)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_rss_sees_a_temporary_allocation(bench):
    import common

    size = 96 * common.MIB

    def allocate_and_free():
        block = torch.ones(size // 4)  # float32, every page touched
        return float(block[-1])

    common.return_freed_memory_to_os()
    measured = common.measure_peak_rss(allocate_and_free)
    assert "clear_refs" in measured["method"]
    assert measured["increase_bytes"] >= 0.9 * size
    assert measured["peak_bytes"] >= size


def test_bad_override_is_a_one_line_error_naming_the_key(bench, capsys):
    assert bench.main(["--quick", "model.no_such_field=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no_such_field" in err


def test_round_robin_timing_interleaves_and_counts(bench):
    import common

    calls = []
    times = common.time_round_robin({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                    repeats=3, warmup=1, device=torch.device("cpu"))
    assert calls == ["a", "b"] * 4
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3}
    summary = common.summarize_times([3.0, 1.0, 2.0])
    assert summary == {"min_ms": 1.0, "median_ms": 2.0, "mean_ms": 2.0}


def test_loader_benchmark_quick_run_reads_the_howto100m_layout_with_the_training_pipeline(tmp_path):
    json_path = tmp_path / "loader.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run([sys.executable, str(BENCHMARKS / "bench_loader.py"), "--quick", "--json", str(json_path)],
                               cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(json_path.read_text())
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == report
    assert set(report["raw"]) == set(report["raw_whole_files"]) == set(report["store"]["workers"]) == {"0", "1"}
    # batches of 2 videos x 10 clips; 2 timed batches after the first
    runs = list(report["raw"].values()) + list(report["raw_whole_files"].values())
    assert all(run["clips"] == 40 and run["clips_per_s"] > 0 for run in runs)
    # reading whole files, one process reads all three npz files of each video it opens: at least their
    # bytes over the video's 10 clips (the files of a 40 s video hold ~1.4 MiB); memory-mapped, fewer
    whole = report["raw_whole_files"]["0"]["bytes_per_clip"]
    assert whole >= report["bytes_per_video"] / 10 > report["raw"]["0"]["bytes_per_clip"] > 0
    assert report["raw"]["1"]["bytes_per_clip"] is None  # not measurable through the workers' pipes
    for phases in (report["breakdown_s_per_clip"], report["breakdown_whole_files"]):
        assert math.isclose(sum(v for k, v in phases.items() if k not in ("total", "mapped_bytes")), phases["total"],
                            rel_tol=1e-6)
    assert report["breakdown_whole_files"]["mapped_bytes"] == 0 < report["breakdown_s_per_clip"]["mapped_bytes"]
    memory = report["memory_by_videos"]
    assert set(memory) == {"6", "12"} and all(len(m["workers"]) == 1 and m["main"]["pss"] > 0 for m in memory.values())
    assert "projection, raw layout, memory-mapped: 7000 clips/s per GPU needs" in completed.stdout
