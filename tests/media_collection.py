"""A small media collection and an untrained model that reads it, for the search-your-collection tests
(tests/evaluate/test_collection_index.py, tests/evaluate/test_serve.py): pictures in two category folders with sidecar
captions, sounds, and a three-second video whose seconds are red, green and blue."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from multisk.checkpoint import save_checkpoint
from multisk.config import config_to_dict, load_config
from multisk.models import build_model

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
PICTURES = {  # relative stem -> (colour, caption)
    "fruit/red_apple": ((220, 30, 30), "a red apple"),
    "fruit/green_pear": ((60, 190, 60), "a green pear"),
    "fruit/yellow_banana": ((240, 220, 40), "a yellow banana"),
    "animals/blue_bird": ((40, 60, 220), "a blue bird on a branch"),
    "animals/black_cat": ((20, 20, 20), "a black cat sleeping"),
}
SOUNDS = {"sounds/beep": (880.0, "a short high beep"), "sounds/hum": (110.0, "a low hum")}


def write_picture(path: Path, colour, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    pixels[:] = (255, 255, 255)
    pixels[8:40, 12:52] = colour
    pixels = np.clip(pixels.astype(int) + rng.integers(-8, 9, size=pixels.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def write_tone(path: Path, freq: float, seconds: float = 0.6, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def write_media_folder(folder: Path, *, video: bool = False) -> Path:
    """The collection (module docstring); ``video``: also ``clips/colours.mp4`` (needs PyAV)."""
    for stem, (colour, caption) in PICTURES.items():
        (folder / stem).parent.mkdir(parents=True, exist_ok=True)
        write_picture(folder / f"{stem}.png", colour, seed=len(stem))
        (folder / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    for stem, (freq, caption) in SOUNDS.items():
        (folder / stem).parent.mkdir(parents=True, exist_ok=True)
        write_tone(folder / f"{stem}.wav", freq)
        (folder / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    if video:
        from test_folder import write_video

        (folder / "clips").mkdir(exist_ok=True)
        write_video(folder / "clips" / "colours.mp4", seconds=3)
        (folder / "clips" / "colours.txt").write_text("colour bars: red, green, blue\n", encoding="utf-8")
    return folder


def tiny_folder_checkpoint(path: Path, seed: int = 0) -> Path:
    """An untrained small demo-recipe model (MiniLM text, Lite0 pictures, log-mel sounds) saved as a
    checkpoint; ``seed`` changes its weights (another model)."""
    cfg = load_config(CONFIG, [
        "model.embed_dim=32", "model.num_heads=4", "model.projection_dim=24", "model.num_anchors=8",
        "model.audio_width_divisor=32", "model.prior.enabled=false", "model.prior.concept_classes=0",
        "data.val_split=null", "data.max_audio_frames=128", "data.max_video_tokens=4",
    ])
    torch_seed(seed)
    model = build_model(cfg.model)
    return save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg)}, path, also_latest=False)


def start_server(index_dir: Path, **kwargs):
    """``(service, server, (host, port))``: ``multisk serve``'s app on 127.0.0.1, a free port, served by a
    daemon thread (``server.shutdown()`` stops it)."""
    from multisk.evaluate.serve import SearchService, make_server

    service = SearchService(index_dir, device="cpu", **kwargs)
    server = make_server(service, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return service, server, ("127.0.0.1", server.port)


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
