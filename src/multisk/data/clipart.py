"""The embedded default benchmark "clipart": real pictures, sounds and captions from Debian packages,
encoded with real pretrained encoders, laid out like the paper's setting (see docs/clipart.md).

=========================  ==========================================================================
paper (HowTo100M setting)  clipart
=========================  ==========================================================================
train: HowTo100M           OpenClipArt pictures + their SVG title and keywords (noisy, weakly
                           aligned, like ASR), and Asterisk speech prompts with their transcripts
                           (audio + text, no picture)
zero-shot in-domain        ``test_in_domain``: held-out OpenClipArt pictures and titles
zero-shot out-of-domain    ``test_out_of_domain``: Tux Paint stamps (photos and drawings) with their
                           human-written one-line English captions; audio = the stamp's sound effect
                           followed by its spoken English caption, where present
audio ↔ text               ``test_audio``: held-out Asterisk prompts ↔ transcripts
=========================  ==========================================================================

Every item has ``caption``, ``category`` (OpenClipArt / Tux Paint folder, Asterisk sub-folder),
``group`` (items of a split whose captions are equal up to case and spacing share it: all of them are
correct answers at evaluation), ``source`` and ``file``. Modalities are those of
``multisk.data.folder.STORE_MODALITIES`` (video 1280, text 50, text_minilm 384, audio 40).

Splits are fixed by ``seed`` and written to the store's manifest together with counts, encoder
settings and each file's sha256. Encoded tokens are cached under ``ROOT/cache``: an interrupted run
resumes where it stopped and a rerun with everything cached only re-writes the store.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import time
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from multisk.data.folder import (
    GLOVE_NAME,
    CaptionEncoder,
    FeatureCache,
    encode_audio_cached,
    encode_pictures_cached,
    read_sidecar_caption,
    write_split,
)
from multisk.errors import DataFormatError

DEBIAN_PACKAGES = (
    "openclipart-png",
    "openclipart-svg",
    "tuxpaint-stamps-default",
    "asterisk-core-sounds-en-wav",
    "asterisk-core-sounds-en",
)
BENCHMARK_VERSION = 1
SPLITS = ("train", "test_in_domain", "test_out_of_domain", "test_audio")
# 19 OpenClipArt PNGs are rendered at up to 21k x 30k pixels (2.5 GB decoded); they are left out
MAX_PICTURE_PIXELS = 16_000_000

_DC = "{http://purl.org/dc/elements/1.1/}"
_CC = "{http://web.resource.org/cc/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
# keywords that carry no meaning (artefacts of the OpenClipArt export)
_JUNK_KEYWORDS = {"", "hash", "none", "unsorted"}


class MissingMediaError(FileNotFoundError):
    """The Debian media packages of the clipart benchmark are not installed (the message says how)."""


@dataclass
class ClipartSources:
    """Where the media live (the Debian packages' paths by default; tests point them elsewhere)."""

    openclipart_png: Path = Path("/usr/share/openclipart/png")
    openclipart_svg: Path = Path("/usr/share/openclipart/svg")
    tuxpaint_stamps: Path = Path("/usr/share/tuxpaint/stamps")
    asterisk_sounds: Path = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
    asterisk_transcripts: Path = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")

    def missing_packages(self) -> List[str]:
        """Debian packages whose files are absent, in install order."""
        checks = [
            ("openclipart-png", self.openclipart_png),
            ("openclipart-svg", self.openclipart_svg),
            ("tuxpaint-stamps-default", self.tuxpaint_stamps),
            ("asterisk-core-sounds-en-wav", self.asterisk_sounds),
            ("asterisk-core-sounds-en", self.asterisk_transcripts),
        ]
        return [package for package, path in checks if not path.exists()]


@dataclass
class ClipartSettings:
    """What the benchmark contains and how it is encoded (all recorded in the manifest)."""

    seed: int = 0
    openclipart_train: int = 2400
    openclipart_test: int = 600
    max_per_title: int = 2  # OpenClipArt sets share one boilerplate title; keep at most this many per title
    asterisk_test_fraction: float = 0.2
    image_size: int = 224
    grid: int = 2
    batch_size: int = 32


# ----------------------------------------------------------------------------------------------------
# packages


def apt_install_line(packages: Sequence[str] = DEBIAN_PACKAGES) -> str:
    return "apt-get install -y " + " ".join(packages)


def ensure_media(sources: ClipartSources, install: bool = True) -> None:
    """Make sure the media packages are installed.

    When files are missing: as root with ``install=True``, run ``apt-get install -y ...`` (after
    ``apt-get update`` if the first attempt fails, e.g. on a fresh image without package lists);
    otherwise raise :class:`MissingMediaError` giving the exact command.
    """
    missing = sources.missing_packages()
    if not missing:
        return
    line = apt_install_line(missing)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not (install and is_root and shutil.which("apt-get")):
        why = "installation disabled" if not install else "not running as root" if not is_root else "apt-get not found"
        raise MissingMediaError(
            f"clipart benchmark: Debian packages not installed: {', '.join(missing)} ({why}). "
            f"Install them as root with:\n    sudo {line}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(line.split(), env=env, capture_output=True, text=True)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        result = subprocess.run(line.split(), env=env, capture_output=True, text=True)
    still = sources.missing_packages()
    if result.returncode != 0 or still:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise MissingMediaError(
            f"clipart benchmark: `{line}` failed (exit {result.returncode}): {' | '.join(tail)}; "
            f"still missing: {', '.join(still) or 'none'}"
        )


# ----------------------------------------------------------------------------------------------------
# OpenClipArt


def _words_from_name(stem: str) -> str:
    """'bored_dog_01' -> 'bored dog' (file-name fallback caption)."""
    words = [w for w in re.split(r"[_\-\s]+", stem) if w and not w.isdigit()]
    return " ".join(words)


def read_svg_metadata(svg_path: Path) -> Tuple[str, List[str]]:
    """(title, keywords) of an OpenClipArt SVG from its RDF metadata (``cc:Work`` ``dc:title`` and
    ``dc:subject`` bag); parsing stops at the end of ``<metadata>``.

    Raises:
        DataFormatError: the SVG is not well-formed XML before its metadata ends (names the file).
    """
    title: Optional[str] = None
    keywords: List[str] = []
    agent_depth = 0  # dc:title inside cc:Agent is a person's or publisher's name, not the work's title
    try:
        for event, element in ET.iterparse(str(svg_path), events=("start", "end")):
            tag = element.tag
            if event == "start":
                if tag == _CC + "Agent":
                    agent_depth += 1
                continue
            if tag == _CC + "Agent":
                agent_depth -= 1
            elif tag == _DC + "title" and agent_depth == 0 and title is None:
                title = " ".join((element.text or "").split())
            elif tag == _RDF + "li" and element.text:
                keywords.append(element.text.strip())
            elif tag.endswith("}metadata") or tag == "metadata":
                break
    except (ET.ParseError, OSError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{svg_path}: cannot read SVG metadata ({err})") from None
    return title or "", keywords


def openclipart_caption(title: str, keywords: Sequence[str], stem: str) -> str:
    """Caption = title, then the keywords that add words, e.g. ``"Bored dog (mammal, animal)"``.

    An empty title falls back to the file name's words; underscores in keywords become spaces.
    """
    title = title.strip() or _words_from_name(stem)
    seen = {w.lower() for w in re.findall(r"[\w']+", title)}
    extra: List[str] = []
    for keyword in keywords:
        phrase = " ".join(keyword.replace("_", " ").split())
        if phrase.lower() in _JUNK_KEYWORDS:
            continue
        words = {w.lower() for w in re.findall(r"[\w']+", phrase)}
        if words and not words <= seen:
            extra.append(phrase)
            seen |= words
    return f"{title} ({', '.join(extra)})" if extra else title


def index_openclipart(
    sources: ClipartSources, cache_dir: Path, sample: Optional[int] = None, seed: int = 0
) -> List[Dict[str, Any]]:
    """OpenClipArt pictures with a PNG and an SVG: ``{"file", "png", "svg", "category", "title",
    "keywords", "caption", "metadata_error", "pixels"}``, sorted by file.

    Reading 8k SVG metadata and PNG headers takes ~5 s, so the index is cached (keyed by every file's
    size and mtime). ``sample`` (fast runs with ``limit``) indexes only that many pictures, drawn with
    ``seed``.
    """
    pairs = []
    for png in sorted(sources.openclipart_png.rglob("*.png")):
        rel = png.relative_to(sources.openclipart_png).with_suffix("")
        svg = sources.openclipart_svg / rel.with_suffix(".svg")
        if svg.is_file():  # a picture without metadata has no caption
            pairs.append((rel, png, svg))
    if sample is not None and sample < len(pairs):
        pairs = sorted(random.Random(seed).sample(pairs, sample))
    stats = []
    for rel, png, svg in pairs:
        st, pst = svg.stat(), png.stat()
        stats.append(f"{rel.as_posix()}|{st.st_size}|{st.st_mtime_ns}|{pst.st_size}|{pst.st_mtime_ns}")
    digest = hashlib.sha1("\n".join(stats).encode("utf-8")).hexdigest()[:16]
    index_path = cache_dir / f"openclipart_index_{digest}.json"
    if index_path.is_file():
        try:
            return json.loads(index_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            pass
    from PIL import Image

    entries = []
    for rel, png, svg in pairs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(png) as image:  # reads the header only
                    width, height = image.size
        except Image.DecompressionBombError:
            width, height = 1 << 16, 1 << 16
        except (OSError, ValueError, SyntaxError):
            width, height = 0, 0  # unreadable: kept, so the encoder reports it (or skips it with skip_bad)
        error = None
        try:
            title, keywords = read_svg_metadata(svg)
        except DataFormatError as err:  # the picture is fine; caption from the file name instead
            title, keywords, error = "", [], str(err)
        entries.append(
            {
                "file": rel.as_posix(),
                "png": str(png),
                "svg": str(svg),
                "category": rel.parts[0] if len(rel.parts) > 1 else "",
                "title": title,
                "keywords": keywords,
                "caption": openclipart_caption(title, keywords, rel.name),
                "metadata_error": error,
                "pixels": width * height,
            }
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(index_path.name + ".tmp")
    tmp.write_text(json.dumps(entries), encoding="utf-8")
    os.replace(tmp, index_path)
    return entries


def select_openclipart(
    entries: Sequence[Dict[str, Any]], settings: ClipartSettings, limit: Optional[int]
) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Seeded (train, test) subsample: shuffle, keep at most ``max_per_title`` pictures per title
    (case-insensitive; collections such as 1,375 "gramastar" stars share one title), then the first
    ``openclipart_test`` go to test and the next ``openclipart_train`` to train. With ``limit`` the
    total is capped at ``limit`` (80 % train, at least one test item)."""
    rng = random.Random(settings.seed)
    order = list(entries)
    rng.shuffle(order)
    per_title: Dict[str, int] = {}
    pool = []
    for entry in order:
        if entry["pixels"] > MAX_PICTURE_PIXELS:
            continue
        key = " ".join((entry["title"] or entry["caption"]).lower().split())
        if per_title.get(key, 0) >= settings.max_per_title:
            continue
        per_title[key] = per_title.get(key, 0) + 1
        pool.append(entry)
    n_test, n_train = settings.openclipart_test, settings.openclipart_train
    if limit is not None:
        n_test = max(1, limit // 5) if limit > 1 else 0
        n_train = limit - n_test
    return pool[n_test : n_test + n_train], pool[:n_test]


# ----------------------------------------------------------------------------------------------------
# Tux Paint


def index_tuxpaint(sources: ClipartSources, on_error) -> List[Dict[str, Any]]:
    """Tux Paint stamps outside ``symbols/`` with a PNG and an English caption (first line of NAME.txt);
    sound = NAME.ogg / NAME.wav (sound effect), speech = NAME_desc.ogg (spoken English caption).
    Stamps available only as SVG are left out (no SVG rasteriser among the dependencies)."""
    stamps = sources.tuxpaint_stamps
    entries = []
    for png in sorted(stamps.rglob("*.png")):
        rel = png.relative_to(stamps).with_suffix("")
        if rel.parts[0] == "symbols":
            continue
        txt = png.with_suffix(".txt")
        if not txt.is_file():
            continue
        try:
            caption = read_sidecar_caption(txt)
        except DataFormatError as err:
            on_error(txt, err)
            continue
        if not caption:
            continue
        sound = next((p for p in (png.with_suffix(".ogg"), png.with_suffix(".wav")) if p.is_file()), None)
        speech = png.with_name(png.stem + "_desc.ogg")
        entries.append(
            {
                "file": rel.as_posix(),
                "png": str(png),
                "category": rel.parts[0] if len(rel.parts) > 1 else "",
                "caption": caption,
                "audio_files": [str(p) for p in (sound, speech if speech.is_file() else None) if p is not None],
                "audio_parts": [n for n, p in (("sound", sound), ("speech", speech if speech.is_file() else None)) if p],
            }
        )
    return entries


# ----------------------------------------------------------------------------------------------------
# Asterisk


def read_asterisk_transcripts(path: Path) -> Dict[str, str]:
    """``name: transcript`` lines of core-sounds-en.txt(.gz) (``;`` starts a comment)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
            lines = fh.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{path}: cannot read Asterisk transcripts ({err})") from None
    table: Dict[str, str] = {}
    for line in lines:
        if not line.strip() or line.lstrip().startswith(";") or ":" not in line:
            continue
        name, text = line.split(":", 1)
        if text.strip():
            table[name.strip()] = " ".join(text.split())
    if not table:
        raise DataFormatError(f"{path}: no 'name: transcript' lines")
    return table


def index_asterisk(sources: ClipartSources) -> List[Dict[str, Any]]:
    transcripts = read_asterisk_transcripts(sources.asterisk_transcripts)
    entries = []
    for name in sorted(transcripts):
        wav = sources.asterisk_sounds / f"{name}.wav"
        if not wav.is_file():
            continue
        entries.append(
            {
                "file": name,
                "wav": str(wav),
                "category": name.split("/")[0] if "/" in name else "prompt",
                "caption": transcripts[name],
            }
        )
    return entries


def split_asterisk(
    entries: Sequence[Dict[str, Any]], settings: ClipartSettings, limit: Optional[int]
) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    rng = random.Random(settings.seed + 1)
    order = list(entries)
    rng.shuffle(order)
    if limit is not None:
        order = order[:limit]
    n_test = int(round(len(order) * settings.asterisk_test_fraction))
    if len(order) > 1:
        n_test = max(1, n_test)
    return order[n_test:], order[:n_test]


# ----------------------------------------------------------------------------------------------------
# the whole benchmark


def prepare_clipart(
    root: str | Path,
    limit: Optional[int] = None,
    skip_bad: bool = False,
    install: bool = True,
    settings: Optional[ClipartSettings] = None,
    sources: Optional[ClipartSources] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Build the clipart benchmark's feature store under ``root``.

    Args:
        root: store root (``manifest.json``, one folder per split, ``cache/``, ``skipped.json``).
        limit: cap every source (OpenClipArt, Tux Paint, Asterisk) at this many items (fast CI runs).
        skip_bad: skip unreadable media, listing them in ``ROOT/skipped.json`` and the result, instead
            of raising :class:`DataFormatError` naming the file.
        install: when the Debian packages are missing and this process is root, apt-get install them.
        settings: sizes, seed and encoder settings (defaults: :class:`ClipartSettings`).
        sources: media locations (defaults: the Debian packages' paths).
        progress: show tqdm progress bars.

    Returns:
        ``{"root", "splits": {split: count}, "modalities": {split: {m: items_present}},
        "skipped": [...], "seconds", "timings": {stage: seconds}}``.
    """
    from multisk.data.image_features import PictureEncoder

    started = time.perf_counter()
    settings = settings or ClipartSettings()
    sources = sources or ClipartSources()
    if limit is not None and limit < 1:
        raise ValueError(f"prepare_clipart: limit must be >= 1, got {limit}")
    ensure_media(sources, install=install)
    root = Path(root)
    cache_dir = root / "cache"
    cache = FeatureCache(cache_dir)
    timings: Dict[str, float] = {}
    skipped: List[Dict[str, str]] = []
    bad_files: set = set()

    def on_error(path: Path, err: DataFormatError) -> None:
        if not skip_bad:
            raise err
        skipped.append({"file": str(path), "error": str(err)})
        bad_files.add(str(path))

    # ---- select -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    sample = None if limit is None else max(20, 10 * limit)  # with a limit, index only a sample
    clip_index = index_openclipart(sources, cache_dir, sample=sample, seed=settings.seed)
    clip_train, clip_test = select_openclipart(clip_index, settings, limit)
    tux = index_tuxpaint(sources, on_error)
    if limit is not None:
        tux = tux[:: max(1, len(tux) // limit)][:limit]  # spread over the categories
    ast_train, ast_test = split_asterisk(index_asterisk(sources), settings, limit)
    timings["index"] = time.perf_counter() - t0

    # ---- encode pictures (OpenClipArt + Tux Paint), cached --------------------------------------
    t0 = time.perf_counter()
    encoder = PictureEncoder(image_size=settings.image_size, grid=settings.grid, batch_size=settings.batch_size)
    picture_entries = clip_train + clip_test + tux
    picture_tokens = encode_pictures_cached(
        [Path(e["png"]) for e in picture_entries],
        encoder,
        cache,
        on_error=on_error if skip_bad else None,
        progress=progress,
        desc="Lite0 pictures",
    )
    for entry, tokens in zip(picture_entries, picture_tokens):
        entry["video_tokens"] = tokens
    timings["pictures"] = time.perf_counter() - t0

    # ---- encode audio (Asterisk prompts, Tux Paint sounds and spoken captions), cached ----------
    t0 = time.perf_counter()
    audio_entries = ast_train + ast_test + tux
    path_lists = [[Path(e["wav"])] if "wav" in e else [Path(p) for p in e["audio_files"]] for e in audio_entries]
    audio_frames = encode_audio_cached(
        path_lists, cache, on_error=on_error if skip_bad else None, progress=progress, desc="log-mel audio"
    )
    for entry, frames in zip(audio_entries, audio_frames):
        entry["audio_frames"] = frames
    timings["audio"] = time.perf_counter() - t0

    # ---- drop items with a bad file --------------------------------------------------------------
    def ok(entry: Dict[str, Any]) -> bool:
        files = [entry.get("png"), entry.get("wav"), *entry.get("audio_files", [])]
        return not any(f in bad_files for f in files if f)

    clip_train, clip_test = [e for e in clip_train if ok(e)], [e for e in clip_test if ok(e)]
    tux = [e for e in tux if ok(e)]
    ast_train, ast_test = [e for e in ast_train if ok(e)], [e for e in ast_test if ok(e)]

    # ---- encode text, cached ----------------------------------------------------------------------
    t0 = time.perf_counter()
    text_encoder = CaptionEncoder(cache)
    all_entries = clip_train + clip_test + tux + ast_train + ast_test
    minilm = text_encoder.minilm_tokens([e["caption"] for e in all_entries], progress=progress)
    for entry, tokens in zip(all_entries, minilm):
        entry["text_minilm"] = tokens
        entry["text"] = text_encoder.glove_tokens(entry["caption"])
    timings["text"] = time.perf_counter() - t0

    # ---- write the store ------------------------------------------------------------------------
    t0 = time.perf_counter()

    def item(entry: Dict[str, Any], source: str, **extra: Any) -> Dict[str, Any]:
        return {
            "id": f"{source}/{entry['file']}",
            "tokens": {
                "video": entry.get("video_tokens"),
                "text": entry["text"],
                "text_minilm": entry["text_minilm"],
                "audio": entry.get("audio_frames"),
            },
            "caption": entry["caption"],
            "category": entry["category"],
            "source": source,
            "file": entry["file"],
            # the picture itself, for figures that show anchors by their top items
            **({"path": entry["png"]} if entry.get("png") else {}),
            **extra,
        }

    train_items = [item(e, "openclipart") for e in clip_train] + [item(e, "asterisk") for e in ast_train]
    random.Random(settings.seed + 2).shuffle(train_items)  # interleave the two training sources
    split_items = {
        "train": train_items,
        "test_in_domain": [item(e, "openclipart") for e in clip_test],
        "test_out_of_domain": [item(e, "tuxpaint", audio_parts=e["audio_parts"]) for e in tux],
        "test_audio": [item(e, "asterisk") for e in ast_test],
    }
    description = {
        "benchmark": "clipart",
        "benchmark_version": BENCHMARK_VERSION,
        "seed": settings.seed,
        "limit": limit,
        "settings": {
            "openclipart_train": settings.openclipart_train,
            "openclipart_test": settings.openclipart_test,
            "max_per_title": settings.max_per_title,
            "asterisk_test_fraction": settings.asterisk_test_fraction,
        },
        "picture_encoder": encoder.describe(),
        # how to embed new text (class names, search queries) exactly like the stored text tokens
        "text_encoder": {"name": GLOVE_NAME, "lowercase": True, "max_words": 20},
        "text_encoders": {"text": f"{GLOVE_NAME} (lower-cased, first 20 in-vocabulary words)",
                          "text_minilm": CaptionEncoder.minilm_description()},
        "audio_features": "log-mel, 16 kHz, n_fft 400, hop 160, 40 HTK mels, ln(x + 1e-6)",
    }
    counts, present = {}, {}
    for split, items in split_items.items():
        sources_count: Dict[str, int] = {}
        for it in items:
            sources_count[it["source"]] = sources_count.get(it["source"], 0) + 1
        info = write_split(root, split, items, metadata={**description, "sources": sources_count})
        counts[split] = info["count"]
        present[split] = {m: meta["items_present"] for m, meta in info["modalities"].items()}
    (root / "skipped.json").write_text(json.dumps(skipped, indent=2), encoding="utf-8")
    timings["write"] = time.perf_counter() - t0
    return {
        "root": str(root),
        "splits": counts,
        "modalities": present,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 2),
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }


__all__ = [
    "ClipartSettings",
    "ClipartSources",
    "DEBIAN_PACKAGES",
    "MissingMediaError",
    "SPLITS",
    "apt_install_line",
    "ensure_media",
    "index_asterisk",
    "index_openclipart",
    "index_tuxpaint",
    "openclipart_caption",
    "prepare_clipart",
    "read_asterisk_transcripts",
    "read_svg_metadata",
]
