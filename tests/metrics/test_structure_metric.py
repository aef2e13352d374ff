"""k-NN Jaccard structure metric against a literal pure-Python implementation and its properties."""

import math

import numpy as np
import pytest
import torch

from multisk.metrics.structure import knn_jaccard, knn_jaccard_per_item, nearest_neighbours


def literal_neighbours(x, k):
    """Python lists only: cosine to every other row, sorted by (-similarity, index)."""
    rows = [list(map(float, r)) for r in x]
    norms = [math.sqrt(sum(v * v for v in r)) for r in rows]
    result = []
    for i, a in enumerate(rows):
        scored = []
        for j, b in enumerate(rows):
            if i == j:
                continue
            dot = sum(p * q for p, q in zip(a, b))
            denom = norms[i] * norms[j]
            scored.append((-(dot / denom if denom > 0 else 0.0), j))
        scored.sort()
        result.append([j for _, j in scored[:k]])
    return result


def literal_jaccard(x, y, k):
    nx, ny = literal_neighbours(x, k), literal_neighbours(y, k)
    values = [len(set(a) & set(b)) / len(set(a) | set(b)) for a, b in zip(nx, ny)]
    return values


@pytest.mark.parametrize("k", [1, 3, 7])
def test_matches_literal_implementation(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((40, 6))
    # a noisy linear image of x: partially preserved neighbourhoods, so the value is neither 0 nor 1
    y = x @ rng.standard_normal((6, 4)) + 0.5 * rng.standard_normal((40, 4))
    assert nearest_neighbours(x, k).tolist() == literal_neighbours(x, k)
    expected = literal_jaccard(x, y, k)
    np.testing.assert_allclose(knn_jaccard_per_item(x, y, k), expected, rtol=0, atol=1e-12)
    assert knn_jaccard(torch.from_numpy(x).float(), torch.from_numpy(y).float(), k) == pytest.approx(
        float(np.mean(expected)), abs=1e-6)
    assert 0.0 < knn_jaccard(x, y, k) < 1.0


def test_chunked_rows_agree_with_one_block(monkeypatch):
    import multisk.metrics.structure as structure

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 5)), rng.standard_normal((50, 8))
    whole = knn_jaccard_per_item(x, y, 4)
    monkeypatch.setattr(structure, "_CHUNK_ELEMENTS", 7 * 50)  # 7 rows per block
    np.testing.assert_array_equal(knn_jaccard_per_item(x, y, 4), whole)


def test_properties():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 8))
    rotation = np.linalg.qr(rng.standard_normal((8, 8)))[0]
    # cosine neighbourhoods survive rotation and per-row positive scaling exactly
    scaled = (x @ rotation) * rng.uniform(0.5, 3.0, size=(60, 1))
    assert knn_jaccard(x, scaled, 5) == pytest.approx(1.0)
    # an unrelated space keeps about the random overlap k / (2N)
    unrelated = np.mean([knn_jaccard(x, rng.standard_normal((60, 8)), 5) for _ in range(5)])
    assert unrelated < 0.2


def test_bad_input():
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="k: must be in"):
        knn_jaccard(x, x, 5)
    with pytest.raises(ValueError, match="rows"):
        knn_jaccard(np.ones((5, 3)), np.ones((6, 3)), 2)
    with pytest.raises(ValueError, match="NaN"):
        knn_jaccard(np.full((5, 3), np.nan), np.ones((5, 3)), 2)


def test_structure_preservation_of_a_split_and_its_report_line(tmp_path):
    from multisk.data.store.dataset import FeatureStoreDataset
    from multisk.data.store.pooled_features import pooled_features
    from multisk.metrics.structure import structure_preservation
    from multisk.evaluate.report import format_results_table
    from synthetic_store import write_synthetic_store

    root = write_synthetic_store(tmp_path / "store", n_train=8, n_test=40)
    dataset = FeatureStoreDataset(root, "test", max_tokens={"audio": 256})
    video, video_present = pooled_features(dataset.store, "video")
    text, text_present = pooled_features(dataset.store, "text")
    rng = np.random.default_rng(0)
    # the joint space = the frozen features themselves (rotated) keeps every neighbourhood; noise keeps few
    joint = {"video": torch.from_numpy(video @ np.linalg.qr(rng.standard_normal((16, 16)))[0]),
             "text": torch.from_numpy(rng.standard_normal((40, 8)))}
    nonempty = {"video": torch.from_numpy(video_present), "text": torch.from_numpy(text_present)}
    result = structure_preservation(dataset, joint, nonempty, k=5)
    assert result["video"]["knn_jaccard"] == pytest.approx(1.0)
    assert result["video"]["n_items"] == int(video_present.sum()) < 40  # items without a picture left out
    expected_text = knn_jaccard(text[text_present], joint["text"].numpy()[text_present], 5)
    assert result["text"]["knn_jaccard"] == pytest.approx(expected_text) and expected_text < 0.5
    assert "audio" not in result  # no joint audio embedding given
    line = format_results_table({"test": {"retrieval": {}, "structure": result}})
    assert "structure preservation (mean 5-NN Jaccard" in line and "video 1.000" in line
