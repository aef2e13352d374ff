"""Retrieval metrics (docs/evaluation.md) and zero-shot classification against hand-computed values and a
literal, loop-based reference implementation."""

import numpy as np
import pytest
import torch

from multisk.metrics import (
    metrics_from_ranks,
    recall_at_k,
    recall_curve,
    retrieval_metrics,
    retrieval_ranks,
    zero_shot_classification,
)


# ----------------------------------------------------------------------------------------------
# literal reference: sort each row, find the positions of every entry equal to the score that
# counts, average them. Written independently of the counting formula used by the library.


def literal_rank(row, positive_columns):
    best_column = max(positive_columns, key=lambda j: row[j])
    best_score = row[best_column]
    kept = [row[j] for j in range(len(row)) if j not in positive_columns] + [best_score]
    ordered = sorted(kept, reverse=True)
    positions = [i for i, value in enumerate(ordered) if value == best_score]
    return sum(positions) / len(positions)


def literal_metrics(sims, positives=None, complete=None):
    sims = np.asarray(sims, dtype=np.float64)
    ranks = []
    for q in range(sims.shape[0]):
        columns = {q} if positives is None else {j for j in range(sims.shape[1]) if positives[q, j]}
        ranks.append(literal_rank(list(sims[q]), columns))
    denominator = complete if complete is not None else len(ranks)
    result = {}
    for k in (1, 5, 10, 50):
        hits = 0
        for r in ranks:
            if (k == 1 and r == 0) or (k > 1 and r < k):
                hits += 1
        result[f"R{k}"] = 100.0 * hits / denominator
    shifted = sorted(r + 1 for r in ranks)
    middle = len(shifted) // 2
    result["MedR"] = shifted[middle] if len(shifted) % 2 else (shifted[middle - 1] + shifted[middle]) / 2
    result["MeanR"] = sum(shifted) / len(shifted)
    result["n_queries"] = len(ranks)
    return result, ranks


def assert_metrics_equal(got, expected):
    assert set(got) == set(expected)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


# ----------------------------------------------------------------------------------------------
# hand-computed cases


def test_hand_computed_ties_and_tied_top_is_not_r1():
    sims = np.array(
        [
            [1.0, 1.0, 0.0],  # true item tied with one other at the top -> rank 0.5
            [0.0, 1.0, 2.0],  # one item above -> rank 1
            [0.0, 0.0, 1.0],  # alone at the top -> rank 0
        ]
    )
    np.testing.assert_array_equal(retrieval_ranks(sims), [0.5, 1.0, 0.0])
    metrics = retrieval_metrics(sims)
    assert metrics["R1"] == pytest.approx(100 / 3)  # the tied top does not count
    assert metrics["R5"] == 100.0 and metrics["R10"] == 100.0 and metrics["R50"] == 100.0
    assert metrics["MedR"] == 1.5  # median of (1.5, 2, 1)
    assert metrics["MeanR"] == pytest.approx(1.5)
    assert metrics["n_queries"] == 3


def test_tie_of_three_and_tie_below():
    sims = np.array(
        [
            [5.0, 5.0, 5.0, 1.0],  # three-way tie at the top: positions 0,1,2 -> rank 1
            [9.0, 3.0, 3.0, 9.0],  # two above, tie with one other -> positions 2,3 -> 2.5
        ]
    )
    np.testing.assert_array_equal(retrieval_ranks(sims), [1.0, 2.5])
    metrics = retrieval_metrics(sims)
    assert metrics["R1"] == 0.0
    assert metrics["R5"] == 100.0
    assert metrics["MedR"] == pytest.approx(2.75)


def test_rank_just_below_k_counts_and_r1_needs_exact_zero():
    ranks = np.array([0.0, 0.5, 4.5, 5.0, 9.5, 10.0])
    assert recall_at_k(ranks, 1) == pytest.approx(100 / 6)
    assert recall_at_k(ranks, 5) == pytest.approx(300 / 6)  # 0, 0.5, 4.5
    assert recall_at_k(ranks, 10) == pytest.approx(500 / 6)
    curve = recall_curve(ranks, [1, 2, 5, 10, 11])
    np.testing.assert_allclose(curve, np.array([1, 2, 3, 5, 6]) * 100 / 6)


