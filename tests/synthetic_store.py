"""A small synthetic feature store for application tests: paired items share a latent class, so the
model can actually learn to retrieve; some items lack pictures or audio, as in the real benchmark.
Captions are real words ("a small cat") whose tokens come from a word-vector file written beside the
store and recorded as its text encoder, so class names and search queries can be embedded too."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multisk.data.store.feature_store import FeatureStoreWriter

TEXT_DIM, VIDEO_DIM, N_MELS = 12, 16, 40
CLASSES = ["cat", "dog", "car", "tree", "boat", "house"]
FILLERS = ["a", "the", "small", "big", "red", "old"]


def write_word_vectors(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    vectors = {w: rng.standard_normal(TEXT_DIM) for w in CLASSES}
    vectors.update({w: 0.3 * rng.standard_normal(TEXT_DIM) for w in FILLERS})
    lines = [f"{len(vectors)} {TEXT_DIM}"] + [w + " " + " ".join(f"{x:.6f}" for x in v) for w, v in vectors.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vectors


def write_synthetic_store(root: Path, n_train: int = 48, n_test: int = 24, seed: int = 0,
                          minilm_dim: int = 0, extra_dims: dict[str, int] | None = None, n_val: int = 0) -> Path:
    """``minilm_dim > 0`` adds a second text modality ``text_minilm`` (3 class-dependent tokens of that
    size per item, as a sentence encoder's token states would be), drawn from its own generator so the
    other modalities do not change. ``extra_dims`` (name -> width, e.g. ``{"flow": 24}``) adds further
    class-dependent token modalities, item i with ``2 + i % 7`` tokens (so budgets crop some), every
    fifth item without it; each from its own generator, so the other modalities do not change either.
    ``n_val > 0`` adds a ``val`` split drawn like the others."""
    from multisk.data.encoders.text import encode_text
    from multisk.data.encoders.word_vectors import load_word_vectors

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    vectors_path = root / "vectors.txt"
    write_word_vectors(vectors_path, rng)
    kv = load_word_vectors(str(vectors_path), use_cache=False)
    encoder = {"name": str(vectors_path), "lowercase": False, "max_words": 20}
    video_basis = rng.standard_normal((len(CLASSES), VIDEO_DIM))
    mel_basis = rng.standard_normal((len(CLASSES), N_MELS))
    minilm_rng = np.random.default_rng([seed, 1])
    minilm_basis = minilm_rng.standard_normal((len(CLASSES), max(minilm_dim, 1)))
    modalities = {"text": TEXT_DIM, "video": VIDEO_DIM, "audio": N_MELS}
    if minilm_dim:
        modalities["text_minilm"] = minilm_dim
    extra_dims = dict(extra_dims or {})
    extra_rngs = {name: np.random.default_rng([seed, 2, k]) for k, name in enumerate(extra_dims)}
    extra_bases = {name: extra_rngs[name].standard_normal((len(CLASSES), d)) for name, d in extra_dims.items()}
    modalities.update(extra_dims)
    # a "val" split (n_val > 0) comes last, so the other splits are the same with or without it
    splits = (("train", n_train), ("test", n_test)) + ((("val", n_val),) if n_val else ())
    for split, count in splits:
        with FeatureStoreWriter(root, split, modalities, metadata={"text_encoder": encoder}) as w:
            for i in range(count):
                c = int(rng.integers(len(CLASSES)))
                caption = f"{FILLERS[int(rng.integers(len(FILLERS)))]} {FILLERS[int(rng.integers(len(FILLERS)))]} {CLASSES[c]}"
                text = encode_text(kv, caption)
                video = None if i % 4 == 3 else video_basis[c] + 0.3 * rng.standard_normal((3, VIDEO_DIM))
                audio = None if i % 3 == 2 else mel_basis[c] + 0.3 * rng.standard_normal((int(rng.integers(40, 130)), N_MELS))
                tokens = {"text": text, "video": video, "audio": audio}
                if minilm_dim:
                    tokens["text_minilm"] = minilm_basis[c] + 0.3 * minilm_rng.standard_normal((3, minilm_dim))
                for name, d in extra_dims.items():
                    noise = 0.3 * extra_rngs[name].standard_normal((2 + i % 7, d))
                    tokens[name] = None if i % 5 == 4 else extra_bases[name][c] + noise
                w.add(f"{split}-{i}", tokens, caption=caption, category=CLASSES[c])
    return root


def tiny_overrides(root: Path, out: Path, **extra) -> list[str]:
    """key=value overrides turning configs/demo.yaml into a seconds-long CPU run on the synthetic store."""
    values = {
        "data.root": str(root), "data.modality_map.text": "text", "data.eval_splits": "[test]", "data.max_audio_frames": 128,
        "data.max_video_tokens": 3,
        "model.text_dim": TEXT_DIM, "model.video_dim": VIDEO_DIM, "model.embed_dim": 32, "model.num_heads": 4,
        "model.projection_dim": 24, "model.num_anchors": 8, "model.audio_width_divisor": 32,
        "loss.sspc.queue_size": 16, "train.batch_size": 8, "train.epochs": 2, "train.log_every": 1,
        "train.output_dir": str(out), "train.lr": 0.001,
        # the demo's text-space prior needs a val split and Lite0/MiniLM for its concept head: off here,
        # on in tests/prior/test_prior.py and tests/cli/test_demo.py (stores written with n_val > 0)
        "model.prior.enabled": "false", "model.prior.concept_classes": 0, "data.val_split": "null",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
