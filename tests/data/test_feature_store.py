"""The feature store round-trips items exactly and rejects inconsistent content by file and field."""

import json

import numpy as np
import pytest

from multisk.data.store.feature_store import FeatureStore, FeatureStoreError, FeatureStoreWriter


def _write(root, split="train"):
    rng = np.random.default_rng(0)
    items = []
    with FeatureStoreWriter(root, split, {"text": 5, "audio": 3}, metadata={"complete_size": 10}) as w:
        for i in range(4):
            text = rng.standard_normal((i + 1, 5)).astype(np.float16)
            audio = None if i == 2 else rng.standard_normal((7 * i + 1, 3)).astype(np.float16)
            w.add(f"item{i}", {"text": text, "audio": audio}, caption=f"caption {i}", category="c")
            items.append((text, audio))
    return items


def test_round_trip_is_exact_and_memory_mapped(tmp_path):
    items = _write(tmp_path)
    store = FeatureStore(tmp_path, "train")
    assert len(store) == 4 and store.modalities == {"text": 5, "audio": 3}
    assert store.info["complete_size"] == 10
    for i, (text, audio) in enumerate(items):
        np.testing.assert_array_equal(store.tokens("text", i), text)
        if audio is None:
            assert store.tokens("audio", i).shape == (0, 3) and not store.has("audio", i)
        else:
            np.testing.assert_array_equal(store.tokens("audio", i), audio)
    assert isinstance(store._data["text"], np.memmap)
    assert [it["caption"] for it in store] == [f"caption {i}" for i in range(4)]
    store.verify()


def test_second_split_keeps_the_first(tmp_path):
    _write(tmp_path, "train")
    _write(tmp_path, "test")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "test"}


@pytest.mark.parametrize(
    "tokens, match",
    [
        ({"text": np.zeros((2, 4))}, r"field 'text': expected shape \(T, 5\)"),
        ({"text": np.full((2, 5), np.nan)}, "field 'text': contains NaN or inf"),
        ({"video": np.zeros((2, 5))}, "unknown modality"),
    ],
)
def test_writer_rejects_bad_items(tmp_path, tokens, match):
    with pytest.raises(FeatureStoreError, match=match):
        with FeatureStoreWriter(tmp_path, "train", {"text": 5}) as w:
            w.add("a", tokens)


def test_duplicate_ids_rejected(tmp_path):
    with FeatureStoreWriter(tmp_path, "train", {"text": 5}) as w:
        w.add("a", {"text": np.zeros((1, 5))})
        with pytest.raises(FeatureStoreError, match="duplicate item id 'a'"):
            w.add("a", {"text": np.zeros((1, 5))})


def test_reader_names_the_damaged_file(tmp_path):
    _write(tmp_path)
    with pytest.raises(FeatureStoreError, match="no split 'test'"):
        FeatureStore(tmp_path, "test")
    binary = tmp_path / "train" / "audio.bin"
    binary.write_bytes(binary.read_bytes()[:-2])  # truncated
    with pytest.raises(FeatureStoreError, match="audio.bin: size"):
        FeatureStore(tmp_path, "train")


def test_checksum_mismatch_detected(tmp_path):
    _write(tmp_path)
    binary = tmp_path / "train" / "text.bin"
    data = bytearray(binary.read_bytes())
    data[0] ^= 0xFF
    binary.write_bytes(bytes(data))
    with pytest.raises(FeatureStoreError, match="sha256"):
        FeatureStore(tmp_path, "train").verify()


def test_missing_or_foreign_manifest(tmp_path):
    with pytest.raises(FeatureStoreError, match="manifest not found"):
        FeatureStore(tmp_path, "train")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other", "version": 1, "splits": {}}))
    with pytest.raises(FeatureStoreError, match="field 'format'"):
        FeatureStore(tmp_path, "train")
