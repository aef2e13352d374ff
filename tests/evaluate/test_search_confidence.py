"""`multisk search`'s calibrated low-confidence notice (multisk.evaluate.search_calibration): `multisk embed`
records, per search target, the 5th percentile of real captions' best scores against the index; a query
scoring below it is still answered (exit 0, results on stdout) with a notice on stderr. Checked on a small
model trained on the synthetic store, with the CLI as a user types it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from multisk.cli import main
from multisk.config import load_config
from multisk.data.store.feature_store import FeatureStore, FeatureStoreWriter
from multisk.data.encoders.text import encode_text
from multisk.data.encoders.word_vectors import load_word_vectors
from multisk.evaluate.index import load_index, search_index
from multisk.evaluate.loading import load_model
from multisk.evaluate.search_calibration import best_scores
from multisk.evaluate.text_queries import embed_texts
from multisk.train.trainer import train

from synthetic_store import CLASSES, FILLERS, N_MELS, TEXT_DIM, VIDEO_DIM, tiny_overrides, write_synthetic_store
from repo_paths import REPO

CONFIG = REPO / "configs" / "demo.yaml"
VOCABULARY = CLASSES + FILLERS


def add_caption_split(root: Path, split: str, count: int, seed: int, role: str | None,
                      unknown: tuple[str, ...] = ()) -> list[str]:
    """A split of new captions (text only), drawn like the store's own, recorded with ``role``; then the
    ``unknown`` captions (no word in the vocabulary: no text tokens)."""
    rng = np.random.default_rng(seed)
    encoder = FeatureStore(root, "train").info["text_encoder"]
    kv = load_word_vectors(encoder["name"], use_cache=False)
    metadata = {"text_encoder": encoder, **({"role": role} if role else {})}
    captions = []
    with FeatureStoreWriter(root, split, {"text": TEXT_DIM, "video": VIDEO_DIM, "audio": N_MELS},
                            metadata=metadata) as writer:
        for i in range(count):
            caption = f"{rng.choice(FILLERS)} {rng.choice(FILLERS)} {rng.choice(CLASSES)}"
            writer.add(f"{split}-{i}", {"text": encode_text(kv, caption)}, caption=caption)
            captions.append(caption)
        for i, caption in enumerate(unknown):
            assert len(encode_text(kv, caption)) == 0
            writer.add(f"{split}-unknown{i}", {"text": None}, caption=caption)
    return captions


def copy_split(root: Path, source: str, split: str, role: str) -> None:
    store = FeatureStore(root, source)
    with FeatureStoreWriter(root, split, {"text": TEXT_DIM, "video": VIDEO_DIM, "audio": N_MELS},
                            metadata={"text_encoder": store.info["text_encoder"], "role": role}) as writer:
        for i, item in enumerate(store.items):
            tokens = {m: (store.tokens(m, i) if store.has(m, i) else None) for m in ("text", "video", "audio")}
            writer.add(f"{split}-{i}", tokens, caption=item["caption"], category=item["category"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("confidence")
    store = write_synthetic_store(base / "store")
    cfg = load_config(CONFIG, tiny_overrides(store, base / "run", **{"train.epochs": 4}))
    train(cfg, progress=False, make_plots=False)
    add_caption_split(store, "val", 30, seed=5, role="validation", unknown=("zzz qqq", "xyzzy"))
    return store, base / "run" / "checkpoints" / "latest.pt"


def _embed(store, ckpt, out: Path, split: str = "test", *extra: str) -> Path:
    assert main(["embed", "--checkpoint", str(ckpt), "--data", str(store), "--split", split, "--out", str(out),
                 *extra]) == 0
    return out


def _search(capsys, query: str, index: Path, *extra: str):
    capsys.readouterr()
    code = main(["search", query, "--index", str(index), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _reference_best(model, spec, captions, gallery, valid, own_rows=None) -> np.ndarray:
    """Each caption's best score, with a Python loop over the gallery rows."""
    queries = embed_texts(model, captions, spec, device="cpu")[0].numpy().astype(np.float64)
    best = []
    for c, query in enumerate(queries):
        scores = [float(np.dot(gallery[i], query)) for i in range(len(gallery))
                  if valid[i] and (own_rows is None or i != own_rows[c])]
        best.append(max(scores))
    return np.asarray(best)


def _gallery(index: Path, target: str = "video"):
    with np.load(index, allow_pickle=False) as data:
        rows = data[f"joint/{target}"].astype(np.float64)
        valid = data[f"nonempty/{target}"]
        meta = json.loads(bytes(data["meta"]).decode("utf-8"))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True), valid, meta