def test_complete_dataset_size_counts_missing_items_as_misses():
    sims = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.5]])  # ranks 0, 0, 1
    metrics = retrieval_metrics(sims, complete_dataset_size=4)
    assert metrics["R1"] == 50.0  # 2 of 4
    assert metrics["R5"] == 75.0  # 3 of 4
    assert metrics["MedR"] == 1.0  # over the 3 present queries: (1, 1, 2)
    assert metrics["MeanR"] == pytest.approx(4 / 3)
    assert metrics["n_queries"] == 3
    with pytest.raises(ValueError, match="complete_dataset_size"):
        retrieval_metrics(sims, complete_dataset_size=2)


def test_positives_best_positive_ranked_among_negatives():
    sims = np.array(
        [
            [0.9, 0.95, 0.95, 0.5],  # positives {0,1}: best 0.95 ties one negative -> 0.5
            [0.2, 0.9, 0.8, 0.1],    # positives {0,1}: best 0.9 above all negatives -> 0
            [0.1, 0.3, 0.2, 0.4],    # positives {0,2}: best 0.2, negatives 0.3, 0.4 above -> 2
        ]
    )
    positives = np.array(
        [[True, True, False, False], [True, True, False, False], [True, False, True, False]]
    )
    np.testing.assert_array_equal(retrieval_ranks(sims, positives=positives), [0.5, 0.0, 2.0])
    metrics = retrieval_metrics(sims, positives=positives)
    assert metrics["R1"] == pytest.approx(100 / 3)
    assert metrics["MedR"] == 1.5
    # other positives tied with the best one are removed, not averaged in
    tied_positives = np.array([[0.7, 0.7, 0.7, 0.1]])
    assert retrieval_ranks(tied_positives, positives=np.array([[True, True, True, False]]))[0] == 0.0


def test_identity_positives_equal_diagonal():
    rng = np.random.default_rng(1)
    sims = rng.integers(0, 4, size=(7, 7)).astype(np.float64)
    np.testing.assert_array_equal(
        retrieval_ranks(sims), retrieval_ranks(sims, positives=np.eye(7, dtype=bool))
    )


def test_more_gallery_than_queries_uses_leading_diagonal():
    sims = np.array([[0.1, 0.5, 0.9], [0.2, 0.8, 0.8]])
    np.testing.assert_array_equal(retrieval_ranks(sims), [2.0, 0.5])


# ----------------------------------------------------------------------------------------------
# against the literal reference on random matrices with many forced ties


@pytest.mark.parametrize("seed", range(6))
def test_matches_literal_reference_with_forced_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    levels = int(rng.integers(2, 6))  # few distinct values: ties everywhere
    sims = rng.integers(0, levels, size=(n, n)) / levels
    expected, expected_ranks = literal_metrics(sims)
    np.testing.assert_array_equal(retrieval_ranks(sims), expected_ranks)
    assert_metrics_equal(retrieval_metrics(sims), expected)
    complete = n + int(rng.integers(0, 5))
    assert_metrics_equal(
        retrieval_metrics(sims, complete_dataset_size=complete), literal_metrics(sims, complete=complete)[0]
    )
    # torch float32 input, tiny chunks: same ranks
    sims32 = torch.tensor(sims, dtype=torch.float32)
    np.testing.assert_array_equal(
        retrieval_ranks(sims32, chunk_size=3), literal_metrics(sims32.double().numpy())[1]
    )


