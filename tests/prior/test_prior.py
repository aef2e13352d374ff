"""The closed-form text-space prior: pooling, the prior embeddings, the retrieval mix, the fit and the
choices made on the validation split, each against a literal numpy version; then a run end to end."""

import json

import numpy as np
import pytest
import torch

from multisk.config import ConfigError, load_config
from multisk.data.store.feature_store import FeatureStore
from multisk.metrics.directions import evaluate_directions
from multisk.evaluate.inputs import eval_store_dataset
from multisk.evaluate.loading import load_model
from multisk.prior import RidgeMap, TextSpacePrior, build_model_with_prior, combine_with_prior, pool_inputs, training_mix
from multisk.modalities import MODALITY_SPECS
from multisk.data.store.dataset import collate_batch
from multisk.train.datasets_for_config import build_train_dataset, collate_fn_for
from multisk.prior.fit import (
    CONCEPT_MIXES,
    PRIOR_WEIGHTS,
    RIDGE_LAMBDAS,
    choose_prior_weight,
    fit_text_space_prior,
)
from multisk.train.trainer import train
from synthetic_store import N_MELS, TEXT_DIM, VIDEO_DIM, tiny_overrides

CONFIG = "configs/demo.yaml"


STORE_SIZES = dict(n_train=60, n_test=24, n_val=20)  # the shared `store` fixture (tests/conftest.py)


def prior_overrides(store, out, **extra):
    values = {"model.prior.enabled": "true", "data.val_split": "val", **extra}
    return tiny_overrides(store, out, **values)


def _literal_pool(features, mask, spectrogram):
    """Loop version of pool_inputs for one sample."""
    if spectrogram:
        frames = features[:, mask]  # (n_mels, F_valid)
        if frames.shape[1] == 0:
            return np.zeros(2 * features.shape[0]), False
        return np.concatenate([frames.mean(axis=1), frames.std(axis=1)]), True
    tokens = features[mask]
    if tokens.shape[0] == 0:
        return np.zeros(features.shape[1]), False
    return tokens.mean(axis=0), True


def test_pool_inputs_matches_a_literal_loop():
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((4, 6, 5))
    token_mask = np.array([[1, 1, 1, 0, 0, 0], [1] * 6, [0] * 6, [1, 0, 0, 0, 0, 0]], dtype=bool)
    frames = rng.standard_normal((4, 3, 9))
    frame_mask = np.array([[1] * 9, [1] * 4 + [0] * 5, [0] * 9, [1, 1] + [0] * 7], dtype=bool)
    for features, mask, encoder in ((tokens, token_mask, "tokens"), (frames, frame_mask, "spectrogram")):
        pool, nonempty = pool_inputs(torch.tensor(features), torch.tensor(mask), encoder)
        for i in range(4):
            expected, present = _literal_pool(features[i], mask[i], encoder == "spectrogram")
            assert bool(nonempty[i]) == present
            np.testing.assert_allclose(pool[i].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_ridge_map_matches_the_normal_equations():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 6)) * rng.uniform(0.2, 4.0, size=6) - 1.0
    y = rng.standard_normal((40, 3))
    ridge = RidgeMap().fit(x, y)
    xs = (x - x.mean(0)) / x.std(0)
    for lam in (0.1, 30.0):
        w = np.linalg.solve(xs.T @ xs + lam * np.eye(6), xs.T @ (y - y.mean(0)))
        np.testing.assert_allclose(ridge.weights(lam), w, rtol=1e-9, atol=1e-12)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_prior_embeddings_follow_the_equations():
    rng = np.random.default_rng(2)
    dims = {"text": 4, "video": 6, "audio": 3}
    prior = TextSpacePrior(MODALITY_SPECS, dims, concept_classes=5)
    w_v, b_v, mu_v, s_v = rng.standard_normal((6, 4)), rng.standard_normal(4), rng.standard_normal(6), rng.uniform(0.5, 2, 6)
    w_a, b_a, mu_a, s_a = rng.standard_normal((6, 4)), rng.standard_normal(4), rng.standard_normal(6), rng.uniform(0.5, 2, 6)
    prior.set_ridge("video", mu_v, s_v, w_v, b_v)
    prior.set_ridge("audio", mu_a, s_a, w_a, b_a)
    cw, cb, ce = rng.standard_normal((5, 6)), rng.standard_normal(5), rng.standard_normal((5, 4))
    prior.set_concepts(cw, cb, ce)
    prior.concept_mix.fill_(0.3)
    batch = {
        "text": torch.tensor(rng.standard_normal((3, 2, 4)), dtype=torch.float32),
        "text_mask": torch.tensor([[1, 1], [1, 0], [0, 0]], dtype=torch.bool),
        "video": torch.tensor(rng.standard_normal((3, 2, 6)), dtype=torch.float32),
        "video_mask": torch.tensor([[1, 1], [0, 0], [1, 0]], dtype=torch.bool),
        "audio": torch.tensor(rng.standard_normal((3, 3, 5)), dtype=torch.float32),
        "audio_mask": torch.tensor([[1] * 5, [1, 1, 0, 0, 0], [1] * 5], dtype=torch.bool),
    }
    out = prior(batch)
    for i in range(3):
        t, has_t = _literal_pool(batch["text"][i].numpy(), batch["text_mask"][i].numpy(), False)
        np.testing.assert_allclose(out["text"][i].numpy(), _unit(t) if has_t else np.zeros(4), atol=1e-5)
        v, has_v = _literal_pool(batch["video"][i].numpy(), batch["video_mask"][i].numpy(), False)
        logits = cw @ v + cb
        p = np.exp(logits - logits.max())
        p /= p.sum()
        expected_v = _unit(0.7 * _unit((v - mu_v) / s_v @ w_v + b_v) + 0.3 * _unit(p @ ce))
        np.testing.assert_allclose(out["video"][i].numpy(), expected_v if has_v else np.zeros(4), atol=1e-5)
        a, _ = _literal_pool(batch["audio"][i].numpy(), batch["audio_mask"][i].numpy(), True)
        np.testing.assert_allclose(out["audio"][i].numpy(), _unit((a - mu_a) / s_a @ w_a + b_a), atol=1e-5)


