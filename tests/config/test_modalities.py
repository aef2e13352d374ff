"""Modalities as data (multisk.modalities): the table is what config, dataset, collate, model, losses and
the retrieval directions read. A fourth row (optical flow, token features like video) is declared in a
YAML file only (``model.modality_specs``), trains a step through the trainer and is evaluated through
the evaluation pipeline without any code change; the table is carried by each config, so two configs in
one process do not see each other's rows."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from multisk.config import MODALITIES, ConfigError, DataConfig, ModelConfig, load_config
from multisk.data.store.feature_store import FeatureStoreWriter
from multisk.data.store.store_for_config import feature_dims, store_dataset, token_budgets
from multisk.errors import DataFormatError
from multisk.metrics.directions import available_directions, evaluate_directions
from multisk.evaluate.pipeline import evaluate_model, score_retrieval
from multisk.modalities import MODALITY_SPECS, ModalitySpec, feature_dim, modality_spec, modality_table, token_budget
from multisk.models import build_model
from multisk.train import step as step_module
from multisk.train.trainer import train

from synthetic_store import TEXT_DIM, VIDEO_DIM, write_synthetic_store


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



FLOW_DIM, FLOW_TOKENS = 24, 6

# everything the fourth modality needs, in configuration only: its row, its place in model.modalities,
# the store modality feeding it and its loss weights
FLOW_YAML = """
model:
  variant: {variant}
  modalities: [text, video, audio, flow]
  modality_specs:
    flow: {{letter: f, dim: {flow_dim}, max_tokens: {flow_tokens}, crop: center, encoder: tokens}}
  text_dim: {text_dim}
  video_dim: {video_dim}
  audio_width_divisor: 32
  embed_dim: 16
  num_heads: 2
  projection_dim: 12
  num_anchors: 4
loss:
  contrastive:
    pair_weights: {{text-video: 1.0, text-audio: 0.1, video-audio: 0.1, text-flow: 1.0, video-flow: 0.5}}
  sspc:
    queue_size: 0
    modality_weights: {{text: 1.0, video: 1.0, audio: 0.1, flow: 0.5}}
data:
  root: {root}
  eval_splits: [test]
  modality_map: {{flow: flow}}
  max_video_tokens: 3
  max_audio_frames: 128
train:
  output_dir: {out}
  batch_size: 8
  steps: 1
  log_every: 1
