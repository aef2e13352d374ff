"""Figures (evaluate/plot_primitives.py): valid PNGs, the numbers they draw, and clear errors on bad input."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from multisk.errors import DataFormatError
from multisk.metrics import direction_ranks
from multisk.evaluate import plot_primitives as plots
from multisk.evaluate.plot_primitives import (
    anchor_usage,
    pca_2d,
    plot_anchor_top_items,
    plot_anchor_usage,
    plot_embedding_map,
    plot_recall_curves,
    plot_training_curves,
    read_metrics_jsonl,
    top_items_per_anchor,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_size=(100, 100)):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib Figures the plot functions save, in order, so a test can read what was drawn."""
    figures = []
    save = plots._save

    def capture(fig, out_path):
        figures.append(fig)
        return save(fig, out_path)

    monkeypatch.setattr(plots, "_save", capture)
    return figures


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ----------------------------------------------------------------------------------------------
# training curves


def test_training_curves(tmp_path, drawn):
    records = [{"step": s, "loss": 5.0 / (s + 1), "loss_sspc": 0.1 * s, "lr": 1e-4} for s in range(0, 50, 5)]
    records.insert(3, {"step": 12, "eval/t2v+a_R1": 3.0})  # eval lines carry other keys
    metrics = write_jsonl(tmp_path / "metrics.jsonl", records)
    out = plot_training_curves(metrics, tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    assert_png(out)
    steps = list(range(0, 50, 5))
    loss_axes, sspc_axes = drawn[-1].axes  # one panel per key with "loss" in its name, sorted
    assert loss_axes.get_ylabel() == "loss" and sspc_axes.get_ylabel() == "loss_sspc"
    np.testing.assert_array_equal(loss_axes.lines[0].get_xdata(), steps)
    np.testing.assert_allclose(loss_axes.lines[0].get_ydata(), [5.0 / (s + 1) for s in steps])
    np.testing.assert_allclose(sspc_axes.lines[0].get_ydata(), [0.1 * s for s in steps])
    assert_png(plot_training_curves(metrics, tmp_path / "lr.png", keys=["lr"], log_y=True))
    (lr_axes,) = drawn[-1].axes
    assert lr_axes.get_yscale() == "log"
    np.testing.assert_allclose(lr_axes.lines[0].get_ydata(), [1e-4] * len(steps))


def test_training_curves_bad_inputs(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataFormatError, match="empty.jsonl: no metrics records"):
        plot_training_curves(empty, tmp_path / "x.png")
    no_step = write_jsonl(tmp_path / "nostep.jsonl", [{"step": 1, "loss": 1.0}, {"loss": 2.0}])
    with pytest.raises(DataFormatError, match=r"nostep.jsonl:2: field 'step'"):
        read_metrics_jsonl(no_step)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss"\n')
    with pytest.raises(DataFormatError, match=r"broken.jsonl:2: not valid JSON"):
        read_metrics_jsonl(broken)
    no_loss = write_jsonl(tmp_path / "noloss.jsonl", [{"step": 1, "lr": 1.0}])
    with pytest.raises(DataFormatError, match="no numeric key containing 'loss'"):
        plot_training_curves(no_loss, tmp_path / "x.png")
    with pytest.raises(DataFormatError, match=r"\['accuracy'\]"):
        plot_training_curves(no_loss, tmp_path / "x.png", keys=["accuracy"])
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "x.png")
    with pytest.raises(ValueError, match="PNG"):
        plot_training_curves(no_loss, tmp_path / "x.pdf", keys=["lr"])


# ----------------------------------------------------------------------------------------------
# anchor usage


def test_anchor_usage_counts_and_entropy():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 8))
    counts, normalized_entropy = anchor_usage(scores)
    literal = [0] * 8
    for row in scores:
        literal[int(np.argmax(row))] += 1
    assert counts.tolist() == literal
    p = [c / 200 for c in literal if c]
    assert normalized_entropy == pytest.approx(-sum(q * math.log(q) for q in p) / math.log(8))
    # uniform use -> 1; a single anchor used by everyone -> 0
    assert anchor_usage(np.eye(4))[1] == pytest.approx(1.0)
    collapsed = np.zeros((10, 4))
    collapsed[:, 2] = 1.0
    assert anchor_usage(torch.tensor(collapsed))[1] == 0.0
    with pytest.raises(ValueError, match="K >= 2"):
        anchor_usage(np.ones((3, 1)))