def test_combined_embeddings_mix_the_two_cosines():
    rng = np.random.default_rng(3)
    learned = {n: torch.nn.functional.normalize(torch.tensor(rng.standard_normal((4, 5)), dtype=torch.float32), dim=-1)
               for n in ("text", "video", "text_video")}
    prior = {m: torch.nn.functional.normalize(torch.tensor(rng.standard_normal((4, 3)), dtype=torch.float32), dim=-1)
             for m in ("text", "video")}
    for w in (0.0, 0.25, 1.0):
        out = combine_with_prior(learned, prior, w)
        assert out["text"].shape == (4, 8)
        np.testing.assert_allclose(out["video"].norm(dim=-1).numpy(), 1.0, atol=1e-6)
        got = (out["text"] @ out["video"].T).numpy()
        want = (1 - w) * (learned["text"] @ learned["video"].T).numpy() + w * (prior["text"] @ prior["video"].T).numpy()
        np.testing.assert_allclose(got, want, atol=1e-6)
        pair_prior = _unit((prior["text"] + prior["video"]).numpy())
        np.testing.assert_allclose(out["text_video"][:, 5:].numpy(), np.sqrt(w) * pair_prior, atol=1e-6)


def _fitted_model_and_batch(cfg, n):
    """A seeded model of ``cfg`` with its prior fitted on the training split, and the first ``n``
    training items as one float32 batch."""
    torch.manual_seed(0)
    model = build_model_with_prior(cfg)
    dataset = build_train_dataset(cfg)
    batch = collate_fn_for(dataset)([dataset[i] for i in range(n)])
    fit_text_space_prior(model, cfg, dataset)
    return model, {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}


