"""Tests of multisk.models: layers against literal formulas, DAVEnet against a literal (1×k) Conv2d
network, the model's output contract, masking, padding invariance, precision and parameter count."""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import replace
from typing import Dict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from multisk.config import ConfigError, ModelConfig, load_config
from multisk.errors import DataFormatError
from multisk.models import (
    FusionBlock, GatedEmbeddingUnit, ModalityTokens, build_model, davenet_v1, davenet_v2, masked_mean,
    parameter_table,
)
from multisk.models.davenet import DAVEnet

REFERENCE_PARAMETERS = 892_771_074
VARIANTS = ("per_modality", "everything_at_once")


def small_config(**overrides) -> ModelConfig:
    base = ModelConfig(
        text_dim=12, video_dim=16, audio_mels=8, audio_width_divisor=32, embed_dim=32, num_heads=4, mlp_ratio=2.0,
        projection_dim=24, num_anchors=8, max_positions=16,
    )
    return replace(base, **overrides)


def make_batch(cfg: ModelConfig, batch_size: int = 4, text_len: int = 5, video_len: int = 4, frames: int = 192,
               seed: int = 0, empty_row: bool = True) -> Dict[str, torch.Tensor]:
    """Random batch with ragged lengths; with ``empty_row`` sample 1 has no text, sample 2 no video and
    sample 3 no audio."""
    gen = torch.Generator().manual_seed(seed)

    def lengths_mask(length: int, empty_at: int) -> torch.Tensor:
        valid = torch.randint(1, max(length, 1) + 1, (batch_size,), generator=gen).clamp_max(length)
        valid[0] = length
        if empty_row and empty_at < batch_size:
            valid[empty_at] = 0
        return (torch.arange(length)[None, :] < valid[:, None]).float()

    return {
        "text": torch.randn(batch_size, text_len, cfg.text_dim, generator=gen),
        "text_mask": lengths_mask(text_len, 1),
        "video": torch.randn(batch_size, video_len, cfg.video_dim, generator=gen),
        "video_mask": lengths_mask(video_len, 2),
        "audio": torch.randn(batch_size, cfg.audio_mels, frames, generator=gen),
        "audio_mask": lengths_mask(frames, 3),
        "index": torch.arange(batch_size),
        "id": [f"clip{i}" for i in range(batch_size)],
    }


def all_output_tensors(out) -> list:
    tensors = []
    for key in ("joint", "joint_normalized", "input_embedding", "input_anchor_scores"):
        tensors += list(out[key].values())
    for per_m in out["joint_anchor_scores"].values():
        tensors += list(per_m.values())
    return tensors


def scalar_loss(out, seed: int = 1) -> torch.Tensor:
    """A random linear functional of every float output (random weights avoid symmetric zero grads)."""
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(())
    for t in all_output_tensors(out):
        total = total + (t.float() * torch.randn(t.shape, generator=gen)).sum()
    return total


# ----------------------------------------------------------------------------------------------- layers
def test_gated_embedding_unit_matches_formula():
    torch.manual_seed(0)
    unit = GatedEmbeddingUnit(7, 5)
    x = torch.randn(3, 4, 7)
    y = x @ unit.linear.weight.T + unit.linear.bias
    expected = y * torch.sigmoid(y @ unit.gate.weight.T + unit.gate.bias)
    torch.testing.assert_close(unit(x), expected)


