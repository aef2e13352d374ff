"""FeatureStoreDataset, cropping and collate_batch (the batch dict of docs/architecture.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from multisk.data.store.dataset import FeatureStoreDataset, collate_batch, crop_tokens
from multisk.data.store.feature_store import FeatureStoreError, FeatureStoreWriter


def write_store(root, n_items=5, seed=0, with_audio=True):
    rng = np.random.default_rng(seed)
    dims = {"text": 6, "video": 10, "audio": 4} if with_audio else {"text": 6, "video": 10}
    lengths = []
    with FeatureStoreWriter(root, "train", dims, dtype="float32") as writer:
        for i in range(n_items):
            lt, lv, la = (3 + i) % 7, 2 + 3 * i, 50 * i  # item 0 has no audio, item 4 has 14 video tokens
            tokens = {"text": rng.standard_normal((lt, 6)) if lt else None, "video": rng.standard_normal((lv, 10))}
            if with_audio:
                tokens["audio"] = rng.standard_normal((la, 4)) if la else None
            writer.add(f"item{i}", tokens, caption=f"caption {i % 3}", category=f"cat{i % 2}")
            lengths.append((lt, lv, la))
    return lengths


def test_crop_tokens_modes_against_literal_indices():
    x = np.arange(10)[:, None] * np.ones((1, 3))
    assert crop_tokens(x, 4, "start")[:, 0].tolist() == [0, 1, 2, 3]
    assert crop_tokens(x, 4, "center")[:, 0].tolist() == [3, 4, 5, 6]
    assert crop_tokens(x, 4, "even")[:, 0].tolist() == [0, 3, 6, 9]
    assert crop_tokens(x, 12, "center").shape == (10, 3)
    with pytest.raises(ValueError, match="unknown crop mode"):
        crop_tokens(x, 4, "middle")


def test_collate_pads_builds_masks_and_transposes_audio():
    rng = np.random.default_rng(0)
    items = []
    for i, (lt, lv, la) in enumerate([(3, 2, 7), (0, 4, 0), (5, 1, 3)]):
        items.append({"text": torch.from_numpy(rng.standard_normal((lt, 6)).astype(np.float32)),
                      "video": torch.from_numpy(rng.standard_normal((lv, 10)).astype(np.float32)),
                      "audio": torch.from_numpy(rng.standard_normal((la, 4)).astype(np.float32)),
                      "index": 10 + i, "id": f"x{i}"})
    batch = collate_batch(items)
    assert set(batch) == {"text", "text_mask", "video", "video_mask", "audio", "audio_mask", "index", "id"}
    assert batch["text"].shape == (3, 5, 6) and batch["video"].shape == (3, 4, 10)
    assert batch["audio"].shape == (3, 4, 7) and batch["audio_mask"].shape == (3, 7)
    assert batch["text_mask"].tolist() == [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["audio_mask"].sum(1).tolist() == [7, 0, 3]
    for b, item in enumerate(items):
        la = item["audio"].shape[0]
        torch.testing.assert_close(batch["audio"][b, :, :la], item["audio"].T)  # (n_mels, F)
        assert not batch["audio"][b, :, la:].any() and not batch["text"][b, item["text"].shape[0]:].any()
    assert batch["index"].dtype == torch.int64 and batch["index"].tolist() == [10, 11, 12]
    assert batch["id"] == ["x0", "x1", "x2"]
    fixed = collate_batch(items, pad_to={"text": 20, "video": 12, "audio": 64})
    assert fixed["text"].shape == (3, 20, 6) and fixed["audio"].shape == (3, 4, 64)
    with pytest.raises(ValueError, match="'x0' field 'audio'"):
        collate_batch(items, pad_to={"audio": 5})


def test_feature_store_dataset_items_crops_and_metadata(tmp_path):
    lengths = write_store(tmp_path)
    ds = FeatureStoreDataset(tmp_path, "train", max_tokens={"text": 4, "video": 5, "audio": 100})
    assert len(ds) == 5 and ds.ids[2] == "item2" and ds.complete_size == 5
    assert ds.captions == ["caption 0", "caption 1", "caption 2", "caption 0", "caption 1"]
    assert ds.categories == ["cat0", "cat1", "cat0", "cat1", "cat0"]
    for i, (lt, lv, la) in enumerate(lengths):
        item = ds[i]
        stored_video = ds.store.tokens("video", i)
        assert item["text"].shape == (min(lt, 4), 6)
        np.testing.assert_array_equal(item["text"].numpy(), ds.store.tokens("text", i)[:4])
        start = (lv - 5) // 2 if lv > 5 else 0
        np.testing.assert_array_equal(item["video"].numpy(), stored_video[start:start + 5])
        assert item["audio"].shape == (min(la, 100), 4)
        if la > 100:
            s = (la - 100) // 2
            np.testing.assert_array_equal(item["audio"].numpy(), ds.store.tokens("audio", i)[s:s + 100])
    batch = ds.collate_fn([ds[i] for i in range(5)])
    assert batch["text"].shape == (5, 4, 6) and batch["video"].shape == (5, 5, 10) and batch["audio"].shape == (5, 4, 100)
    assert batch["audio_mask"][0].sum() == 0 and batch["audio_mask"][4].sum() == 100


def test_missing_modality_needs_dims_and_is_empty(tmp_path):
    write_store(tmp_path, with_audio=False)
    with pytest.raises(FeatureStoreError, match="no modality 'audio'"):
        FeatureStoreDataset(tmp_path, "train")
    ds = FeatureStoreDataset(tmp_path, "train", dims={"audio": 40})
    assert ds[1]["audio"].shape == (0, 40)
    assert ds.collate_fn([ds[0], ds[1]])["audio_mask"].sum() == 0


def test_a_remapped_modality_the_store_lacks_is_an_error_even_with_dims(tmp_path):
    # data.modality_map.text=text_minilm on a store without text_minilm must not train on masking tokens
    write_store(tmp_path)
    with pytest.raises(FeatureStoreError, match="no modality 'text_minilm' for model modality 'text'"):
        FeatureStoreDataset(tmp_path, "train", {"text": "text_minilm", "video": "video", "audio": "audio"},
                            dims={"text": 384, "video": 10, "audio": 4})


def test_resumable_batch_sampler_ranks_join_to_the_global_batch_and_resume_exactly(tmp_path):
    from multisk.config import ConfigError
    from multisk.train.sampling import ResumableBatchSampler

    n, global_batch = 23, 6
    single = list(ResumableBatchSampler(n, global_batch, seed=3, epoch=2))
    # the documented order: torch.randperm with generator seed 3 * 100003 + epoch, cut into global
    # batches, the incomplete last one (23 = 3 x 6 + 5) dropped
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3 * 100_003 + 2)).tolist()
    assert single == [perm[0:6], perm[6:12], perm[12:18]]
    assert list(ResumableBatchSampler(n, global_batch, seed=3, epoch=3)) != single
    for world in (2, 3):
        ranks = [list(ResumableBatchSampler(n, global_batch, seed=3, epoch=2, rank=r, world_size=world))
                 for r in range(world)]
        assert all(len(batch) == global_batch // world for batches in ranks for batch in batches)
        joined = [[i for r in range(world) for i in ranks[r][b]] for b in range(len(single))]
        assert joined == single  # the ranks' shares, in rank order, are the single-process batch
        # resuming at global batch 1, on this world size, continues exactly where one process would be
        resumed = [list(ResumableBatchSampler(n, global_batch, seed=3, epoch=2, start_batch=1, rank=r,
                                              world_size=world)) for r in range(world)]
        assert [[i for r in range(world) for i in resumed[r][b]] for b in range(2)] == single[1:]
    with pytest.raises(ConfigError, match="does not divide"):
        ResumableBatchSampler(n, global_batch, seed=3, world_size=4)
    # through a DataLoader over a store: the batches are the sampler's indices, and deterministic
    write_store(tmp_path, n_items=5)
    ds = FeatureStoreDataset(tmp_path, "train")
    sampler = ResumableBatchSampler(len(ds), 2, seed=1, epoch=0)
    seen = [b["index"].tolist() for b in DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate_fn)]
    assert seen == list(sampler) and len(seen) == 2