def test_threshold_is_the_5th_percentile_of_held_out_captions_best_search_scores(trained, tmp_path, capsys):
    store, ckpt = trained
    captions = [item["caption"] for item in FeatureStore(store, "val").items][:30]
    index = _embed(store, ckpt, tmp_path / "index.npz")
    assert "calibration: 30 captions (held-out split 'val')" in capsys.readouterr().out
    gallery, valid, meta = _gallery(index)
    record = meta["calibration"]
    assert record["split"] == "val" and record["leave_own_item_out"] is False and record["quantile"] == 0.05
    # a caption without any in-vocabulary word is not a query search would answer: left out, counted
    assert record["captions"] == 30 and record["captions_without_tokens"] == 2
    model, _ = load_model(ckpt)
    best = _reference_best(model, meta["text_encoder"], captions, gallery, valid)
    assert record["targets"]["video"]["threshold"] == pytest.approx(np.percentile(best, 5), abs=1e-5)
    # ... which is what search itself scores those captions
    loaded = load_index(index)
    searched = [search_index(loaded, caption, top=1)[0]["score"] for caption in captions[:3]]
    np.testing.assert_allclose(searched, best[:3], atol=1e-5)
    # every target a search can name is calibrated, each against its own items
    assert set(record["targets"]) == {"video", "audio", "video+audio", "any"}
    audio, audio_valid, _ = _gallery(index, "audio")
    best_audio = _reference_best(model, meta["text_encoder"], captions, audio, audio_valid)
    assert record["targets"]["audio"]["threshold"] == pytest.approx(np.percentile(best_audio, 5), abs=1e-5)


def test_own_captions_calibrate_with_each_ones_item_left_out(trained, tmp_path, capsys):
    """Without a validation split, the indexed split's own captions, each scored without its paired item."""
    store, ckpt = trained
    plain = tmp_path / "store"
    write_synthetic_store(plain)  # same seed: same store and word vectors, but no val split
    index = _embed(plain, ckpt, tmp_path / "index.npz", "train")
    gallery, valid, meta = _gallery(index)
    record = meta["calibration"]
    assert record["split"] == "train" and record["leave_own_item_out"] is True and record["captions"] == 48
    model, _ = load_model(ckpt)
    captions = [item["caption"] for item in FeatureStore(plain, "train").items]
    best = _reference_best(model, meta["text_encoder"], captions, gallery, valid, own_rows=list(range(48)))
    assert record["targets"]["video"]["threshold"] == pytest.approx(np.percentile(best, 5), abs=1e-5)
    assert record["targets"]["video"]["median"] == pytest.approx(np.median(best), abs=1e-5)


def test_best_scores_skip_the_own_row_and_invalid_rows():
    """Hand-built: each query's own row is its best match, so leaving it out must change every score."""
    rng = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(7, 5, dtype=torch.float64, generator=rng), dim=1)
    noise = 0.05 * torch.randn(4, 5, dtype=torch.float64, generator=rng)
    queries = torch.nn.functional.normalize(gallery[:4] + noise, dim=1)
    valid = torch.tensor([True, True, True, True, False, True, True])
    own = torch.tensor([0, 1, 2, 3])
    got = best_scores(queries, gallery, valid, own).numpy()
    expected = [max(float(queries[c] @ gallery[i]) for i in range(7) if valid[i] and i != c) for c in range(4)]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    with_own = best_scores(queries, gallery, valid).numpy()
    np.testing.assert_allclose(with_own, [float(queries[c] @ gallery[c]) for c in range(4)], atol=1e-12)
    assert (with_own > got).all()


