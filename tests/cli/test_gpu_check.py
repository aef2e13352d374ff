"""benchmarks/gpu_check.py --dry-run: every stage of the prepared GPU check runs on the CPU at tiny sizes
and passes its own check, so the script the first GPU runs cannot rot unnoticed."""

from __future__ import annotations

import json
import sys
from repo_paths import REPO

ROOT = REPO


def test_gpu_check_dry_run_runs_every_stage_and_writes_both_reports(tmp_path):
    # importable by name: the two-rank stage's spawned processes unpickle its worker from "gpu_check"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    status = gpu_check.main(["--out", str(tmp_path), "--dry-run"])
    report = json.loads((tmp_path / "report.json").read_text())
    stages = report["stages"]
    failed = {name: stage.get("error") or stage for name, stage in stages.items() if not stage.get("ok")}
    assert status == 0 and not failed, failed
    assert list(stages) == [name for name, _ in gpu_check.STAGES]
    assert report["dry_run"] is True and report["environment"]["device"] == "cpu"
    # the figures each stage promises
    step = stages["paper_step"]
    assert step["contrastive"]["ms"] > 0 and step["sspc"]["tflop_per_step"] > step["contrastive"]["tflop_per_step"]
    assert stages["solver"]["inside_vs_outside_autocast"] <= 1e-6
    assert stages["solver"]["max_error_vs_float64"] <= 1e-4
    assert stages["resume"]["max_abs_loss_difference_after_resume"] <= 1e-6
    for key in ("sspc_on", "sspc_off"):
        assert stages["two_ranks"][key]["max_abs_difference"] <= 1e-4
    assert stages["two_ranks"]["sspc_on"]["two_ranks"][-1]["sspc"] > 0  # SSPC really ran
    assert stages["two_ranks"]["sspc_off"]["two_ranks"][-1]["sspc"] == 0
    markdown = (tmp_path / "report.md").read_text()
    for name in stages:
        assert f"| {name} | yes |" in markdown
