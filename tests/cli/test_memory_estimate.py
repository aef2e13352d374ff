"""benchmarks/estimate_memory.py: its storage tracker against allocations counted by hand, and a tiny
configuration's estimate against the sizes torch itself reports (weights, Adam state, queues)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from repo_paths import REPO

ROOT = REPO


@pytest.fixture(scope="module")
def estimator():
    spec = importlib.util.spec_from_file_location("estimate_memory", ROOT / "benchmarks" / "estimate_memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["estimate_memory"] = module
    spec.loader.exec_module(module)
    return module


def test_tracker_follows_births_deaths_views_and_the_peak(estimator):
    from torch._subclasses.fake_tensor import FakeTensorMode

    tracker = estimator.LiveStorageTracker()
    with FakeTensorMode(), tracker:
        tracker.measuring = True
        a = torch.empty(1000)  # 4000 bytes
        b = a * 2  # +4000
        view = b[:10]  # a view: no new storage
        del b
        assert tracker.live == 8000  # b's storage lives on through its view
        del a, view
        tracker._sweep()  # dead storages are forgotten at a sweep (before any new peak, every 64 ops)
        assert tracker.live == 0
        c = torch.empty(250, dtype=torch.float64)
        assert tracker.live == 2000
        del c
    assert tracker.peak == 8000


def test_tiny_estimate_accounts_for_weights_adam_queues_and_saved_activations(estimator):
    from multisk.models import build_model

    cfg = estimator.load(estimator.tiny_overrides())
    report = estimator.estimate(cfg, batch_size=12, precision="bf16")
    with torch.device("meta"):
        model = build_model(cfg.model)
    weight_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert report.static["weights"] == weight_bytes
    # Adam keeps two float32 moments per parameter (plus a scalar step each)
    assert 2 * weight_bytes <= report.static["Adam state"] <= 2 * weight_bytes + 8 * 64 * len(list(model.parameters()))
    # six queues (input and joint space per modality) of queue_size rows, float32
    s = cfg.loss.sspc
    queue_rows = 3 * s.queue_size * (cfg.model.embed_dim + cfg.model.projection_dim) * 4
    assert queue_rows <= report.static["SSPC queues"] <= queue_rows + 1024
    assert report.at_peak["Adam state"] == report.static["Adam state"]
    static = weight_bytes + report.static["Adam state"] + report.static["batch"]
    assert report.peak_bytes > static + sum(report.saved_by_module.values()) / 2
    assert report.saved_by_module["audio_encoder"] > 0 and report.saved_by_module["fusion.text"] > 0
    # recomputing DAVEnet keeps only the stage inputs: less saved there, the rest unchanged
    lighter = estimator.estimate(estimator.load(estimator.tiny_overrides() + ["model.recompute_audio_encoder=true"]),
                                 batch_size=12, precision="bf16")
    assert lighter.saved_by_module["audio_encoder"] < report.saved_by_module["audio_encoder"] / 2
    assert lighter.saved_by_module["fusion.text"] == report.saved_by_module["fusion.text"]
