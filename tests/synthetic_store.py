"""A small synthetic feature store for application tests: paired items share a latent class, so the
model can actually learn to retrieve; some items lack pictures or audio, as in the real benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multisk.data.feature_store import FeatureStoreWriter

TEXT_DIM, VIDEO_DIM, N_MELS = 12, 16, 40


def write_synthetic_store(root: Path, n_train: int = 48, n_test: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n_classes = 6
    text_basis = rng.standard_normal((n_classes, TEXT_DIM))
    video_basis = rng.standard_normal((n_classes, VIDEO_DIM))
    mel_basis = rng.standard_normal((n_classes, N_MELS))
    for split, count in (("train", n_train), ("test", n_test)):
        with FeatureStoreWriter(root, split, {"text": TEXT_DIM, "video": VIDEO_DIM, "audio": N_MELS}) as w:
            for i in range(count):
                c = int(rng.integers(n_classes))
                n_words = int(rng.integers(2, 7))
                text = text_basis[c] + 0.3 * rng.standard_normal((n_words, TEXT_DIM))
                video = None if i % 4 == 3 else video_basis[c] + 0.3 * rng.standard_normal((3, VIDEO_DIM))
                audio = None if i % 3 == 2 else mel_basis[c] + 0.3 * rng.standard_normal((int(rng.integers(40, 130)), N_MELS))
                w.add(f"{split}-{i}", {"text": text, "video": video, "audio": audio},
                      caption=f"item {i} of class {c}", category=f"class{c}")
    return root


def tiny_overrides(root: Path, out: Path, **extra) -> list[str]:
    """key=value overrides turning configs/demo.yaml into a seconds-long CPU run on the synthetic store."""
    values = {
        "data.root": str(root), "data.eval_splits": "[test]", "data.max_audio_frames": 128,
        "data.max_video_tokens": 3,
        "model.text_dim": TEXT_DIM, "model.video_dim": VIDEO_DIM, "model.embed_dim": 32, "model.num_heads": 4,
        "model.projection_dim": 24, "model.num_anchors": 8, "model.audio_width_divisor": 32,
        "loss.sspc.queue_size": 16, "train.batch_size": 8, "train.epochs": 2, "train.log_every": 1,
        "train.output_dir": str(out), "train.lr": 0.001,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