def test_plot_anchor_usage(tmp_path, drawn):
    rng = np.random.default_rng(1)
    scores = {
        "input": {m: rng.normal(size=(50, 16)) for m in ("text", "video", "audio")},
        "joint": {m: torch.randn(50, 16) for m in ("text", "video")},  # a missing panel is allowed
    }
    assert_png(plot_anchor_usage(scores, tmp_path / "usage.png", title="epoch 1"))
    panels = np.asarray(drawn[-1].axes).reshape(2, 3)
    for row, space in enumerate(scores):
        for col, modality in enumerate(("text", "video", "audio")):
            ax = panels[row, col]
            if modality not in scores[space]:
                assert not ax.axison and not ax.patches
                continue
            values = np.asarray(scores[space][modality])
            literal = np.bincount(values.argmax(axis=1), minlength=16)
            assert [bar.get_height() for bar in ax.patches] == literal.tolist()
            assert ax.get_title().endswith(f"H/log K = {anchor_usage(values)[1]:.3f}")
    with pytest.raises(ValueError, match="scores"):
        plot_anchor_usage({}, tmp_path / "usage.png")
    with pytest.raises(ValueError, match="scores"):
        plot_anchor_usage({"input": {"text": np.ones(5)}}, tmp_path / "usage.png")


# ----------------------------------------------------------------------------------------------
# recall curves


def test_recall_curves(tmp_path, drawn):
    rng = np.random.default_rng(2)
    base = rng.normal(size=(40, 8))
    embeddings = {m: base + rng.normal(size=(40, 8)) for m in ("text", "video", "audio")}
    ranks = direction_ranks(embeddings, directions=["t2v", "t2v+a", "v2t"])
    ranks["tied"] = np.array([0.0, 0.5, 0.5, 3.0])  # a tie of two at the top: rank 0.5, not a hit at K = 1
    assert_png(plot_recall_curves(ranks, tmp_path / "recall.png", max_k=30, complete_size=50))
    lines = {line.get_label(): line for line in drawn[-1].axes[0].lines}
    assert set(lines) == set(ranks)
    for label, direction in ranks.items():
        # docs/evaluation.md literally: R@1 counts rank exactly 0, R@K counts rank < K, over the complete size
        expected = [100.0 * sum(1 for r in direction if (r == 0 if k == 1 else r < k)) / 50 for k in range(1, 31)]
        np.testing.assert_array_equal(lines[label].get_xdata(), np.arange(1, 31))
        np.testing.assert_allclose(lines[label].get_ydata(), expected)
    assert lines["tied"].get_ydata()[0] == 2.0 and lines["tied"].get_ydata()[1] == 6.0
    with pytest.raises(ValueError, match="empty"):
        plot_recall_curves({}, tmp_path / "recall.png")
    with pytest.raises(ValueError, match=r"ranks\['t2v'\]"):
        plot_recall_curves({"t2v": np.zeros((2, 2))}, tmp_path / "recall.png")


# ----------------------------------------------------------------------------------------------
# embedding map


def test_pca_2d_matches_covariance_eigenvectors():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 5)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    points = pca_2d(x)
    centred = x - x.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centred.T))
    top_two = eigenvectors[:, np.argsort(eigenvalues)[::-1][:2]]
    reference = centred @ top_two
    for axis in range(2):  # components are defined up to sign
        sign = np.sign(points[:, axis] @ reference[:, axis])
        np.testing.assert_allclose(points[:, axis], sign * reference[:, axis], atol=1e-8)
    # variance of the first axis is the largest eigenvalue
    assert points[:, 0].var(ddof=1) == pytest.approx(eigenvalues.max())


