"""Modalities as data (multisk.modalities): the table is what config, dataset, collate, model, losses and
the retrieval directions read — a fourth row (optical flow, token features like video) trains a step
and is evaluated without any other code change."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from multisk.config import MODALITIES, ConfigError, DataConfig, ModelConfig, load_config
from multisk.data.feature_store import FeatureStoreWriter
from multisk.data.store_for_config import feature_dims, store_dataset, token_budgets
from multisk.errors import DataFormatError
from multisk.evaluate.directions import available_directions, evaluate_directions
from multisk.evaluate.pipeline import embed_dataset
from multisk.losses.objective import TrainingObjective
from multisk.modalities import MODALITY_SPECS, ModalitySpec, feature_dim, modality_spec, token_budget
from multisk.models import build_model
from multisk.train.step import build_optimizer, make_grad_scaler, make_train_step


def test_every_row_names_config_fields_that_exist():
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    assert MODALITIES == tuple(MODALITY_SPECS) == ("text", "video", "audio")
    for spec in MODALITY_SPECS.values():
        assert spec.dim_key in model_fields and spec.budget_key in data_fields
    assert len({s.letter for s in MODALITY_SPECS.values()}) == len(MODALITY_SPECS)


def test_dims_and_budgets_come_from_the_rows_config_fields():
    cfg = load_config(None, ["model.text_dim=11", "model.video_dim=13", "model.audio_mels=17",
                             "data.max_text_tokens=3", "data.max_video_tokens=5", "data.max_audio_frames=7"])
    assert feature_dims(cfg) == {"text": 11, "video": 13, "audio": 17}
    assert token_budgets(cfg) == {"text": 3, "video": 5, "audio": 7}
    assert feature_dim(cfg.model, "video") == 13 and token_budget(cfg.data, "audio") == 7


def test_a_modality_outside_the_table_is_a_config_error_not_the_video_width():
    with pytest.raises(ConfigError, match="model.modalities: unknown modality 'depth'"):
        feature_dim(ModelConfig(), "depth")
    with pytest.raises(ConfigError, match="model.modalities: unknown modality 'depth'"):
        build_model(ModelConfig(modalities=["text", "depth"]))
    with pytest.raises(ConfigError, match="encoder"):
        ModalitySpec("depth", "d", "video_dim", "max_video_tokens", crop="center", encoder="pointcloud")
    assert modality_spec("audio").encoder == "spectrogram"


FLOW_DIM, FLOW_TOKENS = 6, 4


@pytest.fixture
def flow_row(monkeypatch):
    """A fourth modality declared as one row, its width and budget as config fields."""
    monkeypatch.setitem(MODALITY_SPECS, "flow", ModalitySpec("flow", "f", "flow_dim", "max_flow_tokens",
                                                             crop="center", encoder="tokens"))
    cfg = load_config(None, [
        "model.modalities=[text,video,flow]", "model.text_dim=5", "model.video_dim=8", "model.embed_dim=16",
        "model.num_heads=2", "model.depth=1", "model.projection_dim=12", "model.num_anchors=4",
        "data.max_text_tokens=3", "data.max_video_tokens=2", "data.max_audio_frames=8",
        "loss.sspc.queue_size=0", "train.batch_size=6",
    ])
    cfg.model.flow_dim = FLOW_DIM  # the two config fields the row names
    cfg.data.max_flow_tokens = FLOW_TOKENS
    cfg.data.modality_map["flow"] = "flow"
    cfg.loss.contrastive.pair_weights = {"text-video": 1.0, "text-flow": 1.0, "video-flow": 0.5}
    cfg.loss.sspc.modality_weights = {"text": 1.0, "video": 1.0, "flow": 0.5}
    return cfg


def _store_with_flow(root, n=6):
    rng = np.random.default_rng(0)
    with FeatureStoreWriter(root, "train", {"text": 5, "video": 8, "audio": 40, "flow": FLOW_DIM}) as writer:
        for i in range(n):
            writer.add(f"item{i}", {"text": rng.standard_normal((2, 5)), "video": rng.standard_normal((2, 8)),
                                    "audio": None, "flow": rng.standard_normal((3 + i, FLOW_DIM))},
                       caption=f"caption {i}")
    return root


def test_a_fourth_modality_trains_one_step_and_is_evaluated(flow_row, tmp_path):
    cfg = flow_row
    dataset = store_dataset(cfg, str(_store_with_flow(tmp_path / "store")), "train")
    batch = dataset.collate_fn([dataset[i] for i in range(len(dataset))])
    assert batch["flow"].shape == (6, FLOW_TOKENS, FLOW_DIM)  # cropped to its budget, padded to it
    assert batch["flow_mask"].sum(dim=1).tolist() == [3, 4, 4, 4, 4, 4]
    with FeatureStoreWriter(tmp_path / "no_flow", "train", {"text": 5, "video": 8}) as writer:
        writer.add("x", {"text": np.ones((1, 5)), "video": np.ones((1, 8))})
    no_flow = store_dataset(cfg, str(tmp_path / "no_flow"), "train")  # an empty flow of the configured width
    assert no_flow.dims["flow"] == FLOW_DIM and tuple(no_flow[0]["flow"].shape) == (0, FLOW_DIM)

    torch.manual_seed(0)
    model = build_model(cfg.model)
    assert model.token_projections["flow"].in_dim == FLOW_DIM  # its own width, not the video one
    wrong = dict(batch, flow=torch.zeros(6, FLOW_TOKENS, 8))
    with pytest.raises(DataFormatError, match=r"batch\['flow'\].*model.flow_dim"):
        model(wrong)

    objective = TrainingObjective(cfg.loss, cfg.model, model.joint_names)
    optimizer = build_optimizer(cfg.train, model)
    step = make_train_step(model, objective, optimizer, make_grad_scaler(torch.device("cpu"), "fp32"), "fp32")
    before = model.token_projections["flow"].linear.weight.detach().clone()
    out = step(batch)
    assert out.applied and bool(out.finite)
    assert not torch.equal(before, model.token_projections["flow"].linear.weight)  # the flow branch learned

    emb = embed_dataset(model, dataset, batch_size=4)
    assert set(emb["joint"]) == {"text", "video", "flow"}
    directions = available_directions(list(emb["joint"]))
    assert {"t2f", "f2t", "v2f", "f2v", "t2v"} <= set(directions)
    retrieval = evaluate_directions(emb["joint"], emb["nonempty"], directions=["t2f", "f2t"])
    assert set(retrieval) == {"t2f", "f2t"} and 0 <= retrieval["t2f"]["R1"] <= 100
