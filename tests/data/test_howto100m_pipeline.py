"""HowTo100M training path and the training data pipeline: the audio-text offset against hand-computed
frames, the core install's CSV reader (no pandas), captions packed into arrays, workers, the half-precision
video transport and the shared-memory estimate, ``data.modality_map`` and the trainer's first batch."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from multisk.config import load_config
from multisk.data.store.dataset import (
    FeatureStoreDataset,
    batch_nbytes,
    collate_batch,
    loader_shared_memory_bytes,
    max_workers_within,
)
from multisk.data.formats.howto100m import CaptionTable, HowTo100MDataset, PackedStrings, check_segments, read_video_csv
from multisk.errors import DataFormatError
from multisk.train.datasets_for_config import build_train_dataset, estimate_loader_memory, loader_options
from multisk.train.sampling import ResumableBatchSampler

from synthetic_store import tiny_overrides, write_synthetic_store
from test_data_formats import make_keyed_vectors, write_howto_fixture, write_word2vec_binary
from repo_paths import REPO

DEMO = REPO / "configs" / "demo.yaml"
PAPER = REPO / "configs" / "paper" / "howto100m_resnet_tva.yaml"
EAO = REPO / "configs" / "paper" / "everything_at_once.yaml"


# converted word vectors go to a per-test cache (tests/conftest.py), not ~/.cache
pytestmark = pytest.mark.usefixtures("isolated_word_vector_cache")


# --------------------------------------------------------------------------------------------------
# audio-text offset (SPEC §5, flag_text_audio_misaligned)


def write_one_segment_video(root: Path) -> dict:
    """One 16 s video whose single ASR segment (0.5 s - 9.0 s) every clip start must hit.

    Spectrogram: 1600 frames -> duration int((1600 * 160 + 200) / 16000) = int(16.0125) = 16 s, so the
    start is drawn from [0, 16 - 8] = [0, 8]. A start in [0.5, 8] lies inside the segment; a start in
    [0, 0.5) has its end (start + 8) in [8, 8.5), also inside it. The segment is already 8.5 s >= 8 s
    long, so the span is always exactly 0.5 s - 9.0 s.
    """
    rng = np.random.default_rng(0)
    rel = "kitchen/vidC"
    (root / "features" / rel).mkdir(parents=True)
    (root / "audio" / rel).mkdir(parents=True)
    np.savez(root / "features" / rel / "vidC_2d.npz", features=rng.random((16, 2048)).astype(np.float32))
    np.savez(root / "features" / rel / "vidC_3d.npz", features=rng.random((24, 2048)).astype(np.float32))
    spec = np.arange(40 * 1600, dtype=np.float32).reshape(40, 1600)  # frame f holds values 1600 * mel + f
    np.savez(root / "audio" / rel / "vidC_spec.npz", spec)
    (root / "videos.csv").write_text("path\n" + rel + "\n", encoding="utf-8")
    with open(root / "caption.pickle", "wb") as fh:
        pickle.dump({"vidC": {"start": np.array([0.5]), "end": np.array([9.0]),
                              "text": np.array(["add salt now"], dtype=object)}}, fh)
    return {"csv": root / "videos.csv", "features": root / "features", "audio": root / "audio",
            "captions": root / "caption.pickle", "spec": spec}


def howto_overrides(fx: dict, vectors: Path, dim: int, out: Path, **extra) -> list[str]:
    values = {
        "data.train_format": "howto100m", "data.howto_csv": fx["csv"], "data.howto_features_path": fx["features"],
        "data.howto_audio_path": fx["audio"], "data.howto_caption_path": fx["captions"],
        "data.word_vectors": vectors, "data.eval_splits": "[]", "data.max_video_tokens": 12,
        "data.modality_map.text": "text",
        "data.max_audio_frames": 768, "model.text_dim": dim, "model.video_dim": 4096, "model.embed_dim": 32,
        "model.num_heads": 4, "model.projection_dim": 24, "model.num_anchors": 8, "model.audio_width_divisor": 32,
        "loss.sspc.queue_size": 8, "loss.sspc.warmup": "none", "train.log_every": 1, "train.output_dir": out,
        # HowTo100M training has no val split of its own (the demo's text-space prior chooses on one)
        "model.prior.enabled": "false", "model.prior.concept_classes": 0, "data.val_split": "null",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def test_text_audio_misaligned_frames_against_a_hand_computed_span(tmp_path):
    fx = write_one_segment_video(tmp_path)
    vectors = tmp_path / "w2v.bin"
    kv = write_word2vec_binary(vectors)
    frames = {}
    for flag in (False, True):
        cfg = load_config(DEMO, howto_overrides(fx, vectors, kv.vector_size, tmp_path / "run",
                                                **{"data.flag_text_audio_misaligned": flag,
                                                   "data.max_audio_frames": 1000, "data.clips_per_video": 3}))
        dataset = build_train_dataset(cfg)
        assert dataset.text_audio_misaligned is flag
        clips = dataset[0]
        for clip in clips:
            assert (clip["start"], clip["end"]) == (0.5, 9.0) and clip["caption"] == "add salt now"
            # video: 2D rows int(0.5)=0 .. int(9.0)=9, 3D rows int(0.75)=0 .. int(13.5)=13 -> 14 steps, first 12
            assert clip["video"].shape == (12, 4096)
        audio = clips[0]["audio"].numpy()
        assert np.array_equal(clips[1]["audio"].numpy(), audio)
        first, count = int(audio[0, 0]), audio.shape[0]  # mel 0 of frame f holds f
        np.testing.assert_array_equal(audio, fx["spec"].T[first:first + count])
        frames[flag] = (first, first + count)
    # aligned: frame(0.5) = floor((0.5 * 16000 - 200) / 160) = floor(48.75) = 48,
    #          frame(9.0) = floor((9.0 * 16000 - 200) / 160) = floor(898.75) = 898
    assert frames[False] == (48, 898)
    # misaligned: audio 4.5 s - 12.5 s, running 3.5 s past the span's end (9.0 s):
    #          frame(4.5) = floor(71800 / 160) = floor(448.75) = 448, frame(12.5) = floor(199800 / 160) = 1248
    assert frames[True] == (448, 1248)


def test_paper_configs_train_with_misaligned_audio_and_the_default_is_aligned():
    assert load_config(PAPER).data.flag_text_audio_misaligned is True
    assert load_config(EAO).data.flag_text_audio_misaligned is True
    assert load_config(DEMO).data.flag_text_audio_misaligned is False


# --------------------------------------------------------------------------------------------------
# the core install reads the CSV (no pandas)


def test_csv_reader_matches_pandas_on_awkward_files(tmp_path):
    pd = pytest.importorskip("pandas")
    text = ('\ufeffvideo_id,path,duration\n'
            'a,None/cooking/vidA,12\n'
            '\n'
            'b,"misc/with,comma/vidB",3\n'
            'c, spaced/vidC/ ,4\n')
    path = tmp_path / "videos.csv"
    path.write_text(text, encoding="utf-8")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    expected = [p.replace("None/", "").strip().strip("/") for p in frame["path"].tolist()]
    assert read_video_csv(path) == expected == ["cooking/vidA", "misc/with,comma/vidB", "spaced/vidC"]


def test_convert_howto100m_runs_without_pandas(tmp_path, monkeypatch, capsys):
    from multisk.cli import main

    fx = write_howto_fixture(tmp_path / "howto")
    write_word2vec_binary(tmp_path / "w2v.bin")
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now raises ImportError
    with pytest.raises(ImportError):
        import pandas  # noqa: F401
    code = main(["data", "convert", "howto100m", str(fx["csv"]), "--out", str(tmp_path / "store"),
                 "--word-vectors", str(tmp_path / "w2v.bin"), "--features-path", str(fx["features"]),
                 "--audio-path", str(fx["audio"]), "--caption-path", str(fx["captions"])])
    assert code == 0
    from multisk.data.store.feature_store import FeatureStore

    store = FeatureStore(tmp_path / "store", "train")
    assert {item["video"] for item in store.items} == {"vidA", "vidB"}


# --------------------------------------------------------------------------------------------------
# feature file names (SPEC §6): the reference's fallbacks, and absent files counted and reported


def test_missing_files_are_counted_and_reported_not_silent(tmp_path):
    fx = write_howto_fixture(tmp_path)  # vidB has no 3D file
    (fx["audio"] / "cooking/vidA/vidA_spec.npz").unlink()
    with pytest.warns(UserWarning, match=r"1 of 2 videos lack 3d .*vidB.*1 of 2 videos lack audio .*vidA"):
        ds = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], make_keyed_vectors())
    assert ds.missing_files == {"2d": [], "3d": ["vidB"], "audio": ["vidA"], "captions": []}
    assert ds[0][0]["audio"].shape == (0, 40)


def test_reference_fallback_file_names_load_the_same_features(tmp_path):
    fx = write_howto_fixture(tmp_path)
    kv = make_keyed_vectors()
    before = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv, seed=2)[0]
    video_dir = fx["features"] / "cooking" / "vidA"
    (video_dir / "vidA_2d.npz").rename(fx["features"] / "cooking" / "vidA_2d.npz")  # {path}_2d.npz
    (video_dir / "vidA_3d.npz").rename(video_dir / "vidA.npz")  # {path}/{id}.npz
    ds = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv, seed=2)
    assert ds.missing_files["2d"] == [] and ds.missing_files["3d"] == ["vidB"]
    after = ds[0]
    for old, new in zip(before, after):
        assert torch.equal(old["video"], new["video"]) and torch.equal(old["audio"], new["audio"])
    strict = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv, strict_files=True)
    with pytest.raises(Exception, match=r"vidB_3d.npz: field 'features': file not found \(also tried .*vidB.npz\)"):
        strict[1]


# --------------------------------------------------------------------------------------------------
# captions as arrays


def test_captions_are_packed_arrays_equal_to_the_pickle(tmp_path):
    fx = write_howto_fixture(tmp_path)
    ds = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], make_keyed_vectors())
    table = ds.captions
    assert isinstance(table, CaptionTable) and isinstance(ds.video_paths, PackedStrings)
    # nothing but numpy arrays (and the empty error map) is kept: no per-video Python objects
    for name, value in vars(table).items():
        if name == "text":
            assert isinstance(value.data, np.ndarray) and isinstance(value.offsets, np.ndarray)
        elif name == "errors":
            assert value == {}
        else:
            assert isinstance(value, np.ndarray), name
    for row, video_id in enumerate(["vidA", "vidB"]):
        expected = check_segments(fx["caption_data"][video_id], "x")
        got = table.segments(row)
        np.testing.assert_array_equal(got.start, expected.start)
        np.testing.assert_array_equal(got.end, expected.end)
        assert got.text == expected.text
    assert [ds.video_paths[i] for i in range(2)] == ["cooking/vidA", "misc/vidB"]
    # a video listed twice shares its rows; consume=True empties the dict while packing
    captions = dict(fx["caption_data"])
    table = CaptionTable(captions, ["vidB", "vidA", "vidB", "vidZ"], "caption.pickle", consume=True)
    assert captions == {} and table.present.tolist() == [True, True, True, False]
    assert table.segments(0).text == table.segments(2).text == ["a Dog runs fast"] and table.segments(3) is None
    assert table.segments(1).text == list(fx["caption_data"]["vidA"]["text"])
    assert len(table.start) == 6  # vidB's one segment packed once, vidA's five
    # times stay float64 (1234.5678 is not a float32 number; float32 would give 1234.5677490234375)
    precise = CaptionTable({"v": {"start": np.array([1234.5678]), "end": np.array([1240.0]),
                                  "text": np.array(["x"], dtype=object)}}, ["v"], "caption.pickle")
    assert precise.segments(0).start[0] == 1234.5678
    words = PackedStrings.from_strings(["", "naïve café", "x"])
    assert list(words) == ["", "naïve café", "x"] and words.nbytes == len("naïve café".encode()) + 1 + 8 * 4


# --------------------------------------------------------------------------------------------------
# workers, half-precision transport, shared-memory estimate


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if torch.is_tensor(x[key]):
                assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def test_two_workers_give_the_same_batches_as_the_main_process(tmp_path):
    store = write_synthetic_store(tmp_path / "store", n_train=20, n_test=4)
    fx = write_howto_fixture(tmp_path / "howto")
    vectors = tmp_path / "w2v.bin"
    kv = write_word2vec_binary(vectors)
    store_cfg = load_config(DEMO, tiny_overrides(store, tmp_path / "run"))
    howto_cfg = load_config(DEMO, howto_overrides(fx, vectors, kv.vector_size, tmp_path / "run2",
                                                  **{"data.clips_per_video": 3}))
    for cfg, batch_size in ((store_cfg, 6), (howto_cfg, 1)):
        dataset = build_train_dataset(cfg)
        per_epoch = []
        for epoch in (0, 1):
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            runs = []
            for workers in (0, 2):
                cfg.data.num_workers = workers
                options = loader_options(cfg)
                assert options.get("prefetch_factor") == (2 if workers else None)
                sampler = ResumableBatchSampler(len(dataset), batch_size, seed=5, epoch=epoch)
                loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate_fn, **options)
                runs.append(list(loader))
            _assert_same_batches(runs[0], runs[1])
            per_epoch.append(runs[1])
        if hasattr(dataset, "set_epoch"):  # the workers saw the new epoch's clips, not epoch 0's again
            first = [b for b in per_epoch[0] if b["index"][0] == 0][0]
            second = [b for b in per_epoch[1] if b["index"][0] == 0][0]
            assert not torch.equal(first["audio"], second["audio"]) or not torch.equal(first["video"], second["video"])


def realistic_video_tokens(n: int = 1000, seed: int = 0) -> np.ndarray:
    """Video tokens shaped like the field's: ReLU-pooled CNN features (non-negative, skewed, some exact
    zeros), 2D and 3D halves L2-normalised to unit length (SPEC §1)."""
    from multisk.data.formats.arrays import combine_video_features

    rng = np.random.default_rng(seed)
    f2d = rng.gamma(0.6, 0.8, (n, 2048)).astype(np.float32) * (rng.random((n, 2048)) > 0.1)
    f3d = rng.gamma(0.4, 1.5, (n, 2048)).astype(np.float32) * (rng.random((n, 2048)) > 0.3)
    return combine_video_features(f2d, f3d)


def test_half_precision_video_transport_is_within_fp16_rounding():
    tokens = realistic_video_tokens()
    items = [{"text": torch.zeros(0, 4), "video": torch.from_numpy(tokens[i * 10:(i + 1) * 10]),
              "audio": torch.zeros(0, 40), "index": i, "id": str(i)} for i in range(100)]
    full = collate_batch(items, pad_to={"text": 2, "video": 10, "audio": 4})
    half = collate_batch(items, pad_to={"text": 2, "video": 10, "audio": 4}, dtypes={"video": "float16"})
    assert half["video"].dtype == torch.float16 and half["audio"].dtype == torch.float32
    assert torch.equal(half["video"], full["video"].half())
    for name in ("video_mask", "text", "audio", "index"):
        assert torch.equal(half[name], full[name])
    back = half["video"].float()
    for cols in (slice(0, 2048), slice(2048, 4096)):
        exact, sent = full["video"][..., cols].reshape(-1, 2048), back[..., cols].reshape(-1, 2048)
        relative = (sent - exact).norm(dim=1) / exact.norm(dim=1)
        # each normal float16 value is within 2^-11 relative; measured: max 2.5e-4, mean 2.1e-4
        assert relative.max() <= 2.0 ** -11
        # 8x below what bf16 autocast does to the same input anyway (the paper config trains in bf16)
        bf16 = (exact.bfloat16().float() - exact).norm(dim=1) / exact.norm(dim=1)
        assert relative.mean() < bf16.mean() / 6


def test_batch_bytes_equal_a_collated_batch_and_the_paper_estimate(tmp_path):
    fx = write_howto_fixture(tmp_path)
    kv = make_keyed_vectors()
    for dtype in (None, "float16"):
        ds = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv, clips_per_video=3,
                              video_dtype=dtype)
        batch = ds.collate_fn([ds[0], ds[1]])
        measured = sum(v.nbytes for v in batch.values() if torch.is_tensor(v))
        dims = {"text": kv.vector_size, "video": 4096, "audio": 40}
        assert batch_nbytes(6, ds.max_tokens, dims, {"video": dtype}) == measured
    # the paper configuration on 8 ranks of one node: each collates 216 / 8 = 27 videos x 10 clips
    cfg = load_config(PAPER)
    estimate = estimate_loader_memory(cfg, world_size=8)
    items = [{"text": torch.zeros(0, 300), "video": torch.zeros(0, 4096), "audio": torch.zeros(0, 40),
              "index": i, "id": ""} for i in range(270)]
    paper_batch = collate_batch(items, pad_to={"text": 20, "video": 12, "audio": 768},
                                dtypes={"video": cfg.data.video_transfer_dtype})
    one_batch = sum(v.nbytes for v in paper_batch.values() if torch.is_tensor(v))
    assert estimate["batch_items"] == 270 and estimate["batch_bytes"] == one_batch
    workers, prefetch = cfg.data.num_workers, cfg.data.prefetch_factor
    assert estimate["node_bytes"] == 8 * (workers * prefetch + 1) * one_batch
    assert estimate["node_bytes"] < 16e9  # the issue: 8 ranks needed ~190 GB
    # ... which is what 16 workers each holding 2 whole float32 global batches per rank came to
    old = 8 * (16 * 2 + 1) * batch_nbytes(2160, {"text": 20, "video": 12, "audio": 768},
                                          {"text": 300, "video": 4096, "audio": 40})
    assert 185e9 < old < 200e9
    assert loader_shared_memory_bytes(one_batch, 0, 2, 8) == 0
    # the sizing rule: the most workers that fit a budget, and one more does not
    for budget in (4e9, 16e9, 64e9):
        w = max_workers_within(int(budget), one_batch, prefetch, ranks=8)
        assert loader_shared_memory_bytes(one_batch, w, prefetch, 8) <= budget
        assert loader_shared_memory_bytes(one_batch, w + 1, prefetch, 8) > budget


# --------------------------------------------------------------------------------------------------
# data.modality_map, and the trainer's first HowTo100M batch


def test_modality_map_trains_on_a_second_text_modality(tmp_path):
    from multisk.train.trainer import train

    store = write_synthetic_store(tmp_path / "store", n_train=16, n_test=8, minilm_dim=384)
    overrides = tiny_overrides(store, tmp_path / "run", **{"data.modality_map.text": "text_minilm",
                                                           "model.text_dim": 384, "train.steps": 2,
                                                           "train.epochs": 1, "data.eval_splits": "[]"})
    cfg = load_config(DEMO, overrides)
    dataset = build_train_dataset(cfg)
    for i in (0, 5):
        np.testing.assert_array_equal(dataset[i]["text"].numpy(), dataset.store.tokens("text_minilm", i)[:20])
    results = train(cfg, progress=False)
    assert results["steps"] == 2
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)
    text_inputs = [v for k, v in checkpoint["model"].items() if v.ndim == 2 and v.shape[1] == 384]
    assert text_inputs, "no weight consumes 384-d text tokens"


def test_trainer_first_howto100m_batch_is_the_datasets_clips_for_the_seed(tmp_path, monkeypatch):
    import multisk.train.step as step
    from multisk.train.trainer import train

    fx = write_howto_fixture(tmp_path / "howto")
    vectors = tmp_path / "w2v.bin"
    kv = write_word2vec_binary(vectors)
    seen = []
    real_move = step.move_batch

    def recording_move(batch, *args, **kwargs):  # the host batch the trainer's loader produced
        seen.append(batch)
        return real_move(batch, *args, **kwargs)

    monkeypatch.setattr(step, "move_batch", recording_move)
    cfg = load_config(DEMO, howto_overrides(fx, vectors, kv.vector_size, tmp_path / "run", **{
        "data.clips_per_video": 3, "train.batch_size": 2, "train.steps": 1, "train.seed": 11}))
    train(cfg, progress=False)
    first = seen[0]
    videos = next(iter(ResumableBatchSampler(2, 2, seed=11, epoch=0)))  # both videos, in the seed's order
    reference = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv, clips_per_video=3,
                                 seed=11, video_dtype=cfg.data.video_transfer_dtype)
    reference.set_epoch(0)
    _assert_same_batches([first], [reference.collate_fn([reference[v] for v in videos])])
    other = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv, clips_per_video=3, seed=12)
    assert not torch.equal(other.collate_fn([other[v] for v in videos])["audio"], first["audio"])


def test_memory_mapped_feature_files_give_the_same_clips_and_check_the_rows_they_read(tmp_path):
    fx = write_howto_fixture(tmp_path)
    kv = make_keyed_vectors()
    files = (fx["csv"], fx["features"], fx["audio"], fx["captions"], kv)

    def clips(**kwargs):
        dataset = HowTo100MDataset(*files, clips_per_video=3, **kwargs)
        return [dataset[i] for i in range(len(dataset))], dataset

    whole, _ = clips(memory_map=False)
    mapped, dataset = clips()
    assert isinstance(dataset.load_video(0).features_2d, np.memmap)  # np.savez files are mapped, not read
    for video_whole, video_mapped in zip(whole, mapped):
        for a, b in zip(video_whole, video_mapped):
            assert (a["id"], a["caption"], a["start"]) == (b["id"], b["caption"], b["start"])
            for m in ("text", "video", "audio"):
                assert a[m].dtype == b[m].dtype and torch.equal(a[m], b[m]), m
    spec = fx["audio"] / "cooking" / "vidA" / "vidA_spec.npz"
    frames = np.load(spec)["arr_0"]
    np.savez_compressed(spec, frames)  # a compressed member is read whole, with the same result
    compressed, dataset = clips()
    assert not isinstance(dataset.load_video(0).audio_frames, np.memmap)
    assert all(torch.equal(a["audio"], b["audio"]) for a, b in zip(whole[0], compressed[0]))
    frames[:, :] = np.nan
    np.savez(spec, frames)
    with pytest.raises(DataFormatError, match=r"vidA_spec\.npz field 'arr_0': contains NaN or inf"):
        clips()
