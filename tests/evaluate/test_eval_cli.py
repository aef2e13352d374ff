"""`multisk eval`, `multisk embed` and `multisk search` from the command line, as a user types them, on a
checkpoint trained on a store shaped like the demo's: a test split, a split without pictures (spoken
captions) and a split without audio."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from multisk.cli import main
from multisk.config import load_config
from multisk.data.store.feature_store import FeatureStore, FeatureStoreWriter
from multisk.evaluate.index import load_index
from multisk.train.trainer import train

from synthetic_store import CLASSES, N_MELS, TEXT_DIM, VIDEO_DIM, tiny_overrides, write_synthetic_store
from repo_paths import REPO

CONFIG = REPO / "configs" / "demo.yaml"


def add_split_without(store_root: Path, source: str, split: str, drop: str) -> None:
    """Copy split ``source`` to ``split`` without modality ``drop`` (the demo's test_audio has no pictures)."""
    store = FeatureStore(store_root, source)
    encoder = store.info.get("text_encoder")
    with FeatureStoreWriter(store_root, split, {"text": TEXT_DIM, "video": VIDEO_DIM, "audio": N_MELS},
                            metadata={"text_encoder": encoder}) as writer:
        for i, item in enumerate(store.items):
            tokens = {m: (store.tokens(m, i) if store.has(m, i) else None) for m in ("text", "video", "audio")}
            tokens[drop] = None
            writer.add(f"{split}-{i}", tokens, caption=item["caption"], category=item["category"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("evalcli")
    store = write_synthetic_store(base / "store")
    add_split_without(store, "test", "test_audio", "video")
    add_split_without(store, "test", "test_no_audio", "audio")
    # the paper's temperature: at this seconds-long schedule the demo's softer 0.1 leaves the tiny model near
    # chance on classification (22 % vs 16.7 %), and this module tests the commands, not the recipe
    cfg = load_config(CONFIG, tiny_overrides(store, base / "run", **{"train.epochs": 6, "train.ema_decay": 0.9,
                                                                     "loss.contrastive.temperature": 0.05}))
    train(cfg, progress=False, make_plots=False)
    return store, base / "run" / "checkpoints" / "latest.pt"


def test_eval_with_default_splits_scores_what_each_split_allows(trained, capsys):
    """The README's command on a demo-shaped store, without --out: exit 0, every split scored as far as
    its modalities allow, the rest listed as skipped with the reason."""
    store, ckpt = trained
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(store)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((ckpt.parent.parent / "eval" / "results.json").read_text())
    assert set(results) == {"test", "test_audio", "test_no_audio"}  # every split but the training split

    test = results["test"]
    assert {"t2v", "v2t", "t2a", "a2t", "t2v+a"} <= set(test["retrieval"])
    assert test["retrieval"]["t2v"]["n_queries"] == sum(1 for i in range(24) if i % 4 != 3)  # pictures excluded
    assert test["inputs"] == {**test["inputs"], "video_tokens": 3, "audio_frames": 128, "text_tokens": 20,
                              "empty_modalities": "excluded", "precision": "fp32"}
    cls = test["classification"]["video"]
    chance = 100 / len(CLASSES)
    assert cls["classes"] == len(CLASSES) and cls["top1"] >= 2 * chance  # 50% measured vs 16.7% chance

    no_pictures = results["test_audio"]
    assert {"t2a", "a2t"} <= set(no_pictures["retrieval"]) and "t2v" not in no_pictures["retrieval"]
    assert no_pictures["skipped"]["directions"]["t2v"] == "no item of this split has video"
    assert no_pictures["skipped"]["directions"]["t2v+a"] == "no item of this split has video"
    assert "video" not in no_pictures["classification"] and "audio" in no_pictures["classification"]
    assert "no item with a category has video" in no_pictures["skipped"]["classification"]["video"]

    no_audio = results["test_no_audio"]
    assert "t2v" in no_audio["retrieval"] and no_audio["skipped"]["directions"]["a2t"] == "no item of this split has audio"

    for split in results:  # the header says what was fed, before the tables
        assert f"{split}: inputs: video 3 tokens, audio 128 frames, text 20 tokens" in printed
    assert "empty modalities: excluded; precision fp32" in printed
    assert "skipped directions: t2v, v2t" in printed and "(no item of this split has video)" in printed
    assert "t2a" in (ckpt.parent.parent / "eval" / "results.md").read_text()


def test_eval_masking_token_mode_makes_every_item_a_query(trained, tmp_path):
    store, ckpt = trained
    args = ["eval", "--checkpoint", str(ckpt), "--data", str(store), "--out", str(tmp_path), "--split", "test"]
    assert main(args + ["--empty-modalities", "masking_token"]) == 0
    test = json.loads((tmp_path / "results.json").read_text())["test"]
    assert test["inputs"]["empty_modalities"] == "masking_token"
    assert all(m["n_queries"] == 24 for m in test["retrieval"].values())


def test_eval_survives_a_moved_word_vector_file(trained, tmp_path):
    """Class names need the store's word vectors; when the file has moved, retrieval is still scored and
    classification is skipped with a reason naming the file and the option that passes it."""
    store, ckpt = trained
    vectors, moved = store / "vectors.txt", tmp_path / "vectors-moved.txt"
    args = ["eval", "--checkpoint", str(ckpt), "--data", str(store), "--split", "test", "--out", str(tmp_path)]
    vectors.rename(moved)
    try:
        assert main(args) == 0
        test = json.loads((tmp_path / "results.json").read_text())["test"]
        assert "t2v" in test["retrieval"] and "classification" not in test
        reason = test["skipped"]["classification"]["all"]
        assert "vectors.txt: word-vector file not found" in reason and "--word-vectors" in reason
        assert main(args + ["--word-vectors", str(moved)]) == 0
        assert "video" in json.loads((tmp_path / "results.json").read_text())["test"]["classification"]
    finally:
        moved.rename(vectors)


def test_eval_ema_uses_the_ema_weights(trained, tmp_path, capsys):
    from multisk.checkpoint import load_checkpoint
    from multisk.evaluate.loading import load_model

    store, ckpt = trained
    state = load_checkpoint(ckpt)
    model, _ = load_model(ckpt, use_ema=True)
    name, value = next((k, v) for k, v in model.state_dict().items() if v.is_floating_point() and v.numel() > 1)
    assert torch.equal(value, state["ema"][f"module.{name}"]) and not torch.equal(value, state["model"][name])
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(store), "--out", str(tmp_path), "--ema",
                 "--split", "test"]) == 0
    assert "(EMA weights)" in capsys.readouterr().out


def _index(trained, tmp_path, split="test") -> Path:
    store, ckpt = trained
    index = tmp_path / "index.npz"
    assert main(["embed", "--checkpoint", str(ckpt), "--data", str(store), "--split", split, "--out", str(index)]) == 0
    return index


def _hits(out: str) -> list[tuple[float, str]]:
    return [(float(line.split()[1]), line.split()[2]) for line in out.splitlines() if line.strip()]


def test_search_ranks_by_cosine_and_finds_the_queried_category(trained, tmp_path, capsys):
    """Every printed score is the cosine of the query with its index row, and the queried category's
    items rank above the others (AUC over the whole ranking; a search that ignored its query would rank
    every category alike: AUC 0.5 on average)."""
    from multisk.evaluate.loading import load_model
    from multisk.evaluate.text_queries import embed_texts

    store, ckpt = trained
    index = _index(trained, tmp_path, split="train")
    items = FeatureStore(store, "train").items
    categories = {it["id"]: it["category"] for it in items}
    rows = {it["id"]: i for i, it in enumerate(items)}
    with np.load(index, allow_pickle=False) as data:
        gallery = torch.nn.functional.normalize(torch.from_numpy(data["joint/video"]), dim=1)
        spec = json.loads(bytes(data["meta"]).decode())["text_encoder"]
    model, _ = load_model(ckpt)
    aucs = []
    for word in CLASSES:
        capsys.readouterr()
        assert main(["search", word, "--index", str(index), "--top", "100"]) == 0
        hits = _hits(capsys.readouterr().out)
        assert len(hits) == sum(1 for i in range(48) if i % 4 != 3)  # every item with a picture, none without
        assert [s for s, _ in hits] == sorted((s for s, _ in hits), reverse=True)
        query, _ = embed_texts(model, [word], spec, device="cpu")
        for score, item in hits:
            assert score == pytest.approx(float(gallery[rows[item]] @ query[0]), abs=1e-4)
        positives = [s for s, item in hits if categories[item] == word]
        negatives = [s for s, item in hits if categories[item] != word]
        aucs.append(np.mean([[p > n for n in negatives] for p in positives]))
    assert np.mean(aucs) >= 0.65  # 0.81 measured


def test_search_refuses_queries_and_targets_it_cannot_answer(trained, tmp_path, capsys):
    index = _index(trained, tmp_path / "a")
    capsys.readouterr()
    assert main(["search", "xyzzy qwerty", "--index", str(index)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "none of its words is in the vocabulary" in captured.err
    no_audio = _index(trained, tmp_path / "b", split="test_no_audio")
    capsys.readouterr()
    assert main(["search", "a cat", "--index", str(no_audio), "--target", "audio"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "no item of the index has audio" in captured.err
    assert main(["search", "cat", "--index", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz: index not found" in capsys.readouterr().err
    assert main(["search", "cat", "--index", str(index), "--target", "smell"]) == 2
    assert "--target 'smell'" in capsys.readouterr().err


def test_index_moved_with_its_run_folder_still_searches(trained, tmp_path, capsys):
    """The index names its checkpoint relative to itself; the absolute path it recorded is gone."""
    store, ckpt = trained
    run = tmp_path / "run"
    shutil.copytree(ckpt.parent.parent, run)
    index = run / "index.npz"
    assert main(["embed", "--checkpoint", str(run / "checkpoints" / "latest.pt"), "--data", str(store),
                 "--split", "test", "--out", str(index)]) == 0
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(str(run), str(moved))
    capsys.readouterr()
    assert main(["search", "a dog", "--index", str(moved / "index.npz"), "--top", "2"]) == 0
    assert len(_hits(capsys.readouterr().out)) == 2
    # another checkpoint in its place is refused: its scores would mean nothing (the place: the copy of
    # the checkpoint that `multisk embed` put beside the index, which the index names first)
    record = load_index(moved / "index.npz")["meta"]["checkpoint"]
    assert record["relative"].startswith("checkpoints/") and record["relative"] != "checkpoints/latest.pt"
    other = moved / record["relative"]
    state = torch.load(other, weights_only=False)
    state["step"] = int(state.get("step", 0)) + 1
    torch.save(state, other)
    assert main(["search", "a dog", "--index", str(moved / "index.npz")]) == 2
    assert "SHA-256 differs" in capsys.readouterr().err
    assert main(["search", "a dog", "--index", str(moved / "index.npz"), "--checkpoint", str(ckpt), "--top", "1"]) == 0


def test_eval_of_a_corrupt_checkpoint_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", "--checkpoint", str(bad), "--data", str(tmp_path)]) == 2
    assert "bad.pt: " in capsys.readouterr().err
