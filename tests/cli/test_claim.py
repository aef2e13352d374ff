"""benchmarks/claim.py in its CI-sized mode (every variant really trains its own loss), and the
caption-corruption option it relies on."""

import json
import subprocess
import sys

import numpy as np
import pytest

from synthetic_store import tiny_overrides, write_synthetic_store
from repo_paths import REPO

CONFIG = REPO / "configs" / "demo.yaml"


def test_claim_quick_mode_reports_all_variants_and_runs_their_losses(tmp_path):
    store = write_synthetic_store(tmp_path / "store", n_val=16)
    # a queue of 16 fills after 2 batches of 8: SSPC is active for most of the 48-item epoch; shaped like
    # the demo's recipe: a val split and the text-space prior (no concept head: no Lite0 pictures here)
    prior = {"model.prior.enabled": "true", "data.val_split": "val"}
    sets = [a for kv in tiny_overrides(store, tmp_path / "unused", **prior)
            if not kv.startswith(("train.output_dir", "train.epochs")) for a in ("--set", kv)]
    out, raw = tmp_path / "results.md", tmp_path / "raw.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "claim.py"), "--quick", "--data", str(store),
         "--work", str(tmp_path / "runs"), "--out", str(out), "--json", str(raw), "--corrupt", "0.5",
         "--reported", "test:t2v,test:t2a", *sets],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    for variant in ("contrastive", "sspc_multi", "sspc_classic"):
        assert f"| {variant} | 1 |" in text
    assert "| baseline: linear_probe | 1 |" in text and "| baseline: random | 1 |" in text
    # the learned part of each prior-mixed run is scored on its own (w = 0), its structure too
    for variant in ("contrastive", "sspc_multi"):
        assert f"| {variant}, learned part (w = 0) | 1 |" in text
        assert f"| {variant}, learned part @ 50 % | 1 |" in text
    assert "Text-space prior weight w chosen on the validation split" in text
    assert "Captions of 50 % of the training pairs shuffled" in text and "Structure preservation" in text
    data = json.loads(raw.read_text())
    runs = data["runs"]
    r1 = runs["sspc_multi"]["0.5"][0]["retrieval"]["test"]["t2v"]["R1"]
    assert f"{r1:.1f}" in text.split("| sspc_multi |")[1].splitlines()[0]
    # each variant trained the loss it names, as its own saved config and logged values show
    contrastive = runs["contrastive"]["0.5"][0]["loss"]
    multi = runs["sspc_multi"]["0.5"][0]["loss"]
    classic = runs["sspc_classic"]["0.5"][0]["loss"]
    assert not contrastive["sspc_enabled"] and contrastive["sspc_active_max"] == 0
    assert not any(contrastive["sspc_logged"])
    for record, solver in ((multi, "multi"), (classic, "classic")):
        assert record["sspc_enabled"] and record["solver"] == solver and record["sspc_active_max"] == 1
        assert max(record["sspc_logged"]) > 0
    # same seed, same data, same initialisation: only the solver differs, so the SSPC values must too
    assert multi["sspc_logged"] != classic["sspc_logged"]
    # the corruption level reached the training data of every variant
    assert all(runs[v]["0.5"][0]["loss"]["corrupt_fraction"] == 0.5 for v in runs)
    assert 0 <= runs["contrastive"]["0.5"][0]["structure"]["test"]["video"]["knn_jaccard"] <= 1

    # --reuse: a level added to the sweep trains only the new runs; a finished run with the same command
    # line is read back (same numbers), one with other overrides is trained again
    def claim(name, variants):
        return subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "claim.py"), "--quick", "--data", str(store), "--reuse",
             "--work", str(tmp_path / "runs"), "--out", str(tmp_path / f"{name}.md"),
             "--json", str(tmp_path / f"{name}.json"), "--corrupt", "0,0.5", "--variants", variants,
             "--no-baselines", "--reported", "test:t2v,test:t2a", *sets, "--set", "train.lr=0.002"],
            capture_output=True, text=True, timeout=600)

    again = claim("again", "contrastive,sspc_multi")
    assert again.returncode == 0, again.stderr[-3000:]
    assert ": reused " not in again.stdout  # the extra --set changed every run's overrides
    reused = claim("reused", "contrastive")
    assert reused.returncode == 0, reused.stderr[-3000:]
    assert reused.stdout.count(": reused ") == 2 and "training:" not in reused.stdout + reused.stderr
    # a damaged record is named, not a traceback
    (tmp_path / "runs" / "contrastive_c0_seed0" / "claim_record.json").write_text("{not json", encoding="utf-8")
    broken = claim("broken", "contrastive")
    assert broken.returncode != 0
    assert "contrastive_c0_seed0/claim_record.json is unreadable" in broken.stderr
    assert "Traceback" not in broken.stderr
    first, second = (json.loads((tmp_path / f).read_text())["runs"]["contrastive"] for f in ("again.json", "reused.json"))
    assert first == second
    assert "Weak alignment: R@10 and MedR by corruption level" in (tmp_path / "reused.md").read_text()


def test_corrupt_fraction_shuffles_training_captions_only(tmp_path):
    from multisk.config import ConfigError, load_config
    from multisk.train.datasets_for_config import build_eval_datasets, build_train_dataset

    store = write_synthetic_store(tmp_path / "store", n_train=40, n_test=12)
    base = tiny_overrides(store, tmp_path / "out")
    clean = build_train_dataset(load_config(CONFIG, base))
    corrupted = build_train_dataset(load_config(CONFIG, [*base, "data.corrupt_fraction=0.5"]))
    n = len(clean)
    moved = [i for i in range(n) if not np.array_equal(clean[i]["text"].numpy(), corrupted[i]["text"].numpy())]
    with_text = [i for i in range(n) if clean[i]["text"].shape[0] > 0]
    # captions can repeat ("a small cat" twice), so a moved caption may equal the old one; the source
    # index may not: exactly round(0.5 * items with text) items read another item's caption
    sources = corrupted.text_source
    changed = np.flatnonzero(sources != np.arange(n))
    assert len(changed) == round(0.5 * len(with_text))
    assert set(moved) <= set(changed.tolist())
    assert sorted(sources[changed].tolist()) == sorted(changed.tolist())  # a permutation within the subset
    for i in changed:
        assert np.array_equal(corrupted[i]["text"].numpy(), clean[int(sources[i])]["text"].numpy())
        assert np.array_equal(corrupted[i]["video"].numpy(), clean[i]["video"].numpy())  # pictures stay
        assert corrupted.captions[i] == clean.captions[int(sources[i])]
    # seeded: the same seed gives the same subset, another seed another one
    again = build_train_dataset(load_config(CONFIG, [*base, "data.corrupt_fraction=0.5"]))
    other = build_train_dataset(load_config(CONFIG, [*base, "data.corrupt_fraction=0.5", "train.seed=1"]))
    assert np.array_equal(again.text_source, sources) and not np.array_equal(other.text_source, sources)
    # evaluation splits are never touched
    for split, dataset in build_eval_datasets(load_config(CONFIG, [*base, "data.corrupt_fraction=1.0"])).items():
        assert getattr(dataset, "text_source", None) is None
    with pytest.raises(ConfigError, match="data.corrupt_fraction"):
        load_config(CONFIG, [*base, "data.corrupt_fraction=1.5"])