def test_model_returns_the_mix_in_evaluation_and_the_learned_embeddings_in_training(store, tmp_path):
    cfg = load_config(CONFIG, prior_overrides(store, tmp_path / "m", **{"model.prior.weight": 0.4}))
    model, batch = _fitted_model_and_batch(cfg, 6)
    model.train()
    train_out = model(batch)
    model.eval()
    with torch.no_grad():
        eval_out = model(batch)
    assert train_out["joint_normalized"]["video"].shape[1] == cfg.model.projection_dim
    assert eval_out["joint_normalized"]["video"].shape[1] == cfg.model.projection_dim + TEXT_DIM
    learned = torch.nn.functional.normalize(eval_out["joint"]["video"], dim=-1)
    np.testing.assert_allclose(eval_out["joint_normalized"]["video"][:, :cfg.model.projection_dim].numpy(),
                               np.sqrt(0.6) * learned.detach().numpy(), atol=1e-6)
    # the anchors score the learned embeddings in both modes
    for m, per_joint in eval_out["joint_anchor_scores"].items():
        np.testing.assert_allclose(per_joint["video"].detach().numpy(),
                                   model.anchors.joint_scores(m, learned).detach().numpy(), atol=1e-6)


def _literal_info_nce(a, b, temperature):
    """Symmetric InfoNCE over a (n, d) and b (n, d) rows, literal loops: mean over rows of both directions."""
    n = len(a)
    total = 0.0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            logits = [float(x[i] @ y[j]) / temperature for j in range(n)]
            top = max(logits)
            total += -(logits[i] - top - np.log(sum(np.exp(v - top) for v in logits)))
    return total / n


def test_training_with_the_prior_scores_the_mix_in_the_contrastive_loss_and_sspc_reads_the_learned_part(store, tmp_path):
    """model.prior.train_weight = w_t: the contrastive loss scores [√(1-w_t) x̂ ; √w_t p] (a literal InfoNCE
    on that concatenation), gradients reach the learned parameters only, SSPC's terms equal those of the
    same output without the mix, and w_t = 0 adds nothing."""
    from multisk.losses.objective import TrainingObjective

    w_t = 0.3
    cfg = load_config(CONFIG, prior_overrides(store, tmp_path / "tw", **{
        "model.prior.train_weight": w_t, "loss.sspc.enabled": "true", "loss.sspc.warmup": "none",
        "loss.contrastive.pair_weights": "{text-video: 1.0, text-audio: 0.0, video-audio: 0.0}"}))
    model, batch = _fitted_model_and_batch(cfg, 8)
    model.train()
    out = model(batch)
    mixed = training_mix(cfg.model)(out)
    assert mixed["video"].shape[1] == cfg.model.projection_dim + TEXT_DIM
    assert out["joint_normalized"]["video"].shape[1] == cfg.model.projection_dim
    for m in ("text", "video"):
        learned = torch.nn.functional.normalize(out["joint"][m], dim=-1).detach().numpy()
        expected = np.concatenate([np.sqrt(1 - w_t) * learned, np.sqrt(w_t) * out["prior"][m].numpy()], axis=1)
        np.testing.assert_allclose(mixed[m].detach().numpy(), expected, atol=1e-6)

    objective = TrainingObjective(cfg.loss, cfg.model, available_embeddings=list(out["joint"]),
                                  contrastive_embeddings=training_mix(cfg.model))
    twin_state = {k: v.clone() for k, v in objective.state_dict().items()}
    losses = objective(out, model.anchors)
    both = (out["nonempty"]["text"] & out["nonempty"]["video"]).numpy()
    assert both.sum() >= 4
    t, v = mixed["text"].detach().numpy()[both], mixed["video"].detach().numpy()[both]
    assert float(losses["contrastive"]) == pytest.approx(
        _literal_info_nce(t, v, cfg.loss.contrastive.temperature), rel=1e-4)
    # SSPC sees the learned embeddings: the same value as a twin objective without the mix (the same,
    # still empty, queues)
    twin = TrainingObjective(cfg.loss, cfg.model, available_embeddings=list(out["joint"]))
    twin.load_state_dict(twin_state)
    assert float(losses["sspc"]) != 0.0
    assert float(losses["sspc"]) == pytest.approx(float(twin(out, model.anchors)["sspc"]), rel=1e-5)

    losses["loss"].backward()
    assert all(b.grad is None for b in model.prior.buffers())
    assert all(p.grad is not None for p in model.projections["video"].parameters())

    # w_t = 0 (the default): no hook, the loss reads the learned embeddings
    cfg0 = load_config(CONFIG, prior_overrides(store, tmp_path / "tw0"))
    assert training_mix(cfg0.model) is None


