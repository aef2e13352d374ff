"""Typed configuration: overrides apply, unknown keys and bad values are errors naming the key."""

import pytest

from multisk.config import ConfigError, config_from_dict, config_to_dict, load_config
from repo_paths import REPO


def test_defaults_and_overrides():
    cfg = load_config(None, ["model.num_anchors=32", "loss.sspc.enabled=false", "train.lr=0.001"])
    assert cfg.model.num_anchors == 32 and cfg.loss.sspc.enabled is False and cfg.train.lr == 0.001
    assert cfg.model.projection_dim == 6144  # paper default untouched


def test_round_trip_through_dict():
    cfg = load_config(None, ["model.variant=everything_at_once"])
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.foo=1", "model.foo"),
        ("model.num_anchors=many", "model.num_anchors"),
        ("loss.sspc.cost=l2", "loss.sspc.cost"),
        ("model.variant=cnn", "model.variant"),
        ("train.precision=fp8", "train.precision"),
        ("model.num_heads=7", "model.num_heads"),
    ],
)
def test_bad_overrides_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  embed_dim: 64\n  num_heads: 4\ntrain:\n  bogus: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*train\.bogus"):
        load_config(path)


def test_missing_file_and_malformed_override(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["model.num_anchors"])


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        load_config(path)