def test_masked_mean_matches_loop_and_is_float32_under_autocast():
    torch.manual_seed(0)
    tokens = torch.randn(3, 6, 5)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    expected = torch.stack([
        tokens[0, :2].mean(0), tokens[1].mean(0), torch.zeros(5)
    ])
    torch.testing.assert_close(masked_mean(tokens, mask), expected)
    torch.testing.assert_close(masked_mean(tokens, mask.bool()), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked_mean(tokens.bfloat16(), mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, masked_mean(tokens.bfloat16().float(), mask))


def literal_block(block: FusionBlock, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Pre-LN block written out: explicit softmax over masked scores, per head."""
    batch, length, dim = x.shape
    heads = block.attn.num_heads
    head_dim = dim // heads
    h = F.layer_norm(x, (dim,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    qkv = h @ block.attn.qkv.weight.T + block.attn.qkv.bias
    q, k, v = qkv.split(dim, dim=-1)
    q, k, v = (t.reshape(batch, length, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    attended = torch.softmax(scores, dim=-1) @ v
    attended = attended.transpose(1, 2).reshape(batch, length, dim)
    x = x + attended @ block.attn.proj.weight.T + block.attn.proj.bias
    h = F.layer_norm(x, (dim,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
    hidden = h @ block.mlp.fc1.weight.T + block.mlp.fc1.bias
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    return x + hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias


def test_sdpa_fusion_block_matches_literal_attention():
    torch.manual_seed(0)
    block = FusionBlock(32, num_heads=4, mlp_ratio=1.5).eval()
    for p in block.parameters():  # non-trivial norms and biases
        nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 7, 32)
    key_mask = torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    torch.testing.assert_close(block(x, key_mask), literal_block(block, x, key_mask), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- DAVEnet
class LiteralConv2dDAVEnet(nn.Module):
    """The reference's formulation: NCHW tensors of height 1, stem Conv2d(1 → C0, (n_mels, 1)),
    residual blocks of (1 × 9) Conv2d with BatchNorm2d; weights copied from a :class:`DAVEnet`."""

    def __init__(self, net: DAVEnet) -> None:
        super().__init__()

        def conv2d_from(conv: nn.Conv1d) -> nn.Conv2d:
            k = conv.kernel_size[0]
            literal = nn.Conv2d(conv.in_channels, conv.out_channels, (1, k), stride=conv.stride[0],
                                padding=(0, conv.padding[0]), bias=False)
            literal.weight.data.copy_(conv.weight.data.unsqueeze(2))  # (out, in, k) -> (out, in, 1, k)
            return literal

        def bn2d_from(bn: nn.BatchNorm1d) -> nn.BatchNorm2d:
            literal = nn.BatchNorm2d(bn.num_features)
            literal.load_state_dict(bn.state_dict())
            return literal

        stem = net.stem_conv
        self.stem = nn.Conv2d(1, stem.out_channels, (net.n_mels, 1), bias=False)
        self.stem.weight.data.copy_(stem.weight.data.unsqueeze(1))  # (C0, n_mels, 1) -> (C0, 1, n_mels, 1)
        self.stem_bn = bn2d_from(net.stem_bn)
        self.blocks = nn.ModuleList()
        for stage in net.stages:
            for block in stage:
                parts = nn.ModuleDict({
                    "conv1": conv2d_from(block.conv1), "bn1": bn2d_from(block.bn1),
                    "conv2": conv2d_from(block.conv2), "bn2": bn2d_from(block.bn2),
                })
                if isinstance(block.shortcut, nn.Sequential):
                    parts["down_conv"] = conv2d_from(block.shortcut[0])
                    parts["down_bn"] = bn2d_from(block.shortcut[1])
                self.blocks.append(parts)

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(spectrogram.unsqueeze(1))))  # (B, C0, 1, F)
        for p in self.blocks:
            out = torch.relu(p["bn1"](p["conv1"](x)))
            out = p["bn2"](p["conv2"](out))
            residual = p["down_bn"](p["down_conv"](x)) if "down_conv" in p else x
            x = torch.relu(out + residual)
        return x.squeeze(2).transpose(1, 2)  # (B, T', C)


@pytest.mark.parametrize("factory,divisor,stride,width", [(davenet_v2, 32, 64, 128), (davenet_v1, 8, 16, 128)])
def test_davenet_conv1d_matches_literal_conv2d(factory, divisor, stride, width):
    torch.manual_seed(0)
    net = factory(n_mels=8, width_divisor=divisor)
    assert net.total_stride == stride and net.out_dim == width
    with torch.no_grad():  # non-trivial BatchNorm affine parameters and running statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(std=0.2)
                m.running_mean.normal_(std=0.2)
                m.running_var.uniform_(0.5, 2.0)
    literal = LiteralConv2dDAVEnet(net)
    frames = 3 * stride + 5  # not a multiple of the stride: the last token covers 5 frames
    spec = torch.randn(3, 8, frames)
    frame_mask = torch.zeros(3, frames)
    frame_mask[0] = 1
    frame_mask[1, : stride + 1] = 1  # one frame into the second window
    for mode in ("train", "eval"):
        net.train(mode == "train")
        literal.train(mode == "train")
        tokens, token_mask = net(spec, frame_mask)
        expected = literal(spec)
        assert tokens.shape == (3, math.ceil(frames / stride), width) == expected.shape
        torch.testing.assert_close(tokens, expected, atol=1e-4, rtol=1e-4)
    # token t is valid iff any frame of [t * stride, (t + 1) * stride) is valid
    expected_mask = torch.stack([
        torch.stack([frame_mask[b, t * stride:(t + 1) * stride].any() for t in range(tokens.shape[1])])
        for b in range(3)
    ])
    assert torch.equal(token_mask, expected_mask)
    assert token_mask[1].tolist() == [True, True, False, False]


class LiteralReferenceDAVEnetInit(nn.Module):
    """The reference's 2-D layers, built literally (stem ``Conv2d(1, C0, (n_mels, 1))``, ``(1 × 9)`` and
    ``(1 × 1)`` convolutions, BatchNorm2d) in the 1-D network's module order, initialised as the reference
    does: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` on every Conv2d, BatchNorm 1 / 0."""

    def __init__(self, net: DAVEnet):
        super().__init__()
        self.layers = nn.ModuleList()
        for layer in net.modules():
            if layer is net.stem_conv:
                self.layers.append(nn.Conv2d(1, layer.out_channels, (net.n_mels, 1), bias=False))
            elif isinstance(layer, nn.Conv1d):
                self.layers.append(nn.Conv2d(layer.in_channels, layer.out_channels, (1, layer.kernel_size[0]),
                                             stride=(1, layer.stride[0]), bias=False))
            elif isinstance(layer, nn.BatchNorm1d):
                self.layers.append(nn.BatchNorm2d(layer.num_features))
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(layer, nn.BatchNorm2d):
                nn.init.constant_(layer.weight, 1)
                nn.init.constant_(layer.bias, 0)


@pytest.mark.parametrize("factory,divisor", [(davenet_v2, 8), (davenet_v1, 4)])
def test_davenet_init_equals_the_reference_2d_layers(factory, divisor):
    # Issue 10 item 6: the stem's fan is that of Conv2d(1, C0, (40, 1)) = 40·C0, not the C0 of Conv1d(40, C0, 1)
    net = factory(n_mels=40, width_divisor=divisor)
    torch.manual_seed(4)
    net.init_weights()
    torch.manual_seed(4)
    literal = LiteralReferenceDAVEnetInit(net)  # built before drawing: its own default init is overwritten
    torch.manual_seed(4)
    for layer in literal.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    ours = [m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.BatchNorm1d))]
    assert len(ours) == len(literal.layers)
    for mine, theirs in zip(ours, literal.layers):
        torch.testing.assert_close(mine.weight.detach().reshape(theirs.weight.shape), theirs.weight.detach(),
                                   atol=0, rtol=1e-6)
        if isinstance(mine, nn.BatchNorm1d):
            assert torch.equal(mine.bias, theirs.bias)
    # statistics: the stem's weights have the He-normal spread of the 2-D fan 40 · C0
    stem = net.stem_conv.weight
    expected_std = math.sqrt(2.0 / (40 * stem.shape[0]))
    assert abs(stem.std().item() / expected_std - 1) < 0.05 and abs(stem.mean().item()) < 0.1 * expected_std


def test_model_init_gives_davenet_the_reference_fans():
    cfg = ModelConfig(embed_dim=32, num_heads=4, projection_dim=16, num_anchors=4, audio_width_divisor=4)
    torch.manual_seed(0)
    model = build_model(cfg)
    stem = model.audio_encoder.stem_conv.weight  # (32, 40, 1): 1280 draws
    assert abs(stem.std().item() / math.sqrt(2.0 / (40 * 32)) - 1) < 0.08
    conv = model.audio_encoder.stages[-1][0].conv1.weight
    assert abs(conv.std().item() / math.sqrt(2.0 / (9 * conv.shape[0])) - 1) < 0.08


def test_davenet_paper_widths():
    with torch.device("meta"):
        net = davenet_v2(40)
    widths = [block.conv2.out_channels for stage in net.stages for block in stage]
    assert widths == [128, 128, 256, 256, 512, 1024, 2048, 4096]
    assert net.stem_conv.weight.shape == (128, 40, 1)
    assert {m.kernel_size[0] for m in net.modules() if isinstance(m, nn.Conv1d)} == {1, 9}
    with pytest.raises(ConfigError, match="audio_width_divisor"):
        davenet_v2(40, width_divisor=3)


# ------------------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("variant", VARIANTS)
def test_output_dict_contract(variant):
    torch.manual_seed(0)
    cfg = small_config(variant=variant)
    model = build_model(cfg).eval()
    batch = make_batch(cfg)
    with torch.no_grad():
        out = model(batch)
    names = ["text", "video", "audio"]
    if variant == "everything_at_once":
        names += ["text_video", "text_audio", "video_audio"]
    assert set(out) == {"joint", "joint_normalized", "input_embedding", "input_anchor_scores",
                        "joint_anchor_scores", "nonempty"}
    assert list(out["joint"]) == names and list(out["joint_normalized"]) == names
    for name in names:
        assert out["joint"][name].shape == (4, 24)
        torch.testing.assert_close(out["joint_normalized"][name], F.normalize(out["joint"][name], dim=-1))
    for m in ("text", "video", "audio"):
        assert out["input_embedding"][m].shape == (4, 32)
        torch.testing.assert_close(out["input_embedding"][m].norm(dim=-1), torch.ones(4))
        z = model.anchors.input_anchors[m]
        assert z.shape == (8, 32) and model.anchors.joint_anchors[m].shape == (8, 24)
        expected = out["input_embedding"][m] @ (z / z.norm(dim=1, keepdim=True)).T
        torch.testing.assert_close(out["input_anchor_scores"][m], expected)
        assert list(out["joint_anchor_scores"][m]) == names
        for n in names:
            zh = model.anchors.joint_anchors[m]
            expected = out["joint_normalized"][n] @ (zh / zh.norm(dim=1, keepdim=True)).T
            torch.testing.assert_close(out["joint_anchor_scores"][m][n], expected)
            assert out["joint_anchor_scores"][m][n].abs().max() <= 1 + 1e-5
    assert out["nonempty"]["text"].tolist() == [True, False, True, True]
    assert out["nonempty"]["video"].tolist() == [True, True, False, True]
    assert out["nonempty"]["audio"].tolist() == [True, True, True, False]


def test_input_embedding_is_normalized_mean_of_projected_tokens():
    torch.manual_seed(0)
    cfg = small_config()
    model = build_model(cfg).eval()
    batch = make_batch(cfg)
    with torch.no_grad():
        out = model(batch)
        projected = model.token_norms["text"](model.token_projections["text"](batch["text"]))
    for b in range(4):
        valid = batch["text_mask"][b].bool()
        if valid.any():
            expected = F.normalize(projected[b, valid].mean(0), dim=0)
        else:  # empty: the masking token stands in
            expected = F.normalize(model.masking_tokens["text"].detach(), dim=0)
        torch.testing.assert_close(out["input_embedding"]["text"][b], expected, atol=1e-5, rtol=1e-5)


def test_everything_at_once_pair_is_mean_of_normalized_joint_pass_embeddings():
    torch.manual_seed(0)
    cfg = small_config(variant="everything_at_once")
    model = build_model(cfg).eval()
    batch = make_batch(cfg)
    with torch.no_grad():
        out = model(batch)
        tokens = model.embed_tokens(batch)
        t, v = tokens["text"], tokens["video"]
        # literal joint pass: concatenate, run the block, average each modality's outputs
        x = torch.cat([t.tokens, v.tokens], 1)
        mask = torch.cat([t.mask, v.mask], 1)
        y = literal_block(model.fusion.blocks[0], x, mask)
        lt = t.tokens.shape[1]
        pooled_t = (y[:, :lt] * t.mask[..., None]).sum(1) / t.mask.sum(1, keepdim=True)
        pooled_v = (y[:, lt:] * v.mask[..., None]).sum(1) / v.mask.sum(1, keepdim=True)
        expected = (F.normalize(model.projections["text"](pooled_t), dim=-1)
                    + F.normalize(model.projections["video"](pooled_v), dim=-1)) / 2
    torch.testing.assert_close(out["joint"]["text_video"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_does_not_change_outputs(variant):
    torch.manual_seed(0)
    cfg = small_config(variant=variant, use_positional_embedding=True)
    model = build_model(cfg).eval()
    batch = make_batch(cfg)
    padded = dict(batch)
    for m, extra in (("text", 3), ("video", 2)):
        x, mask = batch[m], batch[f"{m}_mask"]
        garbage = 100 * torch.randn(x.shape[0], extra, x.shape[2])
        padded[m] = torch.cat([x, garbage], 1)
        padded[f"{m}_mask"] = torch.cat([mask, torch.zeros(x.shape[0], extra)], 1)
        # garbage also in the padded positions inside the original length
        padded[m] = torch.where(padded[f"{m}_mask"][..., None] > 0, padded[m], 50 * torch.randn_like(padded[m]))
    with torch.no_grad():
        ref, out = model(batch), model(padded)
    for a, b in zip(all_output_tensors(ref), all_output_tensors(out)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)

    # audio: DAVEnet's receptive field crosses token borders (as in the reference), so padding
    # invariance holds from the audio tokens on: extra masked audio tokens change nothing
    with torch.no_grad():
        tokens = model.embed_tokens(batch)
        a = tokens["audio"]
        tokens_padded = dict(tokens)
        tokens_padded["audio"] = ModalityTokens(
            torch.cat([a.tokens, 100 * torch.randn(4, 3, a.tokens.shape[2])], 1),
            torch.cat([a.mask, torch.zeros(4, 3, dtype=torch.bool)], 1), a.nonempty)
        ref_joint, out_joint = model.joint_embeddings(tokens), model.joint_embeddings(tokens_padded)
    for name in ref_joint:
        torch.testing.assert_close(ref_joint[name], out_joint[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_all_empty_modalities_are_finite(variant):
    torch.manual_seed(0)
    cfg = small_config(variant=variant)
    model = build_model(cfg)
    batch = make_batch(cfg, batch_size=3)
    for m in ("text", "video", "audio"):
        batch[f"{m}_mask"] = torch.zeros_like(batch[f"{m}_mask"])
        batch[m] = torch.full_like(batch[m], float("nan")) if m != "audio" else batch[m]
    out = model(batch)
    for m in ("text", "video", "audio"):
        assert not out["nonempty"][m].any()
        expected = F.normalize(model.masking_tokens[m].detach(), dim=0).expand(3, -1)
        torch.testing.assert_close(out["input_embedding"][m].detach(), expected)
    # NaN text/video features behind an all-zero mask never reach the outputs
    for t in all_output_tensors(out):
        assert torch.isfinite(t).all()
    scalar_loss(out).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_zero_length_sequences_get_a_masking_token():
    torch.manual_seed(0)
    cfg = small_config(variant="everything_at_once")
    model = build_model(cfg).eval()
    batch = make_batch(cfg, text_len=0, frames=0)
    with torch.no_grad():
        out = model(batch)
    assert not out["nonempty"]["text"].any() and not out["nonempty"]["audio"].any()
    for t in all_output_tensors(out):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("variant,cls_and_positions", [("per_modality", False), ("everything_at_once", True),
                                                       ("per_modality", True)])
def test_gradients_reach_every_parameter(variant, cls_and_positions):
    torch.manual_seed(0)
    cfg = small_config(variant=variant, use_cls_token=cls_and_positions,
                       use_positional_embedding=cls_and_positions, audio_encoder="davenet_v1", audio_width_divisor=8)
    model = build_model(cfg).train()
    out = model(make_batch(cfg, frames=48))
    scalar_loss(out).backward()
    missing = [name for name, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing
    assert any(name.startswith("anchors.input_anchors") for name, _ in model.named_parameters())
    assert any(name.startswith("anchors.joint_anchors") for name, _ in model.named_parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_outputs_are_finite_and_close(dtype):
    torch.manual_seed(0)
    cfg = small_config(variant="everything_at_once")
    model = build_model(cfg).eval()
    batch = make_batch(cfg)
    model.train()
    with torch.autocast("cpu", dtype=dtype):
        out = model(batch)
    for m in ("text", "video", "audio"):
        assert out["input_anchor_scores"][m].dtype == torch.float32
        assert out["joint_normalized"][m].dtype == torch.float32
    assert all(torch.isfinite(t).all() for t in all_output_tensors(out))
    scalar_loss(out).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()  # the reference after the training step: the same BatchNorm running statistics
    with torch.no_grad():
        ref = model(batch)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        low = model(batch)
    for name in ref["joint_normalized"]:
        cosine = (ref["joint_normalized"][name] * low["joint_normalized"][name]).sum(-1)
        assert cosine.min() > 0.99, name


def test_modality_subset_text_video():
    torch.manual_seed(0)
    cfg = small_config(variant="everything_at_once", modalities=["video", "text"])
    model = build_model(cfg).eval()
    assert model.audio_encoder is None and model.modalities == ("text", "video")
    batch = make_batch(cfg)
    del batch["audio"], batch["audio_mask"]
    with torch.no_grad():
        out = model(batch)
    assert list(out["joint"]) == ["text", "video", "text_video"]
    assert set(out["joint_anchor_scores"]) == {"text", "video"}
    assert "audio" not in out["nonempty"]


def test_no_anchors_gives_empty_score_dicts():
    cfg = small_config(num_anchors=0)
    model = build_model(cfg).eval()
    assert not list(model.anchors.parameters())
    with torch.no_grad():
        out = model(make_batch(cfg))
    assert out["input_anchor_scores"] == {} and out["joint_anchor_scores"] == {}
    assert set(out["joint"]) == {"text", "video", "audio"}


def test_bad_batches_raise_errors_naming_the_key():
    cfg = small_config()
    model = build_model(cfg)
    batch = make_batch(cfg)
    missing = {k: v for k, v in batch.items() if k != "video_mask"}
    with pytest.raises(DataFormatError, match="video_mask"):
        model(missing)
    wrong = dict(batch, text=torch.randn(4, 5, 13))
    with pytest.raises(DataFormatError, match=r"'text'.*12"):
        model(wrong)
    wrong = dict(batch, audio=torch.randn(4, 9, 192))
    with pytest.raises(DataFormatError, match=r"'audio'.*8"):
        model(wrong)
    wrong = dict(batch, text_mask=torch.ones(4, 6))
    with pytest.raises(DataFormatError, match="text_mask"):
        model(wrong)
    positions = build_model(small_config(use_positional_embedding=True, max_positions=4))
    with pytest.raises(DataFormatError, match="max_positions"):
        positions(make_batch(cfg))


def test_paper_configuration_parameter_count():
    cfg = load_config("configs/paper/howto100m_resnet_tva.yaml").model
    with torch.device("meta"):
        model = build_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    # the reference also counts tensors its forward never uses; their sizes follow from the
    # paper configuration (D = embed_dim, K anchors, one transformer per modality)
    transformers = len(cfg.modalities) if cfg.variant == "per_modality" else 1
    unused_in_reference = {
        "final LayerNorm per transformer (weight, bias)": transformers * 2 * cfg.embed_dim,  # 24,576
        "DAVEnet input BatchNorm2d(1) (weight, bias)": 2,
        "anchor biases (one per anchor of the six sets)": 2 * len(cfg.modalities) * cfg.num_anchors,  # 384
        "frozen anc_dist vector (one per anchor of the six sets)": 2 * len(cfg.modalities) * cfg.num_anchors,  # 384
    }
    assert sum(unused_in_reference.values()) == 25_346
    assert total + sum(unused_in_reference.values()) == REFERENCE_PARAMETERS, total
    assert model.anchors.input_anchors["text"].shape == (64, 4096)
    assert model.anchors.joint_anchors["audio"].shape == (64, 6144)
    assert model.fusion["video"].blocks[0].attn.num_heads == 64


def test_model_summary_cli_prints_parameter_count():
    from multisk.cli import main

    overrides = ["model.embed_dim=64", "model.num_heads=4", "model.projection_dim=32", "model.audio_width_divisor=16"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["model-summary", *overrides]) == 0
    lines = stdout.getvalue().strip().splitlines()
    cfg = load_config(None, overrides).model
    expected = sum(p.numel() for p in build_model(cfg).parameters())
    assert lines[-1] == f"parameters: {expected}"
    assert any(line.startswith("fusion") for line in lines)
    assert parameter_table(build_model(cfg)).splitlines()[-1] == lines[-1]


# ------------------------------------------------------------------------------------------ memory options
def test_recomputed_davenet_equals_the_plain_one_including_batchnorm_statistics():
    # model.recompute_audio_encoder: only stage inputs are kept; the backward recomputation must give the
    # same gradients and must not update BatchNorm's running statistics a second time
    torch.manual_seed(0)
    plain = davenet_v2(n_mels=8, width_divisor=32)
    recomputed = davenet_v2(n_mels=8, width_divisor=32, recompute=True)
    recomputed.load_state_dict(plain.state_dict())
    spec = torch.randn(3, 8, 200)
    mask = torch.ones(3, 200)
    weights = torch.randn(3, 4, 128)
    results = []
    for net in (plain, recomputed):
        net.train()
        x = spec.clone().requires_grad_()
        for _ in range(2):
            tokens, _ = net(x, mask)
            (tokens * weights).sum().backward()
        results.append((tokens.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in net.named_parameters()},
                        {n: b.clone() for n, b in net.named_buffers()}))
    (t0, g0, p0, b0), (t1, g1, p1, b1) = results
    torch.testing.assert_close(t1, t0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g1, g0, atol=1e-6, rtol=1e-5)
    for name in p0:
        torch.testing.assert_close(p1[name], p0[name], atol=1e-6, rtol=1e-5, msg=name)
    for name in b0:
        torch.testing.assert_close(b1[name], b0[name], atol=1e-7, rtol=1e-6, msg=name)
    assert b1["stages.0.0.bn1.num_batches_tracked"].item() == 2
    with torch.no_grad():  # evaluation and no-grad forwards take the plain path
        torch.testing.assert_close(recomputed.eval()(spec, mask)[0], plain.eval()(spec, mask)[0])


def test_norm_outputs_in_autocast_dtype_only_changes_autocast_runs():
    torch.manual_seed(0)
    cfg = small_config(variant="per_modality")
    exact = build_model(cfg).train()
    light = build_model(replace(cfg, norm_outputs_in_autocast_dtype=True)).train()
    light.load_state_dict(exact.state_dict())
    batch = make_batch(cfg)
    out_exact, out_light = exact(batch), light(batch)
    for name in out_exact["joint_normalized"]:  # no autocast: the same module
        assert torch.equal(out_exact["joint_normalized"][name], out_light["joint_normalized"][name])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_exact, low_light = exact(batch), light(batch)
    # the layer itself: float32 in (as CUDA autocast's LayerNorm returns it), the autocast dtype out
    from multisk.models.layers import AutocastLayerNorm

    x = torch.randn(3, 32)
    for flag, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        norm = AutocastLayerNorm(32, autocast_output=flag)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = norm(x)
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), F.layer_norm(x, (32,), norm.weight, norm.bias, 1e-6), atol=1e-2, rtol=1e-2)
        assert torch.equal(norm(x), F.layer_norm(x, (32,), norm.weight, norm.bias, 1e-6))  # no autocast: LayerNorm
    for name in low_exact["joint_normalized"]:
        cosine = (low_exact["joint_normalized"][name] * low_light["joint_normalized"][name]).sum(-1)
        assert cosine.min() > 0.99, name
    scalar_loss(low_light).backward()
    assert all(torch.isfinite(p.grad).all() for p in light.parameters() if p.grad is not None)
