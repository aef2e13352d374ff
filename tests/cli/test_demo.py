"""``multisk demo`` as a user types it, on a tiny prepared store with tiny model/schedule overrides."""

import json
import os
import subprocess
import sys

from synthetic_store import tiny_overrides, write_synthetic_store


def test_demo_command_trains_both_runs_and_reports_baselines_and_structure(tmp_path):
    store = write_synthetic_store(tmp_path / "store", n_val=16)
    out = tmp_path / "demo"
    # shaped like the demo: a val split, the text-space prior on (no concept head: no Lite0 pictures here)
    overrides = [kv for kv in tiny_overrides(store, out, **{"train.epochs": 1, "model.prior.enabled": "true",
                                                            "data.val_split": "val"})
                 if not kv.startswith(("data.root", "train.output_dir"))]
    result = subprocess.run(
        [sys.executable, "-m", "multisk.cli", "demo", "--data", str(store), "--out", str(out), "--no-progress",
         *overrides],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout
    assert "using the prepared benchmark" in printed
    table = printed.split("Zero-shot retrieval")[1].split("Structure preservation")[0]
    rows = {line.split()[0] for line in table.splitlines()[2:] if line.strip()}
    # both trained runs and the training-free references, scored on the same split
    assert {"contrastive", "sspc", "random", "linear_probe"} <= rows
    # what each part of a prior-mixed run contributes: learned only (w = 0) and the prior alone (w = 1)
    assert "sspc, learned part only (w = 0)" in table and "text-space prior alone (w = 1)" in table
    assert "text-space prior weight w = " in printed
    # the synthetic store has no MiniLM tokens: the bridge is reported as not computed, not silently dropped
    assert "baseline classname_bridge not computed" in printed
    structure = printed.split("Structure preservation")[1]
    assert "contrastive" in structure and "sspc" in structure
    for run in ("contrastive", "sspc"):
        assert (out / run / "checkpoints" / "latest.pt").is_file()
    saved = json.loads((out / "comparison.json").read_text())
    assert {"contrastive", "sspc", "text-space prior alone (w = 1)"} <= set(saved["runs"])
    jaccard = saved["structure"]["sspc"]["test"]["video"]["knn_jaccard"]
    assert 0.0 <= jaccard <= 1.0
    assert saved["baselines"]["runs"]["linear_probe"]["test"]["t2v"]["n_queries"] > 0
    assert "| linear_probe (no training) | test |" in (out / "comparison.md").read_text()
