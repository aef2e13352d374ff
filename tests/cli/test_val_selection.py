"""benchmarks/val_selection.py: its offline re-scoring on val reproduces what the trainer chose there."""

import importlib.util
import json

import numpy as np

from repo_paths import REPO
from synthetic_store import tiny_overrides, write_synthetic_store


def _script():
    spec = importlib.util.spec_from_file_location("val_selection", REPO / "benchmarks" / "val_selection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_offline_val_curve_reproduces_the_trainers_choice_of_w(tmp_path):
    from multisk.config import load_config
    from multisk.train.trainer import train

    store = write_synthetic_store(tmp_path / "store", n_val=16)
    run = tmp_path / "run"
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      tiny_overrides(store, run, **{"model.prior.enabled": "true", "data.val_split": "val",
                                                    # pictures only, as the clipart val split: the trainer's
                                                    # choice then scores text→picture alone
                                                    "model.modalities": "[text,video]",
                                                    "loss.contrastive.pair_weights.text-audio": 0,
                                                    "loss.contrastive.pair_weights.video-audio": 0}))
    results = train(cfg, progress=False, make_plots=False)
    vs = _script()
    assert vs.main([str(run), "--data", str(store), "--json", str(tmp_path / "val.json")]) == 0
    report = json.loads((tmp_path / "val.json").read_text())[str(run)]
    # the trainer's last choice (before the final checkpoint) and its logged validation rsum
    assert report["chosen"]["w"] == results["prior"]["weight"]
    epochs = report["epochs"]
    assert len(epochs) == 2  # one choice per epoch-end checkpoint of the 2-epoch run
    assert abs(vs.rsum(report["chosen"]["t2v"]) - epochs[-1]["val_rsum"]) < 1e-6
    logged_curve = results["prior"]["weight_choice"]["curve"]
    assert [round(vs.rsum(pt["t2v"]), 6) for pt in report["curve"]] == [round(c["rsum"], 6) for c in logged_curve]
    # cross-fitting: every rule chose one w per half, and held-out metrics are real recalls
    for rule, held in report["cross_fit"].items():
        assert len(held["w"]) == 2 and all(w in vs.PRIOR_WEIGHTS for w in held["w"]), rule
        assert 0 <= held["R1"] <= held["R10"] <= 100 and held["MedR"] >= 1


def test_rules_prefer_the_smaller_w_on_ties_and_medr_lower():
    vs = _script()
    point = lambda w, r, medr: {"w": w, "t2v": {"R1": r, "R5": r, "R10": r, "MedR": medr},
                                "v2t": {"R1": 0, "R5": 0, "R10": 0, "MedR": 9}}
    points = [point(0.0, 1, 5), point(0.1, 3, 4), point(0.2, 3, 2)]
    assert vs.choose(points, "t2v rsum (shipped)")["w"] == 0.1
    assert vs.choose(points, "t2v MedR")["w"] == 0.2
    assert np.isclose(vs.rsum(points[1]["t2v"]), 9)