@pytest.mark.parametrize("seed", range(6))
def test_positives_match_literal_reference(seed):
    rng = np.random.default_rng(100 + seed)
    num_queries, gallery = int(rng.integers(4, 30)), int(rng.integers(30, 45))
    sims = rng.integers(0, 4, size=(num_queries, gallery)) / 4.0
    groups = rng.integers(0, max(2, gallery // 3), size=gallery)
    # each query owns gallery item q and everything in q's group
    positives = groups[:num_queries, None] == groups[None, :]
    expected, expected_ranks = literal_metrics(sims, positives=positives)
    np.testing.assert_array_equal(retrieval_ranks(sims, positives=positives, chunk_size=5), expected_ranks)
    assert_metrics_equal(retrieval_metrics(sims, positives=torch.from_numpy(positives)), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
def test_low_precision_and_integer_scores_rank_like_float64(dtype):
    rng = np.random.default_rng(11)
    values = rng.integers(-3, 4, size=(9, 12))  # exactly representable in every dtype tested
    positives = rng.random((9, 12)) < 0.2
    positives[np.arange(9), np.arange(9)] = True
    sims = torch.tensor(values).to(dtype)
    reference = values.astype(np.float64)
    np.testing.assert_array_equal(retrieval_ranks(sims), literal_metrics(reference)[1])
    np.testing.assert_array_equal(
        retrieval_ranks(sims, positives=positives), literal_metrics(reference, positives=positives)[1]
    )


def test_float64_distinguishes_close_scores():
    sims = np.array([[1.0, 1.0 + 1e-12], [0.0, 1.0]])
    np.testing.assert_array_equal(retrieval_ranks(sims), [1.0, 0.0])


# ----------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(np.zeros(4))
    with pytest.raises(ValueError, match="queries <= gallery"):
        retrieval_metrics(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        retrieval_metrics(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="query 1, item 0"):
        retrieval_metrics(torch.tensor([[1.0, 0.0], [-float("inf"), 1.0]]))
    with pytest.raises(ValueError, match="positives: shape"):
        retrieval_metrics(np.zeros((2, 2)), positives=np.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError, match="bool"):
        retrieval_metrics(np.zeros((2, 2)), positives=np.ones((2, 2)))
    with pytest.raises(ValueError, match="no positive"):
        retrieval_metrics(np.zeros((2, 2)), positives=np.array([[True, False], [False, False]]))
    with pytest.raises(TypeError, match="sims"):
        retrieval_metrics([[1.0]])
    with pytest.raises(ValueError, match="no queries"):
        metrics_from_ranks(np.array([]))


# ----------------------------------------------------------------------------------------------
# zero-shot classification


def test_zero_shot_classification_hand_computed():
    classes = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    items = np.array(
        [
            [2.0, 0.1],   # class 0, correct
            [0.1, 3.0],   # class 1, correct
            [-1.0, 0.2],  # class 2, correct
            [1.0, 0.0],   # labelled 1, predicted 0 (class 1 is second)
        ]
    )
    labels = np.array([0, 1, 2, 1])
    result = zero_shot_classification(items, classes, labels)
    assert result["top1"] == 75.0
    assert result["top5"] == 100.0  # 3 classes: top-5 covers all
    # per class: class 0: 1/1, class 1: 1/2, class 2: 1/1 -> mean 5/6
    assert result["mean_per_class"] == pytest.approx(100 * 5 / 6)
    assert result["n_items"] == 4 and result["n_classes"] == 3


def test_zero_shot_tie_with_duplicate_class_is_not_top1():
    classes = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # classes 0 and 1 identical in direction
    result = zero_shot_classification(np.array([[1.0, 0.0]]), classes, np.array([0]))
    assert result["top1"] == 0.0 and result["top5"] == 100.0


def test_zero_shot_matches_argsort_reference():
    rng = np.random.default_rng(7)
    items, classes = rng.normal(size=(60, 16)), rng.normal(size=(12, 16))
    labels = rng.integers(0, 12, size=60)
    sims = (items / np.linalg.norm(items, axis=1, keepdims=True)) @ (
        classes / np.linalg.norm(classes, axis=1, keepdims=True)
    ).T
    order = np.argsort(-sims, axis=1)
    top1 = order[:, 0] == labels
    top5 = np.array([labels[i] in order[i, :5] for i in range(60)])
    per_class = [top1[labels == c].mean() for c in np.unique(labels)]
    result = zero_shot_classification(torch.tensor(items), torch.tensor(classes), torch.tensor(labels))
    assert result["top1"] == pytest.approx(100 * top1.mean(), abs=1e-9)
    assert result["top5"] == pytest.approx(100 * top5.mean(), abs=1e-9)
    assert result["mean_per_class"] == pytest.approx(100 * np.mean(per_class), abs=1e-9)


def test_zero_shot_bad_inputs():
    with pytest.raises(ValueError, match="width"):
        zero_shot_classification(np.zeros((2, 3)), np.zeros((2, 4)), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels: expected shape"):
        zero_shot_classification(np.ones((2, 3)), np.ones((2, 3)), np.array([0]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        zero_shot_classification(np.ones((2, 3)), np.ones((2, 3)), np.array([0, 2]))
    with pytest.raises(ValueError, match="integer"):
        zero_shot_classification(np.ones((2, 3)), np.ones((2, 3)), np.array([0.0, 1.0]))
