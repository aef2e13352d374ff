"""Queries and class names are embedded exactly like the store's text tokens, with whichever text
encoder the store recorded: GloVe / word2vec words (store modality ``text``) or MiniLM token embeddings
from the packaged weights (``text_minilm``). Property checked: a caption typed as a query gets the same
joint embedding as the stored item's text."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from multisk.config import load_config
from multisk.data.store.dataset import FeatureStoreDataset, collate_batch
from multisk.data.store.feature_store import FeatureStoreWriter, read_manifest
from multisk.evaluate.classification import classify_by_category
from multisk.evaluate.text_queries import embed_texts, query_encoder_spec
from multisk.models import build_model
from repo_paths import REPO

CONFIG = REPO / "configs" / "demo.yaml"
CAPTIONS = ["a red car on the road", "a smiling cat", "pizza with cheese", "qqqxj blorptang"]
CATEGORIES = ["car", "cat", "pizza", "car"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store made the way `multisk data prepare folder` makes one: GloVe ``text`` and MiniLM
    ``text_minilm`` of each caption, both encoders recorded."""
    from multisk.data.encoders.encoding import GLOVE_NAME, CaptionEncoder

    root = tmp_path_factory.mktemp("queries") / "store"
    encoder = CaptionEncoder(cache=None)
    minilm = encoder.minilm_tokens(CAPTIONS)
    rng = np.random.default_rng(0)
    metadata = {"text_encoder": {"name": GLOVE_NAME, "lowercase": True, "max_words": 20},
                "text_encoders": {"text": GLOVE_NAME, "text_minilm": CaptionEncoder.minilm_description()}}
    with FeatureStoreWriter(root, "test", {"text": 50, "text_minilm": 384, "video": 16, "audio": 40},
                            metadata=metadata, dtype="float32") as writer:
        for i, (caption, category) in enumerate(zip(CAPTIONS, CATEGORIES)):
            glove = encoder.glove_tokens(caption)
            writer.add(f"item{i}", {"text": glove if len(glove) else None, "text_minilm": minilm[i],
                                    "video": rng.standard_normal((2, 16)), "audio": rng.standard_normal((50, 40))},
                       caption=caption, category=category)
    return root


def model_reading(text_dim: int):
    cfg = load_config(CONFIG, [f"model.text_dim={text_dim}", "model.video_dim=16", "model.embed_dim=32",
                               "model.num_heads=4", "model.projection_dim=24", "model.num_anchors=8",
                               "model.audio_width_divisor=32"])
    torch.manual_seed(0)
    return build_model(cfg.model).eval()


@pytest.mark.parametrize("store_modality, text_dim, kind", [("text", 50, "word_vectors"), ("text_minilm", 384, "minilm")])
def test_a_caption_typed_as_a_query_embeds_like_the_stored_item(store, store_modality, text_dim, kind):
    spec = query_encoder_spec(read_manifest(store), "test", store_modality)
    assert spec is not None and spec["kind"] == kind
    model = model_reading(text_dim)
    dataset = FeatureStoreDataset(store, "test", {"text": store_modality, "video": "video", "audio": "audio"})
    with torch.no_grad():
        stored = model(collate_batch([dataset[i] for i in range(3)]))["joint_normalized"]["text"]
    typed, has_tokens = embed_texts(model, CAPTIONS[:3], spec, device="cpu")
    assert has_tokens.all()
    torch.testing.assert_close(typed, stored, atol=1e-5, rtol=1e-4)
    # another caption's embedding differs: the query really is read
    assert (typed[0] - stored[1]).abs().max() > 1e-2


def test_a_query_without_any_vocabulary_word_is_flagged(store):
    spec = query_encoder_spec(read_manifest(store), "test", "text")
    _, has_tokens = embed_texts(model_reading(50), ["qqqxj blorptang", "a cat"], spec, device="cpu")
    assert has_tokens.tolist() == [False, True]


def test_classification_uses_the_minilm_encoder_of_a_minilm_model(store):
    """A model reading ``text_minilm`` is never refused: class names go through MiniLM."""
    from multisk.evaluate.pipeline import embed_dataset

    model = model_reading(384)
    dataset = FeatureStoreDataset(store, "test", {"text": "text_minilm", "video": "video", "audio": "audio"})
    emb = embed_dataset(model, dataset)
    results, skipped = classify_by_category(model, dataset, emb, read_manifest(store), device="cpu")
    assert set(results) == {"video", "audio", "video+audio"} and not skipped
    assert results["video"]["classes"] == 3 and results["video"]["n_items"] == 4