def test_embedding_map(tmp_path, drawn):
    rng = np.random.default_rng(4)
    categories = ["animals"] * 10 + ["food"] * 10 + ["sports"] * 10
    centres = rng.normal(size=(3, 12)) * 4
    embeddings = np.repeat(centres, 10, axis=0) + rng.normal(size=(30, 12))
    assert_png(plot_embedding_map(torch.tensor(embeddings), categories, tmp_path / "pca.png"))
    points = pca_2d(embeddings)
    scatters = drawn[-1].axes[0].collections
    assert [c.get_label() for c in scatters] == ["animals", "food", "sports"]
    for c, start in zip(scatters, (0, 10, 20)):  # each category's points are its items' PCA coordinates
        np.testing.assert_allclose(c.get_offsets(), points[start:start + 10], rtol=1e-6)
    assert_png(plot_embedding_map(embeddings, categories, tmp_path / "tsne.png", method="tsne", tsne_iterations=250))
    assert [len(c.get_offsets()) for c in drawn[-1].axes[0].collections] == [10, 10, 10]
    with pytest.raises(ValueError, match="categories: 29 labels for 30 embeddings"):
        plot_embedding_map(embeddings, categories[:-1], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="method"):
        plot_embedding_map(embeddings, categories, tmp_path / "bad.png", method="umap")


# ----------------------------------------------------------------------------------------------
# anchors by their top items


def test_top_items_per_anchor():
    scores = np.array([[0.1, 0.9], [0.5, 0.2], [0.5, 0.8], [0.3, 0.1]])
    np.testing.assert_array_equal(top_items_per_anchor(scores, [0, 1], 3), [[1, 2, 3], [0, 2, 1]])


def test_anchor_top_items_with_pictures_and_captions(tmp_path, drawn):
    rng = np.random.default_rng(5)
    num_items = 12
    paths = []
    for i in range(num_items):
        if i % 4 == 3:
            svg = tmp_path / f"item{i}.svg"  # PIL cannot draw SVG: caption only
            svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>')
            paths.append(str(svg))
        elif i % 4 == 2:
            paths.append(None)  # no picture at all
        else:
            picture = tmp_path / f"item{i}.png"
            Image.fromarray(rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)).save(picture)
            paths.append(str(picture))
    captions = [f"a caption for item number {i} that is rather long" for i in range(num_items)]
    scores = rng.normal(size=(num_items, 6))
    out = plot_anchor_top_items(scores, tmp_path / "anchors.png", num_anchors=3, top=4,
                                image_paths=paths, captions=captions)
    assert_png(out)
    counts = np.bincount(scores.argmax(axis=1), minlength=6)
    shown = sorted(range(6), key=lambda a: (-counts[a], a))[:3]  # the 3 most used anchors
    panels = np.asarray(drawn[-1].axes).reshape(3, 4)
    for row, anchor in enumerate(shown):
        assert panels[row, 0].get_ylabel() == f"anchor {anchor}"
        best = sorted(range(num_items), key=lambda i: (-scores[i, anchor], i))[:4]
        for ax, item in zip(panels[row], best):
            assert ax.get_title().endswith(f"{scores[item, anchor]:.3f}")
            assert ax.get_title().startswith(captions[item][:20])
            if item % 4 in (0, 1):  # a PNG: its thumbnail is drawn
                with Image.open(paths[item]) as picture:
                    np.testing.assert_array_equal(ax.images[0].get_array(), np.asarray(picture.convert("RGBA")))
            else:  # SVG or no picture: the caption is written instead
                assert not ax.images and ax.texts[0].get_text().startswith("a caption for item")
    assert_png(plot_anchor_top_items(torch.tensor(scores), tmp_path / "plain.png", anchors=[0, 5], top=20))
    assert len(drawn[-1].axes) == 2 * num_items  # top is capped at the number of items

    with pytest.raises(ValueError, match="captions: 11 captions for 12"):
        plot_anchor_top_items(scores, tmp_path / "x.png", captions=captions[:-1])
    with pytest.raises(ValueError, match="image_paths: 2 paths for 12"):
        plot_anchor_top_items(scores, tmp_path / "x.png", image_paths=paths[:2])
    with pytest.raises(ValueError, match="anchors"):
        plot_anchor_top_items(scores, tmp_path / "x.png", anchors=[6])
    missing = list(paths)
    missing[int(np.argmax(scores[:, 0]))] = str(tmp_path / "gone.png")
    with pytest.raises(FileNotFoundError, match="gone.png"):
        plot_anchor_top_items(scores, tmp_path / "x.png", anchors=[0], image_paths=missing)
