"""model.input_residual: joint_m = (model without it)_m + W_m · LN(masked mean of the input features)."""

import torch

from multisk.config import load_config
from multisk.models import build_model
from repo_paths import REPO

CONFIG = REPO / "configs" / "demo.yaml"
SMALL = ["model.text_dim=6", "model.video_dim=10", "model.embed_dim=16", "model.num_heads=2",
         "model.projection_dim=8", "model.num_anchors=4", "model.audio_width_divisor=32"]


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {"text": torch.randn(4, 5, 6, generator=g), "video": torch.randn(4, 3, 10, generator=g),
             "audio": torch.randn(4, 40, 128, generator=g)}
    batch["text_mask"] = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]).float()
    batch["video_mask"] = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]]).float()
    batch["audio_mask"] = torch.ones(4, 128)
    # garbage in the padding must not reach the residual path
    batch["text"][0, 3:] = 1e6
    return batch


def test_residual_adds_a_linear_map_of_the_masked_mean_features():
    torch.manual_seed(0)
    with_residual = build_model(load_config(CONFIG, [*SMALL, "model.input_residual=true"]).model).eval()
    torch.manual_seed(0)
    plain = build_model(load_config(CONFIG, [*SMALL, "model.input_residual=false"]).model).eval()
    missing, unexpected = plain.load_state_dict(with_residual.state_dict(), strict=False)
    assert not missing and all(k.startswith("input_residuals.") for k in unexpected)
    assert set(with_residual.input_residuals) == {"text", "video"}  # audio has no frozen input features
    batch = _batch()
    got, base = with_residual(batch)["joint"], plain(batch)["joint"]
    for m in ("text", "video"):
        norm, linear = with_residual.input_residuals[m]
        expected = []
        for b in range(4):
            rows = [batch[m][b, j] for j in range(batch[m].shape[1]) if batch[f"{m}_mask"][b, j] > 0]
            mean = torch.stack(rows).mean(0) if rows else torch.zeros(batch[m].shape[2])
            centred = mean - mean.mean()
            normed = centred / torch.sqrt(centred.pow(2).mean() + norm.eps) * norm.weight + norm.bias
            expected.append(base[m][b] + linear.weight @ normed + linear.bias)
        torch.testing.assert_close(got[m], torch.stack(expected), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["audio"], base["audio"])


def test_off_unless_configured():
    from multisk.config import ModelConfig

    assert ModelConfig().input_residual is False  # the paper's model has no such path
    model = build_model(load_config(CONFIG, [*SMALL, "model.input_residual=false"]).model)
    assert model.input_residuals is None