def test_a_low_scoring_query_gets_the_notice_and_a_real_caption_does_not(trained, tmp_path, capsys):
    store, ckpt = trained
    captions = [item["caption"] for item in FeatureStore(store, "val").items][:30]
    index = _embed(store, ckpt, tmp_path / "index.npz")
    gallery, valid, meta = _gallery(index)
    threshold = meta["calibration"]["targets"]["video"]["threshold"]
    model, _ = load_model(ckpt)
    # the query built to score low: the one- or two-word query whose best match is the worst
    queries = VOCABULARY + [f"{a} {b}" for a in VOCABULARY for b in VOCABULARY if a != b]
    embedded, _ = embed_texts(model, queries, meta["text_encoder"], device="cpu")
    best = (embedded.double().numpy() @ gallery[valid].T).max(axis=1)
    low = queries[int(np.argmin(best))]
    assert best.min() < threshold, (best.min(), threshold)  # precondition of the check below
    code, out, err = _search(capsys, low, index, "--top", "3")
    assert code == 0 and len(out.splitlines()) == 3  # still answered
    notice = [line for line in err.splitlines() if line.startswith("low confidence")]
    assert len(notice) == 1
    said = re.fullmatch(r"low confidence: best score (\S+) is below (\S+), the best score that 95% of 30 real "
                        r"captions \(held-out split 'val'\) reach in this index; the results are probably "
                        r"unrelated to the query", notice[0])
    assert said is not None, notice[0]
    assert float(said[1]) == pytest.approx(best.min(), abs=6e-4) and float(said[2]) == pytest.approx(threshold, abs=6e-4)
    # a calibration caption that reaches the threshold (95% of them do) is answered without a notice
    real_best = _reference_best(model, meta["text_encoder"], captions, gallery, valid)
    real = captions[int(np.argsort(real_best)[len(captions) // 2])]
    code, out, err = _search(capsys, real, index, "--top", "3")
    assert code == 0 and len(out.splitlines()) == 3
    assert "low confidence" not in err and "calibration" not in err
    # the notice is per target: audio has its own threshold
    audio_threshold = meta["calibration"]["targets"]["audio"]["threshold"]
    code, out, err = _search(capsys, low, index, "--target", "audio", "--top", "1")
    assert code == 0 and (float(out.split()[1]) < audio_threshold) == ("low confidence" in err)


def test_an_index_without_calibration_still_searches_with_a_one_line_note(trained, tmp_path, capsys):
    store, ckpt = trained
    index = _embed(store, ckpt, tmp_path / "index.npz")
    with np.load(index, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(bytes(arrays["meta"]).decode("utf-8"))
    del meta["calibration"]
    meta["version"] = 2  # as `multisk embed` wrote it before calibration existed
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    code, out, err = _search(capsys, "a small cat", old, "--top", "2")
    assert code == 0 and len(out.splitlines()) == 2
    notes = [line for line in err.splitlines() if "calibration" in line]
    assert len(notes) == 1 and notes[0].startswith("note: this index records no score calibration")


def test_test_splits_never_calibrate(trained, tmp_path, capsys):
    """A split the manifest marks role 'test' is neither chosen nor accepted by name; without another
    source the index records why it has no calibration and search says so."""
    store, ckpt = trained
    plain = tmp_path / "store"
    write_synthetic_store(plain)
    copy_split(plain, "test", "bench_test", role="test")
    capsys.readouterr()
    assert main(["embed", "--checkpoint", str(ckpt), "--data", str(plain), "--split", "test", "--out",
                 str(tmp_path / "x.npz"), "--calibration-split", "bench_test"]) == 2
    assert "--calibration-split 'bench_test': the manifest marks it role 'test'" in capsys.readouterr().err
    index = _embed(plain, ckpt, tmp_path / "bench.npz", "bench_test")
    out = capsys.readouterr().out
    assert "note: no low-confidence calibration for `multisk search`: the store has no validation split" in out
    code, hits, err = _search(capsys, "a small cat", index, "--top", "2")
    assert code == 0 and len(hits.splitlines()) == 2
    assert [line for line in err.splitlines() if "calibration" in line] == [
        "note: this index has no score calibration: the store has no validation split (role 'validation' or named "
        "val/valid/validation) and the indexed split 'bench_test' is a test split"]
    # a named non-test split calibrates it
    index = _embed(plain, ckpt, tmp_path / "named.npz", "bench_test", "--calibration-split", "train")
    assert load_index(index)["meta"]["calibration"]["split"] == "train"
    assert torch.isfinite(torch.tensor(load_index(index)["meta"]["calibration"]["targets"]["video"]["threshold"]))


def test_the_models_own_validation_split_is_preferred(tmp_path, capsys):
    """A checkpoint trained with ``data.val_split: dev`` calibrates on ``dev`` where the store has it, over
    a split the manifest calls 'validation'."""
    store = write_synthetic_store(tmp_path / "store")
    add_caption_split(store, "dev", 25, seed=7, role=None)
    add_caption_split(store, "val", 25, seed=8, role="validation")
    cfg = load_config(CONFIG, tiny_overrides(store, tmp_path / "run", **{"train.epochs": 1, "data.val_split": "dev"}))
    train(cfg, progress=False, make_plots=False)
    index = _embed(store, tmp_path / "run" / "checkpoints" / "latest.pt", tmp_path / "index.npz")
    assert load_index(index)["meta"]["calibration"]["split"] == "dev"
    assert "calibration: 25 captions (held-out split 'dev')" in capsys.readouterr().out