def _literal_val_rsum(text, other, groups):
    ones = np.ones(len(text), dtype=bool)
    m = evaluate_directions({"text": text.astype(np.float32), "video": other.astype(np.float32)},
                            {"text": ones, "video": ones}, groups=groups, directions=["t2v"])["t2v"]
    return m["R1"] + m["R5"] + m["R10"]


def _store_pools(root, split):
    """Literal pooled features of a synthetic store split (all tokens; the synthetic pictures are short)."""
    s = FeatureStore(root, split)
    rows = []
    for i in range(len(s)):
        t = np.asarray(s.tokens("text", i), dtype=np.float64)[:20]
        v = np.asarray(s.tokens("video", i), dtype=np.float64)
        rows.append((t, v))
    return rows, s


def test_fit_chooses_lambda_and_alpha_on_the_validation_split_like_a_literal_search(store, tmp_path):
    cfg = load_config(CONFIG, prior_overrides(store, tmp_path / "f", **{"model.prior.concept_classes": 7,
                                                                       "model.modalities": "[text,video]"}))
    model = build_model_with_prior(cfg)
    dataset = build_train_dataset(cfg)
    val = eval_store_dataset(cfg, str(store), "val")
    rng = np.random.default_rng(4)
    concept = (rng.standard_normal((7, VIDEO_DIM)), rng.standard_normal(7), rng.standard_normal((7, TEXT_DIM)))
    report = fit_text_space_prior(model, cfg, dataset, val, concept_arrays=concept)

    def pools(split):
        rows, s = _store_pools(store, split)
        keep = [i for i, (t, v) in enumerate(rows) if len(t) and len(v)]
        text = np.stack([_unit(rows[i][0].mean(0)) for i in keep])
        video = np.stack([rows[i][1].mean(0) for i in keep])  # 3 tokens: within every budget
        return text, video, None  # the synthetic captions carry no "group": every item is its own

    t_train, v_train, _ = pools("train")
    t_val, v_val, g_val = pools("val")
    ridge = RidgeMap().fit(v_train, t_train)
    curve = [_literal_val_rsum(t_val, ridge.predict(v_val, lam), g_val) for lam in RIDGE_LAMBDAS]
    lam = RIDGE_LAMBDAS[int(np.argmax(curve))]
    assert report["video"]["lambda"] == lam
    np.testing.assert_allclose([c["rsum"] for c in report["video"]["curve"]], curve, atol=1e-9)
    np.testing.assert_allclose(model.prior.video_weight.numpy(), ridge.weights(lam), rtol=1e-4, atol=1e-6)
    ridge_val = _unit(ridge.predict(v_val, lam))
    logits = v_val @ concept[0].T + concept[1]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    concepts = _unit(p @ concept[2])
    alpha_curve = [_literal_val_rsum(t_val, _unit((1 - a) * ridge_val + a * concepts), g_val) for a in CONCEPT_MIXES]
    assert report["concepts"]["alpha"] == CONCEPT_MIXES[int(np.argmax(alpha_curve))]
    assert float(model.prior.concept_mix) == pytest.approx(report["concepts"]["alpha"])
    assert bool(model.prior.fitted)


def test_weight_is_the_best_validation_mix_of_a_literal_search(store, tmp_path):
    cfg = load_config(CONFIG, prior_overrides(store, tmp_path / "w", **{"model.modalities": "[text,video]"}))
    torch.manual_seed(1)
    model = build_model_with_prior(cfg)
    dataset = build_train_dataset(cfg)
    val = eval_store_dataset(cfg, str(store), "val")
    fit_text_space_prior(model, cfg, dataset, val)
    choice = choose_prior_weight(model, val)
    model.eval()
    batch = collate_batch([val[i] for i in range(len(val))])
    with torch.no_grad():
        out = model(batch)
    keep = (out["nonempty"]["text"] & out["nonempty"]["video"]).numpy()
    x_t = _unit(out["joint"]["text"].numpy())[keep]
    x_v = _unit(out["joint"]["video"].numpy())[keep]
    p_t, p_v = out["prior"]["text"].numpy()[keep], out["prior"]["video"].numpy()[keep]
    curve = []
    for w in PRIOR_WEIGHTS:
        curve.append(_literal_val_rsum(np.hstack([np.sqrt(1 - w) * x_t, np.sqrt(w) * p_t]),
                                       np.hstack([np.sqrt(1 - w) * x_v, np.sqrt(w) * p_v]), None))
    np.testing.assert_allclose([c["rsum"] for c in choice["curve"]], curve, atol=1e-6)
    assert choice["weight"] == PRIOR_WEIGHTS[int(np.argmax(curve))]
    assert float(model.prior.mix_weight) == pytest.approx(choice["weight"])


