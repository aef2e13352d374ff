"""benchmarks/claim.py runs in its CI-sized mode and reports every variant with the metrics it measured."""

import json
import subprocess
import sys
from pathlib import Path

from synthetic_store import tiny_overrides, write_synthetic_store

REPO = Path(__file__).resolve().parents[1]


def test_claim_quick_mode_reports_all_variants(tmp_path):
    store = write_synthetic_store(tmp_path / "store")
    sets = [a for kv in tiny_overrides(store, tmp_path / "unused") if not kv.startswith(("train.output_dir", "train.epochs"))
            for a in ("--set", kv)]
    out, raw = tmp_path / "results.md", tmp_path / "raw.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "claim.py"), "--quick", "--data", str(store),
         "--work", str(tmp_path / "runs"), "--out", str(out), "--json", str(raw),
         "--reported", "test:t2v,test:t2a", *sets],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    for variant in ("contrastive", "sspc_classic", "sspc_multi", "sspc_multi_softce"):
        assert f"| {variant} | 1 |" in text
    runs = json.loads(raw.read_text())["runs"]
    r1 = runs["sspc_multi"][0]["test"]["t2v"]["R1"]
    assert f"{r1:.1f}" in text.split("| sspc_multi |")[1].splitlines()[0]