"""


def _flow_config(tmp_path, store, variant="per_modality", **fields):
    path = tmp_path / f"flow_{variant}.yaml"
    path.write_text(FLOW_YAML.format(variant=variant, flow_dim=FLOW_DIM, flow_tokens=FLOW_TOKENS, text_dim=TEXT_DIM,
                                     video_dim=VIDEO_DIM, root=store, out=tmp_path / f"run_{variant}", **fields))
    return path


@pytest.fixture(scope="module")
def flow_store(tmp_path_factory):
    return write_synthetic_store(tmp_path_factory.mktemp("flow_store"), extra_dims={"flow": FLOW_DIM})


@pytest.mark.parametrize("variant", ["per_modality", "everything_at_once"])
def test_a_fourth_modality_declared_in_yaml_only_trains_one_step_and_is_evaluated(flow_store, tmp_path,
                                                                                  monkeypatch, variant):
    cfg = load_config(_flow_config(tmp_path, flow_store, variant))
    fed, models = [], []
    real_call = step_module.TrainStep.__call__

    def recording_call(self, batch):  # what the trainer's step is fed, and the model it trains
        fed.append(batch)
        models.append(self.model)
        before = self.model.token_projections["flow"].linear.weight.detach().clone()
        out = real_call(self, batch)
        assert not torch.equal(before, self.model.token_projections["flow"].linear.weight)  # the flow branch learned
        return out

    monkeypatch.setattr(step_module.TrainStep, "__call__", recording_call)
    results = train(cfg, progress=False, make_plots=False)
    assert results["steps"] == 1 and len(fed) == 1
    batch, model = fed[0], models[0]
    assert batch["flow"].shape == (8, FLOW_TOKENS, FLOW_DIM)  # the row's budget and width
    assert model.token_projections["flow"].in_dim == FLOW_DIM  # its own width, not the video one
    pairs = {"text_flow", "video_flow", "audio_flow"} if variant == "everything_at_once" else set()
    assert set(model.joint_names) == {"text", "video", "audio", "flow"} | pairs | (
        {"text_video", "text_audio", "video_audio"} if pairs else set())
    wrong = dict(batch, flow=torch.zeros(8, FLOW_TOKENS, VIDEO_DIM))
    with pytest.raises(DataFormatError, match=r"batch\['flow'\].*model.modality_specs.flow.dim"):
        model(wrong)

    # the trainer's final evaluation (multisk.evaluate.pipeline.evaluate_model) scores flow's directions
    retrieval = results["evaluation"]["test"]["retrieval"]
    assert {"t2f", "f2t", "v2f", "f2v", "a2f", "f2a", "t2v"} <= set(retrieval)
    assert 0 <= retrieval["t2f"]["R1"] <= 100 and retrieval["t2f"]["MedR"] >= 1
    saved = json.loads((tmp_path / f"run_{variant}" / "results.json").read_text())
    assert saved["evaluation"]["test"]["inputs"]["items_with"]["flow"] == 24 - 24 // 5  # every fifth item lacks it
    assert saved["evaluation"]["test"]["retrieval"]["f2t"] == retrieval["f2t"]

    # free-form text queries (search, classification by class names) feed the flow row empty, too
    from multisk.data.store.feature_store import read_manifest
    from multisk.evaluate.text_queries import embed_texts, query_encoder_spec

    spec = query_encoder_spec(read_manifest(flow_store), "test", "text")
    model.eval()
    with torch.no_grad():
        embedded, has_tokens = embed_texts(model, ["a small cat", "qqqq"], spec, device="cpu")
    assert embedded.shape[0] == 2 and has_tokens.tolist() == [True, False]
    assert torch.isfinite(embedded).all()


def test_directions_of_a_fourth_modality_are_listed_when_skipped(flow_store, tmp_path):
    cfg = load_config(_flow_config(tmp_path, flow_store))
    table = modality_table(cfg.model)
    n = 5
    emb = {"joint": {m: torch.randn(n, 4) for m in ("text", "video", "flow")},
           "nonempty": {"text": torch.ones(n, dtype=torch.bool), "video": torch.ones(n, dtype=torch.bool),
                        "flow": torch.zeros(n, dtype=torch.bool)}}
    retrieval, skipped = score_retrieval(emb, mode="excluded", table=table)
    assert "t2v" in retrieval and "t2f" not in retrieval
    assert skipped["t2f"] == skipped["f2v"] == "no item of this split has flow"
    assert skipped["a2f"] == "the model has no audio branch"
    _, built_in = score_retrieval(emb | {"joint": {m: emb["joint"][m] for m in ("text", "video")}}, mode="excluded")
    assert not any("f" in label.replace("2", "") for label in built_in)  # the built-in table has no flow row


def test_two_configs_in_one_process_do_not_see_each_others_rows(flow_store, tmp_path):
    with_flow = load_config(_flow_config(tmp_path, flow_store))
    wider = load_config(_flow_config(tmp_path, flow_store, "everything_at_once"),
                        ["model.modality_specs.flow.dim=7", "model.modality_specs.flow.letter=o"])
    plain = load_config(None)
    assert feature_dims(with_flow)["flow"] == FLOW_DIM and feature_dims(wider)["flow"] == 7
    assert token_budgets(with_flow)["flow"] == FLOW_TOKENS
    assert modality_table(with_flow.model)["flow"].letter == "f" and modality_table(wider.model)["flow"].letter == "o"
    assert "flow" not in feature_dims(plain) and "flow" not in modality_table(plain.model)
    assert tuple(MODALITY_SPECS) == MODALITIES  # the built-in table is never extended
    with pytest.raises(ConfigError, match="model.modalities: unknown modality 'flow'"):
        load_config(None, ["model.modalities=[text,flow]"])
    with pytest.raises(ConfigError, match="model.modalities: unknown modality 'flow'"):
        build_model(dataclasses.replace(plain.model, modalities=["text", "flow"]))
    table = modality_table(wider.model)
    assert available_directions(["text", "flow"], table) == ["t2o", "o2t"]
    assert evaluate_directions({"text": np.eye(3), "flow": np.eye(3)}, table=table)["o2t"]["R1"] == 100.0
    with pytest.raises(ValueError, match="unknown embedding name 'flow'"):
        available_directions(["text", "flow"])  # the built-in rows only


@pytest.mark.parametrize("overrides, message", [
    (["flow.shape=3"], "model.modality_specs.flow.shape"),  # an unknown key
    (["flow.dim=0"], "model.modality_specs.flow.dim: must be a positive integer"),
    (["flow.max_tokens=-2"], "model.modality_specs.flow.max_tokens: must be a positive integer"),
    (["flow.letter=v"], "model.modality_specs.flow.letter: 'v' is already the letter of 'video'"),
    (["flow.letter=fl"], "model.modality_specs.flow.letter: expected one lowercase letter"),
    (["flow.crop=even"], "model.modality_specs.flow.crop: expected one of start, center"),
    (["flow.encoder=spectrogram"], "model.modality_specs.flow.encoder: a configured modality must be 'tokens'"),
    (["video.letter=w", "video.dim=3", "video.max_tokens=3"], "model.modality_specs.video: 'video' is a built-in"),
    (["depth_map.letter=d", "depth_map.dim=3", "depth_map.max_tokens=3"], "model.modality_specs: name 'depth_map'"),
    (["depth.letter=f", "depth.dim=3", "depth.max_tokens=2"],
     "model.modality_specs.depth.letter: 'f' is already the letter of 'flow'"),
])
def test_a_malformed_configured_row_is_a_config_error_naming_the_field(flow_store, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_flow_config(tmp_path, flow_store), [f"model.modality_specs.{o}" for o in overrides])


def test_the_fourth_modality_is_cropped_by_its_row_and_empty_where_the_store_lacks_it(flow_store, tmp_path):
    cfg = load_config(_flow_config(tmp_path, flow_store), ["model.modality_specs.flow.crop=start"])
    dataset = store_dataset(cfg, str(flow_store), "train")
    stored = dataset.store.tokens("flow", 6)  # item 6: 2 + 6 % 7 = 8 tokens, budget 6
    assert stored.shape == (8, FLOW_DIM)
    np.testing.assert_allclose(dataset[6]["flow"].numpy(), stored[:FLOW_TOKENS], rtol=1e-6)  # crop: start
    centred = store_dataset(load_config(_flow_config(tmp_path, flow_store)), str(flow_store), "train")
    np.testing.assert_allclose(centred[6]["flow"].numpy(), stored[1:1 + FLOW_TOKENS], rtol=1e-6)  # crop: center
    batch = dataset.collate_fn([dataset[i] for i in range(5)])
    assert batch["flow"].shape == (5, FLOW_TOKENS, FLOW_DIM)
    assert batch["flow_mask"].sum(dim=1).tolist() == [2, 3, 4, 5, 0]  # item 4 has no flow
    with FeatureStoreWriter(tmp_path / "no_flow", "train", {"text": TEXT_DIM, "video": VIDEO_DIM}) as writer:
        writer.add("x", {"text": np.ones((1, TEXT_DIM)), "video": np.ones((1, VIDEO_DIM))})
    no_flow = store_dataset(load_config(_flow_config(tmp_path, flow_store), ["data.modality_map.flow=flow"]),
                            str(tmp_path / "no_flow"), "train")
    assert no_flow.dims["flow"] == FLOW_DIM and tuple(no_flow[0]["flow"].shape) == (0, FLOW_DIM)


def test_without_sspc_a_model_built_from_the_full_config_skips_the_anchor_scores_in_training(flow_store, tmp_path):
    """Only SSPC reads the anchor scores in training: ``build_model(cfg)`` of an SSPC-off config skips
    them there (and freezes the anchors), keeps them in evaluation, and has the state dict of
    ``build_model(cfg.model)`` so checkpoints load either way; SSPC on keeps the full output dict."""
    off = load_config(_flow_config(tmp_path, flow_store), ["loss.sspc.enabled=false"])
    on = load_config(_flow_config(tmp_path, flow_store))
    dataset = store_dataset(off, str(flow_store), "train")
    batch = dataset.collate_fn([dataset[i] for i in range(4)])
    torch.manual_seed(0)
    skipping = build_model(off)
    torch.manual_seed(0)
    section_only = build_model(off.model)  # what older SSPC-off runs were built (and checkpointed) from
    assert skipping.state_dict().keys() == section_only.state_dict().keys()
    skipping.load_state_dict(section_only.state_dict(), strict=True)
    section_only.load_state_dict(skipping.state_dict(), strict=True)
    assert not any(p.requires_grad for p in skipping.anchors.parameters())

    out = skipping.train()(batch)
    assert out["input_anchor_scores"] == {} and out["joint_anchor_scores"] == {}
    reference = section_only.train()(batch)
    for name in reference["joint"]:
        torch.testing.assert_close(out["joint"][name], reference["joint"][name])
    evaluated = skipping.eval()(batch)  # evaluation (anchor figures) still gets them
    for m in ("text", "video", "audio", "flow"):
        torch.testing.assert_close(evaluated["input_anchor_scores"][m],
                                   section_only.anchors.input_scores(m, evaluated["input_embedding"][m]))

    with_sspc = build_model(on).train()(batch)
    assert set(with_sspc["input_anchor_scores"]) == {"text", "video", "audio", "flow"}
    assert all(set(per) == {"text", "video", "audio", "flow"} for per in with_sspc["joint_anchor_scores"].values())
