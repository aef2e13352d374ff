"""Retrieval in every direction (metrics/directions.py) and report tables (evaluate/report.py)."""

import json

import numpy as np
import pytest
import torch

from multisk.errors import DataFormatError
from multisk.metrics import available_directions, direction_ranks, evaluate_directions
from multisk.evaluate import (
    comparison_table,
    format_markdown_table,
    format_results_table,
    format_text_table,
    read_metrics_json,
    results_to_markdown,
    write_metrics_json,
)
from multisk.metrics import retrieval_metrics

SINGLE = ["t2v", "v2t", "t2a", "a2t", "v2a", "a2v"]
LATE = ["t2v+a", "v+a2t", "v2t+a", "t+a2v", "a2t+v", "t+v2a"]


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def correlated_embeddings(n=24, dim=16, noise=1.5, seed=0):
    """Text/video/audio embeddings sharing a per-item signal, so retrieval is far from chance."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, dim))
    return {m: base + noise * rng.normal(size=(n, dim)) for m in ("text", "video", "audio")}


def literal_rank(row, positive_columns):
    best = max(row[j] for j in positive_columns)
    kept = sorted([row[j] for j in range(len(row)) if j not in positive_columns] + [best], reverse=True)
    positions = [i for i, v in enumerate(kept) if v == best]
    return sum(positions) / len(positions)


def test_available_directions_follow_the_embeddings():
    assert available_directions(["text", "video"]) == ["t2v", "v2t"]
    assert available_directions(["text", "video", "audio"]) == SINGLE + LATE
    assert available_directions(["text", "video", "audio", "video_audio"]) == SINGLE + LATE + ["t2va", "va2t"]
    assert available_directions(["text", "audio_video"])[-2:] == ["t2va", "va2t"]
    with pytest.raises(ValueError, match="unknown embedding name 'pictures'"):
        available_directions(["text", "pictures"])


def test_single_and_late_fusion_directions_match_numpy():
    embeddings = correlated_embeddings()
    results = evaluate_directions(embeddings)
    assert list(results) == SINGLE + LATE
    t, v, a = (unit(embeddings[m]) for m in ("text", "video", "audio"))
    late_va = (v + a) / 2  # the reference's late fusion: (n(v) + n(a)) / 2; cosine ignores its scale
    expected = {
        "t2v": t @ v.T,
        "v2t": v @ t.T,
        "a2v": a @ v.T,
        "t2v+a": t @ unit(late_va).T,
        "v+a2t": unit(late_va) @ t.T,
        "t+v2a": unit((t + v) / 2) @ a.T,
    }
    for direction, sims in expected.items():
        assert results[direction] == pytest.approx(retrieval_metrics(sims)), direction
    # the shared signal makes late fusion a useful query: far better than chance (R@1 ~ 4%)
    assert results["t2v+a"]["R1"] > 20


def test_scale_and_input_type_do_not_matter():
    embeddings = correlated_embeddings(seed=3)
    rng = np.random.default_rng(0)
    scaled = {k: torch.tensor(v * rng.uniform(0.1, 10, size=(v.shape[0], 1)), dtype=torch.float32)
              for k, v in embeddings.items()}
    got, expected = evaluate_directions(scaled), evaluate_directions(embeddings)
    assert list(got) == list(expected)
    for direction in expected:
        assert got[direction] == pytest.approx(expected[direction]), direction


def test_model_fused_pair_is_used_as_given():
    embeddings = correlated_embeddings(seed=4)
    embeddings["video_audio"] = np.random.default_rng(9).normal(size=(24, 16))
    results = evaluate_directions(embeddings)
    sims = unit(embeddings["text"]) @ unit(embeddings["video_audio"]).T
    assert results["t2va"] == pytest.approx(retrieval_metrics(sims))
    assert results["va2t"] == pytest.approx(retrieval_metrics(sims.T))
    assert "v2ta" not in results


def test_missing_modality_excluded_on_the_side_that_needs_it():
    embeddings = correlated_embeddings(n=20, seed=5)
    has_audio = np.ones(20, dtype=bool)
    has_audio[[1, 4, 7, 8, 15]] = False
    ranks = direction_ranks(embeddings, nonempty={"audio": has_audio})
    t, v, a = (unit(embeddings[m]) for m in ("text", "video", "audio"))
    items_with_audio = np.flatnonzero(has_audio)
    # t2a: queries and gallery are the 15 items with audio
    sims = t[items_with_audio] @ a[items_with_audio].T
    np.testing.assert_array_equal(ranks["t2a"], [literal_rank(list(r), {i}) for i, r in enumerate(sims)])
    # a2t: 15 audio queries against all 20 texts (items without audio still distract)
    sims = a[items_with_audio] @ t.T
    expected = [literal_rank(list(sims[i]), {int(item)}) for i, item in enumerate(items_with_audio)]
    np.testing.assert_array_equal(ranks["a2t"], expected)
    # t2v is untouched
    assert ranks["t2v"].shape == (20,)
    # v+a2t: fused side needs audio too
    assert ranks["v+a2t"].shape == (15,)

    results = evaluate_directions(embeddings, nonempty={"audio": has_audio}, complete_size=20)
    assert results["t2a"]["n_queries"] == 15
    assert results["t2a"]["R1"] == pytest.approx(100 * np.count_nonzero(ranks["t2a"] == 0) / 20)

    nothing = evaluate_directions(embeddings, nonempty={"audio": np.zeros(20, dtype=bool)})
    assert list(nothing) == ["t2v", "v2t"]  # every direction involving audio has no valid query


def test_groups_make_every_member_a_positive():
    text = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # item 0's text is closest to item 1's video; items 0 and 1 share a caption group
    video = np.array([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0], [0.0, 0.1, 1.0]])
    embeddings = {"text": text, "video": video}
    without = direction_ranks(embeddings)["t2v"]
    with_groups = direction_ranks(embeddings, groups=np.array([5, 5, 2]))["t2v"]
    assert without[0] == 1.0 and with_groups[0] == 0.0
    # matches retrieval_metrics with the explicit positives matrix
    groups = np.array([0, 0, 1, 2, 2, 2, 3])
    embeddings = correlated_embeddings(n=7, seed=6)
    positives = groups[:, None] == groups[None, :]
    sims = unit(embeddings["video"]) @ unit(embeddings["text"]).T
    got = evaluate_directions(embeddings, groups=groups)["v2t"]
    assert got == pytest.approx(retrieval_metrics(sims, positives=positives))


def test_direction_selection_and_bad_inputs():
    embeddings = correlated_embeddings(n=6)
    assert list(evaluate_directions(embeddings, directions=["t2v+a"])) == ["t2v+a"]
    with pytest.raises(ValueError, match="unknown"):
        evaluate_directions(embeddings, directions=["t2x"])
    with pytest.raises(ValueError, match="need embeddings"):
        evaluate_directions({"text": embeddings["text"], "video": embeddings["video"]}, directions=["t2a"])
    with pytest.raises(ValueError, match=r"embeddings\['video'\]: 5 rows"):
        evaluate_directions({"text": np.ones((6, 4)), "video": np.ones((5, 4))})
    with pytest.raises(ValueError, match=r"nonempty\['audio'\]"):
        evaluate_directions(embeddings, nonempty={"audio": np.ones(5, dtype=bool)})
    with pytest.raises(ValueError, match="groups"):
        evaluate_directions(embeddings, groups=np.zeros(6))
    with pytest.raises(ValueError, match="complete_dataset_size"):
        evaluate_directions(embeddings, complete_size=3)


# ----------------------------------------------------------------------------------------------
# report


def example_table():
    return {
        "t2v": {"R1": 12.5, "R5": 30.0, "R10": 41.25, "R50": 80.0, "MedR": 15.5, "MeanR": 40.123, "n_queries": 968},
        "t2v+a": {"R1": 20.0, "R5": 45.0, "R10": 55.0, "R50": 90.0, "MedR": 8.0, "MeanR": 22.0, "n_queries": 968},
    }


def test_text_table_is_fixed_width():
    text = format_text_table(example_table(), title="MSR-VTT")
    lines = text.splitlines()
    assert lines[0] == "MSR-VTT"
    assert lines[1].split() == ["direction", "R1", "R5", "R10", "R50", "MedR", "MeanR", "n_queries"]
    assert len({len(line) for line in lines[1:]}) == 1  # every row has the same width
    assert lines[3].split() == ["t2v", "12.50", "30.00", "41.25", "80.00", "15.50", "40.12", "968"]
    flat = format_text_table(retrieval_metrics(np.eye(3)), columns=["R1", "MedR"])
    assert flat.splitlines()[2].split() == ["100.00", "1.00"]


def test_markdown_table():
    lines = format_markdown_table(example_table(), columns=["R1", "MedR"]).splitlines()
    assert lines[0] == "| direction | R1 | MedR |"
    assert lines[1] == "|:--|--:|--:|"
    assert lines[3] == "| t2v+a | 20.00 | 8.00 |"
    assert len(lines) == 4


def test_json_round_trip(tmp_path):
    table = example_table()
    table["t2v"]["R1"] = np.float64(12.5)
    table["t2v"]["n_queries"] = np.int64(968)
    path = write_metrics_json({"test": table}, tmp_path / "sub" / "metrics.json")
    assert read_metrics_json(path) == {"test": example_table()}
    assert isinstance(json.loads(path.read_text())["test"]["t2v"]["n_queries"], int)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="bad.json"):
        read_metrics_json(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_metrics_json(tmp_path / "missing.json")


def test_comparison_table():
    runs = {
        "baseline": {"in_domain": example_table(), "out_of_domain": {"t2v": example_table()["t2v"]}},
        "sspc": {"in_domain": example_table()},
    }
    markdown = comparison_table(runs, directions=["t2v+a"], columns=["R1", "MedR"]).splitlines()
    assert markdown[0] == "| run | split | t2v+a R1 | t2v+a MedR |"
    assert markdown[2] == "| baseline | in_domain | 20.00 | 8.00 |"
    assert markdown[3] == "| baseline | out_of_domain | - | - |"  # direction missing in that split
    assert markdown[4] == "| sspc | in_domain | 20.00 | 8.00 |"
    text = comparison_table(runs, style="text").splitlines()
    assert len({len(line) for line in text}) == 1
    assert text[2].split()[:4] == ["baseline", "in_domain", "20.00", "45.00"]
    with pytest.raises(ValueError, match="style"):
        comparison_table(runs, style="html")
    with pytest.raises(ValueError, match="runs"):
        comparison_table({})


def test_results_report_per_split():
    results = {
        "test_in_domain": {
            "retrieval": example_table(),
            "n_items": 968,
            "complete_size": 1000,
            "classification": {"top1": 40.0, "top5": 75.5, "mean_per_class": 38.25, "n_classes": 15},
        },
        "test_out_of_domain": {"retrieval": {}, "n_items": 3},
    }
    text = format_results_table(results).splitlines()
    assert text[0] == "test_in_domain (968 items, R@k over the complete size 1000)"
    assert text[3].split()[:2] == ["t2v", "12.50"]
    assert text[5] == "zero-shot classification: top1 40.00, top5 75.50, mean_per_class 38.25 (15 classes)"
    assert text[7] == "test_out_of_domain (3 items)"
    assert text[8] == "(no retrieval direction)"
    markdown = results_to_markdown(results).splitlines()
    assert markdown[0] == "## test_in_domain (968 items, R@k over the complete size 1000)"
    assert markdown[2].startswith("| direction | R1 |")
    assert markdown[5].startswith("| t2v+a | 20.00 |")
    assert "## test_out_of_domain (3 items)" in markdown
    with pytest.raises(ValueError, match="results"):
        format_results_table({})


# ----------------------------------------------------------------------------------------------
# what a split allows: empty modalities through the masking token or excluded, skipped directions


def split_embeddings(rng, n=6, video_missing=(2,), audio_present=False, with_audio=True):
    names = ("text", "video", "audio") if with_audio else ("text", "video")
    joint = {m: torch.tensor(unit(rng.normal(size=(n, 8)))) for m in names}
    nonempty = {"text": torch.ones(n, dtype=torch.bool), "video": torch.ones(n, dtype=torch.bool)}
    nonempty["video"][list(video_missing)] = False
    if with_audio:
        nonempty["audio"] = torch.full((n,), audio_present)
    return {"joint": joint, "nonempty": nonempty}


def test_score_retrieval_masking_token_scores_every_item_and_skips_absent_modalities():
    from multisk.evaluate.pipeline import score_retrieval

    emb = split_embeddings(np.random.default_rng(11))
    retrieval, skipped = score_retrieval(emb, mode="masking_token")
    assert set(retrieval) == {"t2v", "v2t"}  # no item has audio: nothing with audio can be retrieved
    sims = emb["joint"]["text"] @ emb["joint"]["video"].T  # every item, the empty video's embedding included
    assert retrieval["t2v"] == pytest.approx(retrieval_metrics(sims))
    assert retrieval["v2t"] == pytest.approx(retrieval_metrics(sims.T))
    assert skipped["t2a"] == skipped["t2v+a"] == skipped["a2v"] == "no item of this split has audio"
    assert not any(label in skipped for label in ("t2va", "va2t"))  # no model-fused pairs: not listed
    assert set(retrieval) | set(skipped) == set(SINGLE + LATE)


def test_score_retrieval_excluded_leaves_items_without_the_modality_out():
    from multisk.evaluate.pipeline import score_retrieval

    emb = split_embeddings(np.random.default_rng(12), video_missing=(2, 4))
    retrieval, _ = score_retrieval(emb, mode="excluded")
    keep = [0, 1, 3, 5]
    sims = emb["joint"]["text"][keep] @ emb["joint"]["video"][keep].T
    assert retrieval["t2v"] == pytest.approx(retrieval_metrics(sims))
    # a model without an audio branch: those directions are skipped for that reason
    _, skipped = score_retrieval(split_embeddings(np.random.default_rng(13), with_audio=False), mode="excluded")
    assert skipped["t2a"] == "the model has no audio branch"


def test_results_report_shows_inputs_classification_per_input_and_skips():
    entry = {
        "n_items": 968, "complete_size": 1000,
        "inputs": {"text_tokens": 20, "video_tokens": 48, "audio_frames": 3072,
                   "crop": {"video": "start", "audio": "start", "text": "start"},
                   "window_from": "recorded in the store at conversion", "empty_modalities": "masking_token",
                   "precision": "fp32", "items_with": {"text": 965, "video": 967, "audio": 965}},
        "retrieval": example_table(),
        "classification": {"audio": {"top1": 40.0, "top5": 75.5, "mean_per_class": 38.25, "n_items": 10,
                                     "classes": 15}},
        "skipped": {"directions": {"t2v": "no item of this split has video", "v2t": "no item of this split has video"},
                    "classification": {"video": "no item with a category has video"}},
    }
    text = format_results_table({"msrvtt": entry}).splitlines()
    assert text[1] == ("inputs: video 48 tokens, audio 3072 frames, text 20 tokens (first, recorded in the store at "
                       "conversion); empty modalities: masking_token; precision fp32; items with text 965, video 967, "
                       "audio 965")
    assert "zero-shot classification (audio): top1 40.00, top5 75.50, mean_per_class 38.25 (15 classes, 10 items)" in text
    assert "skipped directions: t2v, v2t (no item of this split has video)" in text
    assert "skipped classification: video (no item with a category has video)" in text
    markdown = results_to_markdown({"msrvtt": entry})
    assert "- skipped directions: t2v, v2t (no item of this split has video)" in markdown
    assert "empty modalities: masking_token" in markdown


def test_fixed_size_batches_recut_any_stream_into_equal_batches():
    from multisk.data.store.evaluation_batches import fixed_size_batches

    def stream(sizes):
        start = 0
        for n in sizes:
            idx = torch.arange(start, start + n)
            yield {"x": idx.float()[:, None].repeat(1, 3), "index": idx, "id": [f"i{i}" for i in idx.tolist()]}
            start += n

    for sizes in ([7, 7, 7, 2], [64], [3, 1, 20, 5], [16, 16]):
        chunks = list(fixed_size_batches(stream(sizes), 16))
        total = sum(sizes)
        assert all(len(b["id"]) == 16 and b["x"].shape == (16, 3) for b, _ in chunks)
        real = torch.cat([b["index"][:n] for b, n in chunks])
        assert real.tolist() == list(range(total))                       # every item once, in order
        assert [n for _, n in chunks][:-1] == [16] * (len(chunks) - 1)
        last, n = chunks[-1]
        assert (last["index"][n:] == total - 1).all() and last["id"][n:] == [f"i{total - 1}"] * (16 - n)
