"""model.input_space: frozen — the input-space anchors score the frozen pre-trained features (as the
text-space prior pools and standardises them) instead of the learned token projections: the embeddings
against a literal numpy version, the widths of anchors and SSPC queues, where gradients go, config
errors, and a run through train() whose checkpoint loads."""

import numpy as np
import pytest
import torch

from multisk.config import ConfigError, load_config
from multisk.evaluate.loading import load_model
from multisk.losses.objective import TrainingObjective
from multisk.prior import build_model_with_prior
from multisk.train.datasets_for_config import build_train_dataset, collate_fn_for
from multisk.prior.fit import fit_text_space_prior
from multisk.train.trainer import train
from synthetic_store import N_MELS, TEXT_DIM, VIDEO_DIM, tiny_overrides

CONFIG = "configs/demo.yaml"


STORE_SIZES = dict(n_train=48, n_test=16, n_val=16)  # the shared `store` fixture (tests/conftest.py)


def frozen_overrides(store, out, **extra):
    values = {"model.prior.enabled": "true", "data.val_split": "val", "model.input_space": "frozen",
              "loss.sspc.enabled": "true", **extra}
    return tiny_overrides(store, out, **values)


def _batch(cfg, n=8):
    dataset = build_train_dataset(cfg)
    batch = collate_fn_for(dataset)([dataset[i] for i in range(n)])
    return dataset, {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}


def _unit(rows):
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.where(norms > 0, rows / np.where(norms > 0, norms, 1), 0.0)


def test_frozen_input_space_is_the_standardised_pooled_features_and_sspc_trains_on_it(store, tmp_path):
    cfg = load_config(CONFIG, frozen_overrides(store, tmp_path / "m", **{"loss.sspc.warmup": "none"}))
    torch.manual_seed(0)
    model = build_model_with_prior(cfg)
    dataset, batch = _batch(cfg)
    fit_text_space_prior(model, cfg, dataset)
    widths = {"text": TEXT_DIM, "video": VIDEO_DIM, "audio": 2 * N_MELS}
    assert {m: a.shape[1] for m, a in model.anchors.input_anchors.items()} == widths
    model.train()
    out = model(batch)
    prior = model.prior
    for m in ("text", "video", "audio"):
        features, mask = batch[m].numpy().astype(np.float64), batch[f"{m}_mask"].numpy().astype(bool)
        rows = []
        for i in range(len(mask)):
            if m == "audio":  # (n_mels, F): mean ; std over the valid frames
                frames = features[i][:, mask[i]]
                pool = np.concatenate([frames.mean(1), frames.std(1)]) if mask[i].any() else np.zeros(2 * N_MELS)
            else:
                pool = features[i][mask[i]].mean(0) if mask[i].any() else np.zeros(features.shape[2])
            if m != "text" and mask[i].any():
                pool = (pool - getattr(prior, f"{m}_mean").numpy()) / getattr(prior, f"{m}_scale").numpy()
            rows.append(pool)
        np.testing.assert_allclose(out["input_embedding"][m].numpy(), _unit(np.array(rows)), atol=1e-5)
        assert not out["input_embedding"][m].requires_grad  # frozen: no gradient into the model from here
        assert out["input_anchor_scores"][m].shape == (len(mask), cfg.model.num_anchors)

    objective = TrainingObjective(cfg.loss, cfg.model, available_embeddings=list(out["joint"]))
    assert {m: q.rows.shape[1] for m, q in objective.sspc.input_queues.items()} == widths
    losses = objective(out, model.anchors)
    assert float(losses["sspc"]) > 0
    losses["loss"].backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in model.anchors.input_anchors.values())


def test_a_run_with_a_frozen_input_space_trains_and_its_checkpoint_loads(store, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(CONFIG, frozen_overrides(store, out))
    results = train(cfg, progress=False, make_plots=False)
    assert results["evaluation"]["test"]["retrieval"]["t2v"]["R10"] >= 0
    model, loaded = load_model(out / "checkpoints" / "latest.pt")
    assert loaded.model.input_space == "frozen"
    assert model.anchors.input_anchors["video"].shape[1] == VIDEO_DIM


@pytest.mark.parametrize("extra, field", [
    ({"model.input_space": "pixels"}, "model.input_space"),
    ({"model.prior.enabled": "false"}, "model.input_space"),
])
def test_bad_input_space_settings_are_config_errors_naming_the_field(store, tmp_path, extra, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(CONFIG, frozen_overrides(store, tmp_path / "bad", **extra))


def _torchrun():
    import shutil
    import sys
    from pathlib import Path

    local = Path(sys.executable).parent / "torchrun"
    return shutil.which("torchrun") or (str(local) if local.exists() else None)


@pytest.mark.skipif(_torchrun() is None, reason="torchrun not installed")
def test_frozen_input_space_and_the_prior_in_the_loss_under_torchrun_match_one_process(logged_losses, store, tmp_path):
    """Two processes on the global batch = one process: SSPC with frozen input anchors (its own gather of
    the input embeddings, widths 12 / 20) and the contrastive loss on the prior mix (model.prior.train_weight)."""
    import os
    import subprocess

    # text + video only: no BatchNorm statistics, so ranks' shares give the single-process numbers;
    # a queue of 16 fills after two global batches of 8, so SSPC is active from step 3
    common = {"model.modalities": "[text,video]", "loss.contrastive.pair_weights.text-audio": 0.0,
              "loss.contrastive.pair_weights.video-audio": 0.0, "model.prior.train_weight": 0.5,
              "train.steps": 4, "train.epochs": 1, "train.batch_size": 8, "data.eval_splits": "[]"}
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    result = subprocess.run(
        [_torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "multisk.cli", "train", "--no-progress",
         "--config", CONFIG, *frozen_overrides(store, ddp, **common)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    train(load_config(CONFIG, frozen_overrides(store, single, **common)), progress=False, make_plots=False)
    expected, got = logged_losses(single), logged_losses(ddp)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=2e-4, abs=1e-5), f"step {step}"
    import json

    active = [r.get("loss/sspc/active", 0.0) for r in map(json.loads, (ddp / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert max(active) == 1.0
