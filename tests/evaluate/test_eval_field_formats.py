"""The evaluation protocol of docs/evaluation.md on the field's formats, end to end from the command line:
MSR-VTT (968 items: some without audio, one with an empty 2D array, some captions without any
in-vocabulary word) and YouCook2 pickles and a HowTo100M layout, in exactly the shapes of docs/data.md, are
converted with `multisk data convert`, a tiny model trains a few steps on 12-step / 768-frame HowTo100M
clips with `multisk train`, and `multisk eval` must score every test item on the first 48 / 3072
(MSR-VTT) and 72 / 4608 (YouCook2) steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from multisk.cli import main

from test_data_formats import (
    VOCAB, make_keyed_vectors, msrvtt_record, write_howto_fixture, write_pickle, write_word2vec_binary,
    youcook_record,
)
from repo_paths import REPO

CONFIG = REPO / "configs" / "demo.yaml"
N_MSRVTT = 968
LONG = (0, 1, 2)                  # items longer than the evaluation window
NO_AUDIO = (3, 10, 500)           # (40, 0) spectrograms
EMPTY_2D = (4,)                   # a (0, 2048) 2D array: the whole video is empty (reference `clip`)
NO_WORDS = (5, 11, 700)           # captions without any in-vocabulary word


def msrvtt_records(rng) -> list:
    records = []
    for i in range(N_MSRVTT):
        long = i in LONG
        caption = "zzz qqq unknown" if i in NO_WORDS else f"a man is {VOCAB[3 + i % 20]} {VOCAB[i % 24]}"
        # audio lengths vary item to item (12 .. 311 frames, 3500 for the long ones), so the padding a
        # batch would get from its longest item differs from batch to batch
        record = msrvtt_record(rng, f"video{7000 + i}", caption, t2d=40 if long else 2, t3d=60 if long else 2,
                               frames=3500 if long else 12 + (i * 53) % 300)
        if i in NO_AUDIO:
            record["audio"] = np.zeros((40, 0), dtype=np.float32)
        if i in EMPTY_2D:
            record["2d"] = np.zeros((0, 2048), dtype=np.float32)
        records.append(record)
    return records


@pytest.fixture(scope="module")
def field_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("field")
    rng = np.random.default_rng(0)
    vectors = base / "GoogleNews-like.bin"
    write_word2vec_binary(vectors)
    msrvtt = msrvtt_records(rng)
    msrvtt_path = write_pickle(base / "msrvtt_jsfusion_test.pkl", msrvtt)
    youcook = [youcook_record(rng, "yc0", "chop onions slowly", t3d=90, frames=5000),
               youcook_record(rng, "yc1", "boil water", with_2d=False),
               youcook_record(rng, "yc2", "add salt now", t3d=6, frames=50)]
    youcook_path = write_pickle(base / "youcook_val.pkl", youcook)
    howto = write_howto_fixture(base / "howto")
    store = base / "store"
    common = ["--out", str(store), "--word-vectors", str(vectors)]
    assert main(["data", "convert", "msrvtt", str(msrvtt_path), *common, "--split", "msrvtt_test"]) == 0
    assert main(["data", "convert", "youcook2", str(youcook_path), *common, "--split", "youcook_val"]) == 0
    overrides = [
        "data.train_format=howto100m", f"data.howto_csv={howto['csv']}", f"data.howto_features_path={howto['features']}",
        f"data.howto_audio_path={howto['audio']}", f"data.howto_caption_path={howto['captions']}",
        f"data.word_vectors={vectors}", "data.clips_per_video=2", "data.max_video_tokens=12",
        "data.max_audio_frames=768", f"data.root={store}", "data.eval_splits=[msrvtt_test]",
        "data.modality_map.text=text",
        "model.text_dim=8", "model.video_dim=4096", "model.embed_dim=16", "model.num_heads=2",
        "model.projection_dim=16", "model.num_anchors=4", "model.audio_width_divisor=64",
        "loss.sspc.queue_size=8", "train.batch_size=2", "train.epochs=2", "train.log_every=1",
        f"train.output_dir={base / 'run'}", "train.eval_every=0",
        "model.prior.enabled=false", "model.prior.concept_classes=0", "data.val_split=null",
    ]
    assert main(["train", "--config", str(CONFIG), "--no-progress", *overrides]) == 0
    return {"base": base, "store": store, "run": base / "run", "msrvtt": msrvtt, "youcook": youcook}


def test_eval_scores_every_item_on_the_recorded_window(field_run, capsys):
    ckpt = field_run["run"] / "checkpoints" / "latest.pt"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(field_run["store"])]) == 0
    printed = capsys.readouterr().out
    results = json.loads((field_run["run"] / "eval" / "results.json").read_text())
    assert set(results) == {"msrvtt_test", "youcook_val"}
    msrvtt = results["msrvtt_test"]
    assert msrvtt["inputs"]["video_tokens"] == 48 and msrvtt["inputs"]["audio_frames"] == 3072
    assert msrvtt["inputs"]["empty_modalities"] == "masking_token" and msrvtt["inputs"]["precision"] == "fp32"
    # the field's evaluation pickles are stored in float32 by default, as the reference evaluates them
    assert msrvtt["inputs"]["storage_dtype"] == {"text": "float32", "video": "float32", "audio": "float32"}
    manifest = json.loads((field_run["store"] / "manifest.json").read_text())
    assert {meta["dtype"] for meta in manifest["splits"]["msrvtt_test"]["modalities"].values()} == {"float32"}
    assert msrvtt["inputs"]["items_with"] == {"text": N_MSRVTT - len(NO_WORDS), "video": N_MSRVTT - len(EMPTY_2D),
                                              "audio": N_MSRVTT - len(NO_AUDIO)}
    assert msrvtt["n_items"] == N_MSRVTT and msrvtt["complete_size"] == 1000
    assert "t2v+a" in msrvtt["retrieval"]
    assert all(m["n_queries"] == N_MSRVTT for m in msrvtt["retrieval"].values())  # every item is a query
    youcook = results["youcook_val"]
    assert youcook["inputs"]["video_tokens"] == 72 and youcook["inputs"]["audio_frames"] == 4608
    assert youcook["retrieval"]["t2v+a"]["n_queries"] == 2 and youcook["complete_size"] == 3350
    assert "msrvtt_test: inputs: video 48 tokens, audio 3072 frames, text 20 tokens (first" in printed
    assert "empty modalities: masking_token; precision fp32; stored float32" in printed
    # exclusion stays available as an explicit option, and the report says which mode ran
    out = field_run["base"] / "excluded"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(field_run["store"]), "--split", "msrvtt_test",
                 "--empty-modalities", "excluded", "--out", str(out)]) == 0
    excluded = json.loads((out / "results.json").read_text())["msrvtt_test"]
    assert excluded["inputs"]["empty_modalities"] == "excluded"
    assert excluded["retrieval"]["t2v"]["n_queries"] == N_MSRVTT - len(NO_WORDS) - len(EMPTY_2D)


def test_trainer_and_eval_feed_the_first_window_whatever_the_training_lengths(field_run):
    """The trainer's periodic evaluation uses the same datasets: first 48 video steps / 3072 frames of
    each MSR-VTT item (not the 12 / 768 centre of training), an empty 2D array empties the video."""
    from multisk.checkpoint import load_checkpoint
    from multisk.config import config_from_dict
    from multisk.data.formats.arrays import combine_video_features
    from multisk.train.datasets_for_config import build_eval_datasets, build_train_dataset

    cfg = config_from_dict(load_checkpoint(field_run["run"] / "checkpoints" / "latest.pt")["config"])
    assert cfg.data.max_video_tokens == 12 and cfg.data.max_audio_frames == 768
    dataset = build_eval_datasets(cfg)["msrvtt_test"]
    records = field_run["msrvtt"]
    for i in LONG:
        item = dataset[i]
        expected = combine_video_features(records[i]["2d"], records[i]["3d"])[:48]
        # float32 store: exactly the pickle's values
        np.testing.assert_array_equal(item["video"].numpy(), expected[:48].astype(np.float32))
        np.testing.assert_array_equal(item["audio"].numpy(), records[i]["audio"].T[:3072].astype(np.float32))
    assert dataset[EMPTY_2D[0]]["video"].shape == (0, 4096)
    assert dataset[NO_AUDIO[0]]["audio"].shape == (0, 40) and dataset[NO_WORDS[0]]["text"].shape == (0, 8)
    # the trainer's final evaluation (run/results.json) was fed the same window, in float32
    trainer_eval = json.loads((field_run["run"] / "results.json").read_text())["evaluation"]["msrvtt_test"]
    assert trainer_eval["inputs"]["video_tokens"] == 48 and trainer_eval["inputs"]["audio_frames"] == 3072
    assert trainer_eval["inputs"]["empty_modalities"] == "masking_token"
    assert trainer_eval["retrieval"]["t2v+a"]["n_queries"] == N_MSRVTT
    # training clips keep their own lengths
    train_clips = build_train_dataset(cfg)[0]
    assert all(c["video"].shape[0] <= 12 and c["audio"].shape[0] <= 768 for c in train_clips)


def test_converted_store_records_the_text_encoder_and_search_uses_it(field_run, tmp_path, capsys):
    manifest = json.loads((field_run["store"] / "manifest.json").read_text())
    encoder = manifest["splits"]["msrvtt_test"]["text_encoder"]
    vectors = field_run["base"] / "GoogleNews-like.bin"
    assert encoder["name"] == str(vectors.resolve()) and encoder["file_size"] == vectors.stat().st_size
    assert encoder["lowercase"] is False and encoder["max_words"] == 20
    ckpt = field_run["run"] / "checkpoints" / "latest.pt"
    index = tmp_path / "msrvtt.npz"
    assert main(["embed", "--checkpoint", str(ckpt), "--data", str(field_run["store"]), "--split", "msrvtt_test",
                 "--out", str(index)]) == 0
    capsys.readouterr()
    assert main(["search", "a man is cooking pasta", "--index", str(index), "--top", "3"]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if line.strip()]) == 3
    # the word-vector file moved: search says exactly which file to pass
    moved = field_run["base"] / "vectors-moved.bin"
    vectors.rename(moved)
    try:
        assert main(["search", "a man is cooking pasta", "--index", str(index)]) == 2
        err = capsys.readouterr().err
        assert "GoogleNews-like.bin" in err and "--word-vectors" in err
        assert main(["search", "a man is cooking", "--index", str(index), "--word-vectors", str(moved), "--top", "1"]) == 0
    finally:
        moved.rename(vectors)


def _retrieval_numbers(results: dict) -> dict:
    return {split: {label: {k: v for k, v in metrics.items()} for label, metrics in entry["retrieval"].items()}
            for split, entry in results.items()}


def test_eval_numbers_do_not_depend_on_the_batch_size(field_run):
    """Every item is padded to the recorded window (3072 / 4608 audio frames), never to the longest item
    of its batch: DAVEnet's convolutions and eval-mode BatchNorm see the padding, so batch-dependent
    padding moved every audio direction with --batch-size."""
    ckpt = field_run["run"] / "checkpoints" / "latest.pt"
    numbers = {}
    for batch_size in (7, 64):
        out = field_run["base"] / f"eval_bs{batch_size}"
        assert main(["eval", "--checkpoint", str(ckpt), "--data", str(field_run["store"]), "--out", str(out),
                     "--batch-size", str(batch_size)]) == 0
        numbers[batch_size] = _retrieval_numbers(json.loads((out / "results.json").read_text()))
    assert set(numbers[7]["msrvtt_test"]) >= {"t2a", "a2t", "t2v+a", "v+a2t", "v2a"}
    assert numbers[7] == numbers[64]


def test_float16_storage_is_an_explicit_option_and_its_effect_is_measured(field_run, capsys):
    """`data convert --dtype float16` writes a half-precision split (recorded in the manifest and in
    results.json); the same checkpoint then scores it. Prints how far the numbers moved (docs/evaluation.md
    quotes them)."""
    base, store = field_run["base"], field_run["store"]
    vectors = base / "GoogleNews-like.bin"
    pickle_path = base / "msrvtt_jsfusion_test.pkl"
    assert main(["data", "convert", "msrvtt", str(pickle_path), "--out", str(store), "--word-vectors", str(vectors),
                 "--split", "msrvtt_test_fp16", "--dtype", "float16"]) == 0
    assert "in float16" in capsys.readouterr().out
    manifest = json.loads((store / "manifest.json").read_text())
    assert {meta["dtype"] for meta in manifest["splits"]["msrvtt_test_fp16"]["modalities"].values()} == {"float16"}
    ckpt = field_run["run"] / "checkpoints" / "latest.pt"
    out = base / "eval_dtypes"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(store), "--out", str(out),
                 "--split", "msrvtt_test", "--split", "msrvtt_test_fp16"]) == 0
    results = json.loads((out / "results.json").read_text())
    full, half = results["msrvtt_test"], results["msrvtt_test_fp16"]
    assert half["inputs"]["storage_dtype"] == {"text": "float16", "video": "float16", "audio": "float16"}
    moved = {label: max(abs(full["retrieval"][label][k] - half["retrieval"][label][k]) for k in ("R1", "R5", "R10", "MedR"))
             for label in full["retrieval"]}
    print("float16 vs float32 storage, largest change of R1/R5/R10/MedR per direction:", moved)
    assert set(moved) == set(half["retrieval"])
