"""Loaders of the field's formats (SPEC §6), word vectors, clip sampling (SPEC §5), conversion.

Fixtures are written in exactly the SPEC §6 layouts (keys, dtypes, shapes, file naming) in tmp_path.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from multisk.data.encoders import word_vectors as wv
from multisk.data.formats.arrays import combine_video_features
from multisk.data.formats.howto100m import (
    CaptionSegments,
    HowTo100MDataset,
    grow_segment,
    sample_clip,
)
from multisk.data.encoders.text import encode_text, tokenize

VOCAB = ["a", "man", "is", "cooking", "pasta", "in", "the", "kitchen", "Dog", "runs", "fast", "don't",
         "stir", "sauce", "add", "salt", "now", "boil", "water", "chop", "onions", "slowly", "then", "serve"]
DIM = 8


# converted word vectors go to a per-test cache (tests/conftest.py), not ~/.cache
pytestmark = pytest.mark.usefixtures("isolated_word_vector_cache")


def make_keyed_vectors(seed: int = 0):
    from gensim.models import KeyedVectors

    rng = np.random.default_rng(seed)
    kv = KeyedVectors(DIM)
    kv.add_vectors(VOCAB, rng.standard_normal((len(VOCAB), DIM)).astype(np.float32))
    return kv


def write_word2vec_binary(path: Path, seed: int = 0):
    kv = make_keyed_vectors(seed)
    kv.save_word2vec_format(str(path), binary=True)
    return kv


def random_features(rng, length: int, dim: int = 2048) -> np.ndarray:
    return rng.standard_normal((length, dim)).astype(np.float32)


def write_howto_fixture(root: Path, seed: int = 0):
    """Two videos in the HowTo100M layout; the second lacks its 3D features file (documented absent half)."""
    rng = np.random.default_rng(seed)
    features, audio = root / "features", root / "audio"
    paths = ["cooking/vidA", "misc/vidB"]
    durations = {"vidA": 40, "vidB": 20}
    for rel in paths:
        vid = rel.split("/")[-1]
        seconds = durations[vid]
        (features / rel).mkdir(parents=True)
        (audio / rel).mkdir(parents=True)
        np.savez(features / rel / f"{vid}_2d.npz", features=random_features(rng, seconds))
        if vid == "vidA":
            np.savez(features / rel / f"{vid}_3d.npz", features=random_features(rng, int(seconds * 1.5)))
        np.savez(audio / rel / f"{vid}_spec.npz", rng.standard_normal((40, seconds * 100)).astype(np.float32))
    (root / "videos.csv").write_text("path\n" + "\n".join(paths) + "\n", encoding="utf-8")
    captions = {
        "vidA": {"start": np.array([1.0, 4.0, 6.5, 20.0, 30.0]), "end": np.array([3.5, 6.0, 9.0, 29.0, 33.0]),
                 "text": np.array(["add salt now", "boil the water", "chop onions slowly", "then serve", "stir sauce"],
                                  dtype=object)},
        "vidB": {"start": np.array([0.0]), "end": np.array([20.0]), "text": np.array(["a Dog runs fast"], dtype=object)},
    }
    with open(root / "caption.pickle", "wb") as fh:
        pickle.dump(captions, fh)
    return {"csv": root / "videos.csv", "features": features, "audio": audio, "captions": root / "caption.pickle",
            "caption_data": captions}


def msrvtt_record(rng, ident: str, caption, t2d: int = 20, t3d: int = 30, frames: int = 2000, key="eval_caption"):
    return {"id": ident, "2d": random_features(rng, t2d), "3d": random_features(rng, t3d),
            "audio": rng.standard_normal((40, frames)).astype(np.float32), key: caption}


def youcook_record(rng, ident: str, caption, with_2d: bool = True, t3d: int = 90, frames: int = 5000):
    record = {"id": ident, "3d_full": random_features(rng, t3d),
              "audio": rng.standard_normal((40, frames)).astype(np.float32), "caption": caption}
    if with_2d:
        record["2d_full"] = random_features(rng, t3d * 2 // 3)
    return record


def write_pickle(path: Path, obj) -> Path:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)
    return path


# --------------------------------------------------------------------------------------------------
# text and word vectors


def test_tokenize_matches_reference_regex_without_lowercasing():
    text = "Don't stop, Bob! It's 3pm -- café_au_lait, e.g. x-ray"
    assert tokenize(text) == re.findall(r"[\w']+", text)
    assert tokenize(text)[:3] == ["Don't", "stop", "Bob"]
    assert "café_au_lait" in tokenize(text)


def test_word2vec_binary_round_trip_and_disk_cache(tmp_path, monkeypatch):
    source = write_word2vec_binary(tmp_path / "vectors.bin")
    cache = tmp_path / "cache"
    wv.clear_memory_cache()
    kv = wv.load_word_vectors(str(tmp_path / "vectors.bin"), cache_dir=cache)
    assert kv.index_to_key == source.index_to_key
    np.testing.assert_array_equal(np.asarray(kv.vectors), source.vectors)
    entries = list(cache.iterdir())
    assert len(entries) == 1 and (entries[0] / "vectors.kv").is_file()
    wv.clear_memory_cache()

    def no_parsing(*_args, **_kwargs):
        raise AssertionError("the source file was parsed again instead of read from the cache")

    monkeypatch.setattr(wv, "_load_file", no_parsing)
    cached = wv.load_word_vectors(str(tmp_path / "vectors.bin"), cache_dir=cache)
    np.testing.assert_array_equal(np.asarray(cached.vectors), source.vectors)


def test_word2vec_text_and_glove_text_are_detected(tmp_path):
    source = make_keyed_vectors(1)
    source.save_word2vec_format(str(tmp_path / "w2v.txt"), binary=False)
    lines = (tmp_path / "w2v.txt").read_text(encoding="utf-8").splitlines()[1:]  # GloVe: no header line
    (tmp_path / "glove.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name in ("w2v.txt", "glove.txt"):
        kv = wv.load_word_vectors(str(tmp_path / name), use_cache=False)
        assert kv.index_to_key == source.index_to_key
        np.testing.assert_allclose(kv.vectors, source.vectors, rtol=1e-5, atol=1e-6)


def test_encode_text_keeps_first_in_vocabulary_words_in_order():
    kv = make_keyed_vectors()
    text = "A man is COOKING pasta in the kitchen; the Dog don't care"
    expected_words = [w for w in re.findall(r"[\w']+", text) if w in kv.key_to_index][:5]
    assert expected_words == ["man", "is", "pasta", "in", "the"]  # "A", "COOKING" miss: no lower-casing
    out = encode_text(kv, text, max_words=5)
    assert out.shape == (5, DIM) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.stack([kv[w] for w in expected_words]))
    lowered = encode_text(kv, text, max_words=3, lowercase=True)
    np.testing.assert_array_equal(lowered, np.stack([kv["a"], kv["man"], kv["is"]]))
    assert encode_text(kv, "zzz qqq", max_words=20).shape == (0, DIM)


def test_packaged_glove_matches_its_npy_and_parquet(tmp_path):
    import pyarrow.parquet as pq

    matrix_path, vocab_path, _ = wv._packaged_glove_files()
    matrix = np.load(matrix_path, mmap_mode="r")
    words = pq.read_table(vocab_path).column(0).to_pylist()
    kv = wv.load_word_vectors("glove-6b-50d", use_cache=False)
    assert kv.vector_size == 50 and len(kv.index_to_key) == len(words) == matrix.shape[0]
    for word in ("the", "kitchen", words[123456]):
        np.testing.assert_array_equal(kv[word], matrix[words.index(word)])


# --------------------------------------------------------------------------------------------------
# video tokens and clip sampling


def test_combine_video_features_matches_torch_interpolate_and_normalize():
    rng = np.random.default_rng(0)
    f2d, f3d = random_features(rng, 7), random_features(rng, 11)
    got = combine_video_features(f2d, f3d)
    t2d = torch.nn.functional.interpolate(torch.from_numpy(f2d).T[None], size=11, mode="nearest")[0].T
    expected = torch.cat([torch.nn.functional.normalize(t2d, dim=1),
                          torch.nn.functional.normalize(torch.from_numpy(f3d), dim=1)], dim=1)
    assert got.shape == (11, 4096)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)
    only_2d = combine_video_features(f2d, None)
    assert only_2d.shape == (7, 4096) and not only_2d[:, 2048:].any()
    np.testing.assert_allclose(np.linalg.norm(only_2d[:, :2048], axis=1), 1.0, rtol=1e-5)
    assert combine_video_features(None, None).shape == (0, 4096)


def _segments(starts, ends, texts):
    return CaptionSegments(np.asarray(starts, float), np.asarray(ends, float), list(texts))


def test_grow_segment_takes_the_closer_neighbour_until_min_length():
    seg = _segments([1.0, 4.0, 6.5, 20.0, 30.0], [3.5, 6.0, 9.0, 29.0, 33.0], ["a", "b", "c", "d", "e"])
    # from segment 1 (4-6): prev gives 1..6 = 5 s, next gives 4..9 = 5 s -> tie takes prev; then 1..9 = 8 s
    assert grow_segment(seg, 1, 8.0) == (0, 2)
    # segment 4 (30-33) at the end: only the previous side exists -> 20..33
    assert grow_segment(seg, 4, 8.0) == (3, 4)
    # the first segment grows forward; a long segment needs nothing
    assert grow_segment(seg, 0, 8.0) == (0, 2)
    assert grow_segment(seg, 3, 8.0) == (3, 3)
    single = _segments([0.0], [2.0], ["x"])
    assert grow_segment(single, 0, 8.0) == (0, 0)  # no neighbours left: stops short


def test_sample_clip_spans_at_least_clip_seconds_and_uses_segment_words():
    seg = _segments([1.0, 4.0, 6.5, 20.0, 30.0], [3.5, 6.0, 9.0, 29.0, 33.0],
                    ["add salt now", "boil the water", "chop onions slowly", "then serve", "stir sauce"])
    rng = np.random.default_rng(0)
    with_text = 0
    for _ in range(300):
        clip = sample_clip(seg, 40.0, rng, clip_seconds=8.0)
        assert 0.0 <= clip.start
        if clip.segments is None:
            assert clip.words == [] and clip.end - clip.start == pytest.approx(8.0)
            continue
        with_text += 1
        first, last = clip.segments
        assert clip.end - clip.start >= 8.0
        assert (clip.start, clip.end) == (seg.start[first], seg.end[last])
        assert clip.words == " ".join(seg.text[first:last + 1]).split()
        assert (clip.audio_start, clip.audio_end) == (clip.start, clip.end)
    assert with_text > 50
    quirk = sample_clip(seg, 40.0, np.random.default_rng(3), clip_seconds=8.0, text_audio_misaligned=True)
    if quirk.segments is not None:
        assert quirk.audio_start == pytest.approx(quirk.start + 4.0)
        assert quirk.audio_end == pytest.approx(quirk.start + 12.0)


def test_sample_clip_start_inside_segment_is_found():
    seg = _segments([0.0, 10.0], [10.0, 30.0], ["add salt", "boil water"])
    # start is uniform over [0, 22]; a start in [10, 22] falls in segment 1 (10-30, long enough alone)
    rng = np.random.default_rng(5)
    for _ in range(50):
        clip = sample_clip(seg, 30.0, rng)
        assert clip.segments in {(0, 1), (1, 1), (0, 0)}
        if clip.segments == (1, 1):
            assert clip.words == ["boil", "water"]


def test_howto100m_dataset_reads_the_layout_and_is_deterministic(tmp_path):
    fx = write_howto_fixture(tmp_path)
    kv = make_keyed_vectors()
    ds = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv, clips_per_video=4, seed=7)
    assert len(ds) == 2
    clips = ds[0]
    assert len(clips) == 4 and [c["index"] for c in clips] == [0, 1, 2, 3]
    f2d = np.load(fx["features"] / "cooking/vidA/vidA_2d.npz")["features"]
    f3d = np.load(fx["features"] / "cooking/vidA/vidA_3d.npz")["features"]
    spec = np.load(fx["audio"] / "cooking/vidA/vidA_spec.npz")["arr_0"]
    for clip in clips:
        start, end = clip["start"], clip["end"]
        expected_video = combine_video_features(f2d[int(start):int(end) + 1], f3d[int(start * 1.5):int(end * 1.5) + 1])[:12]
        np.testing.assert_allclose(clip["video"].numpy(), expected_video, rtol=1e-6)
        first = max(0, int(np.floor((start * 16000 - 200) / 160)))
        last = first + 768 if not clip["caption"] else min(int(np.floor((end * 16000 - 200) / 160)), first + 768)
        np.testing.assert_array_equal(clip["audio"].numpy(), spec.T[first:last])
        if clip["caption"]:
            np.testing.assert_array_equal(clip["text"].numpy(), encode_text(kv, clip["caption"], 20))
    again = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv, clips_per_video=4, seed=7)
    assert [c["start"] for c in again[0]] == [c["start"] for c in clips]
    again.set_epoch(1)
    assert [c["start"] for c in again[0]] != [c["start"] for c in clips]
    # vidB has no 3D file: the 3D half is zero, tokens at the 2D rate
    b_clip = ds[1][0]
    assert b_clip["video"].shape[1] == 4096 and not b_clip["video"][:, 2048:].any() and b_clip["video"].shape[0] > 0
    batch = ds.collate_fn([ds[0], ds[1]])
    assert batch["text"].shape == (8, 20, DIM) and batch["video"].shape == (8, 12, 4096)
    assert batch["audio"].shape == (8, 40, 768) and batch["audio_mask"].shape == (8, 768)
    assert batch["index"].tolist() == list(range(8)) and batch["id"][4] == "vidB#0"


# --------------------------------------------------------------------------------------------------
# evaluation pickles and conversion


def test_msrvtt_test_pickle_windows_and_complete_size(tmp_path):
    from multisk.data.formats.eval_pickles import load_msrvtt

    rng = np.random.default_rng(0)
    records = [msrvtt_record(rng, f"video{i}", f"a man is cooking {i}", t3d=30 + 20 * i, frames=2000 + 1500 * i)
               for i in range(3)]
    path = write_pickle(tmp_path / "msrvtt_jsfusion_test.pkl", records)
    evalset = load_msrvtt(path)
    assert evalset.complete_size == 1000 and len(evalset.items) == 3
    assert evalset.window == {"video": 48, "audio": 3072}
    for record, item in zip(records, evalset.items):
        expected_video = combine_video_features(record["2d"], record["3d"])[:48]
        np.testing.assert_allclose(item["video"], expected_video, rtol=1e-6)
        np.testing.assert_array_equal(item["audio"], record["audio"].T[:3072])
        assert item["caption"] == record["eval_caption"] and item["id"] == record["id"]
    assert [i["video"].shape[0] for i in evalset.items] == [30, 48, 48]
    train = write_pickle(tmp_path / "train.pkl", [msrvtt_record(rng, "v9", ["one caption", "another one"], key="caption")])
    train_set = load_msrvtt(train)
    assert [i["id"] for i in train_set.items] == ["v9#0", "v9#1"] and train_set.complete_size == 2
    assert [i["id"] for i in load_msrvtt(train, all_captions=False).items] == ["v9#0"]


def test_msrvtt_empty_2d_or_3d_empties_the_whole_video(tmp_path):
    """The reference's `clip` strategy masks every video token when either half has no time step; a
    (40, 0) spectrogram is an empty audio. The items stay (evaluation scores them via the masking token)."""
    from multisk.data.formats.eval_pickles import load_msrvtt

    rng = np.random.default_rng(7)
    records = [msrvtt_record(rng, "v0", "a man", t2d=0), msrvtt_record(rng, "v1", "a man", t3d=0),
               msrvtt_record(rng, "v2", "a man", frames=0), msrvtt_record(rng, "v3", "a man")]
    items = load_msrvtt(write_pickle(tmp_path / "msrvtt_jsfusion_test.pkl", records)).items
    assert [i["video"].shape for i in items] == [(0, 4096), (0, 4096), (30, 4096), (30, 4096)]
    assert [i["audio"].shape[0] for i in items] == [2000, 2000, 0, 2000]


def test_youcook2_skips_items_without_2d_full_and_counts_them(tmp_path):
    from multisk.data.formats.eval_pickles import load_youcook2

    rng = np.random.default_rng(1)
    records = [youcook_record(rng, "yc0", "chop onions slowly"), youcook_record(rng, "yc1", "boil water", with_2d=False),
               youcook_record(rng, "yc2", "add salt now", t3d=50, frames=3000)]
    evalset = load_youcook2(write_pickle(tmp_path / "youcook_val.pkl", records))
    assert [i["id"] for i in evalset.items] == ["yc0", "yc2"]
    assert evalset.skipped_by_rule == ["yc1"] and evalset.complete_size == 3350
    assert evalset.items[0]["video"].shape == (72, 4096) and evalset.items[0]["audio"].shape == (4608, 40)
    assert evalset.items[1]["video"].shape == (50, 4096) and evalset.items[1]["audio"].shape == (3000, 40)


def test_convert_msrvtt_writes_a_feature_store_readable_by_the_dataset(tmp_path):
    from multisk.data.formats.convert import convert_dataset
    from multisk.data.store.dataset import FeatureStoreDataset

    rng = np.random.default_rng(2)
    records = [msrvtt_record(rng, "video0", "a man is cooking pasta"), msrvtt_record(rng, "video1", "zzz unknown words")]
    path = write_pickle(tmp_path / "msrvtt_jsfusion_test.pkl", records)
    vectors = tmp_path / "vectors.bin"
    kv = write_word2vec_binary(vectors)
    info = convert_dataset("msrvtt", path, tmp_path / "store", word_vectors=str(vectors))
    assert info["count"] == 2 and info["complete_size"] == 1000
    assert info["max_tokens"] == {"text": 20, "video": 48, "audio": 3072}
    assert info["modalities"]["text"]["items_present"] == 1  # no in-vocabulary word in item 1
    # the evaluation protocol and the text encoder are recorded for `multisk eval` / `multisk search`
    assert info["eval_window"] == {"text": 20, "video": 48, "audio": 3072, "crop": "start"}
    assert info["empty_modalities"] == "masking_token"
    assert info["text_encoder"]["name"] == str(vectors.resolve()) and info["text_encoder"]["lowercase"] is False
    ds = FeatureStoreDataset(tmp_path / "store", "test", max_tokens={"text": 20, "video": 48, "audio": 3072})
    assert ds.captions == ["a man is cooking pasta", "zzz unknown words"] and ds.complete_size == 1000
    item = ds[0]
    np.testing.assert_allclose(item["text"].numpy(), encode_text(kv, "a man is cooking pasta"), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(item["video"].numpy(), combine_video_features(records[0]["2d"], records[0]["3d"]),
                               rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(item["audio"].numpy(), records[0]["audio"].T, rtol=1e-3, atol=1e-2)
    assert ds[1]["text"].shape == (0, DIM)


def test_convert_howto100m_bounded_clips(tmp_path):
    from multisk.data.formats.convert import convert_dataset
    from multisk.data.store.feature_store import FeatureStore

    fx = write_howto_fixture(tmp_path)
    write_word2vec_binary(tmp_path / "vectors.bin")
    info = convert_dataset("howto100m", fx["csv"], tmp_path / "store", word_vectors=str(tmp_path / "vectors.bin"),
                           features_path=fx["features"], audio_path=fx["audio"], caption_path=fx["captions"],
                           clips_per_video=3, max_clips=5, seed=1)
    assert info["count"] == 5 and info["clips_per_video"] == 3
    store = FeatureStore(tmp_path / "store", "train")
    assert [it["id"] for it in store.items] == ["vidA#0", "vidA#1", "vidA#2", "vidB#0", "vidB#1"]
    assert all(store.tokens("video", i).shape[0] <= 12 for i in range(5))


def test_cli_convert_and_info(tmp_path, capsys):
    from multisk.cli import main

    rng = np.random.default_rng(3)
    path = write_pickle(tmp_path / "youcook_val.pkl", [youcook_record(rng, "yc0", "stir sauce"),
                                                      youcook_record(rng, "yc1", "serve", with_2d=False)])
    write_word2vec_binary(tmp_path / "vectors.bin")
    code = main(["data", "convert", "youcook2", str(path), "--out", str(tmp_path / "store"),
                 "--word-vectors", str(tmp_path / "vectors.bin"), "--split", "youcook_val"])
    assert code == 0
    converted = capsys.readouterr().out
    assert "1 items" in converted and "the first 72 video steps / 4608 audio frames" in converted
    assert main(["data", "info", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert "youcook_val: 1 items (complete size 3350)" in out and "video" in out and "skipped_by_rule: 1" in out
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["splits"]["youcook_val"]["source"] == "youcook2"