def test_a_run_with_the_prior_records_its_choices_and_its_checkpoint_evaluates_the_same(store, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = load_config(CONFIG, prior_overrides(store, out))
    results = train(cfg, progress=False, make_plots=False)
    prior = results["prior"]
    assert prior["weight"] in PRIOR_WEIGHTS and prior["video"]["lambda"] in RIDGE_LAMBDAS
    assert "audio" in prior  # fitted on a seeded part of train: val has audio too, so on val here
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("prior/weight" in r for r in logged)
    model, loaded_cfg = load_model(out / "checkpoints" / "latest.pt")
    assert float(model.prior.mix_weight) == pytest.approx(prior["weight"]) and bool(model.prior.fitted)
    from multisk.evaluate.pipeline import evaluate_model

    again = evaluate_model(model, {"test": eval_store_dataset(loaded_cfg, str(store), "test")})
    for direction, metrics in results["evaluation"]["test"]["retrieval"].items():
        assert again["test"]["retrieval"][direction]["R10"] == pytest.approx(metrics["R10"])

    # `multisk eval --prior-weight 0` as a user types it: the learned embeddings alone
    from multisk.cli import main

    assert main(["eval", "--checkpoint", str(out / "checkpoints" / "latest.pt"), "--data", str(store), "--split", "test",
                 "--prior-weight", "0", "--out", str(tmp_path / "w0")]) == 0
    learned_only = json.loads((tmp_path / "w0" / "results.json").read_text())["test"]["retrieval"]
    model.prior.mix_weight.fill_(0.0)
    expected = evaluate_model(model, {"test": eval_store_dataset(loaded_cfg, str(store), "test")})["test"]["retrieval"]
    assert learned_only["t2v"]["R10"] == pytest.approx(expected["t2v"]["R10"])
    assert learned_only["t2v"]["MedR"] == pytest.approx(expected["t2v"]["MedR"])
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "checkpoints" / "latest.pt"), "--data", str(store), "--split", "test",
                 "--prior-weight", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert "--prior-weight: must be in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("extra, field", [
    ({"data.val_split": "null"}, "model.prior.weight"),
    ({"data.eval_splits": "[test,val]"}, "data.val_split"),
    ({"model.prior.concept_classes": 3, "model.modalities": "[text,audio]"}, "model.prior.concept_classes"),
    ({"model.prior.weight": 1.5}, "model.prior.weight"),
    ({"model.prior.train_weight": 1.0}, "model.prior.train_weight"),
    ({"model.prior.train_weight": -0.1}, "model.prior.train_weight"),
    ({"model.prior.train_weight": 0.5, "model.prior.enabled": "false"}, "model.prior.train_weight"),
])
def test_bad_prior_settings_are_config_errors_naming_the_field(store, tmp_path, extra, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(CONFIG, prior_overrides(store, tmp_path / "bad", **extra))


def test_concept_head_on_a_store_without_lite0_pictures_is_a_config_error(store, tmp_path):
    cfg = load_config(CONFIG, prior_overrides(store, tmp_path / "c", **{"model.prior.concept_classes": 1000}))
    with pytest.raises(ConfigError, match="concept_classes"):
        fit_text_space_prior(build_model_with_prior(cfg), cfg, build_train_dataset(cfg))


def test_a_validation_split_of_other_features_is_a_config_error():
    from multisk.prior.validation import validation_pairs

    ones = np.ones(6, dtype=bool)
    train = {"video": (np.zeros((6, 8)), ones), "text": (np.zeros((6, 4)), ones)}
    val = {"video": (np.zeros((3, 5)), ones[:3]), "text": (np.zeros((3, 4)), ones[:3])}
    with pytest.raises(ConfigError, match="data.val_split"):
        validation_pairs("video", train, val, None, None, seed=0)
