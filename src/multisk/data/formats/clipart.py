"""The embedded default benchmark "clipart": real pictures, sounds and captions from Debian packages,
encoded with real pretrained encoders, laid out like the paper's setting (see docs/clipart.md).

=========================  ==========================================================================
paper (HowTo100M setting)  clipart
=========================  ==========================================================================
train: HowTo100M           OpenClipArt pictures + their SVG title and keywords (noisy, weakly
                           aligned, like ASR), and Asterisk speech prompts with their transcripts
                           (audio + text, no picture)
zero-shot in-domain        ``test_in_domain``: held-out OpenClipArt pictures and titles
zero-shot out-of-domain    ``test_out_of_domain``: Tux Paint stamps (photos and drawings, PNG or SVG)
                           with their human-written one-line English captions; audio = the stamp's
                           sound effect followed by its spoken English caption, where present
audio ↔ text               ``test_audio``: held-out Asterisk prompts ↔ transcripts
model selection            ``val``: OpenClipArt pictures held out of ``train`` (same source), for
                           early stopping and choosing a recipe without looking at a test split
=========================  ==========================================================================

Every item has ``caption``, ``category`` (OpenClipArt / Tux Paint folder, Asterisk sub-folder),
``group`` (items of a split whose captions are equal up to case and spacing share it: all of them are
correct answers at evaluation), ``source`` and ``file``. Modalities are those of
``multisk.data.encoders.encoding.STORE_MODALITIES`` (video 1280, text 50, text_minilm 384, audio 40).

Splits are fixed by ``seed`` and written to the store's manifest together with counts, encoder
settings, each split's ``role`` (train / validation / test) and each file's sha256. Encoded tokens are
cached under ``ROOT/cache``: an interrupted run resumes where it stopped and a rerun with everything
cached only re-writes the store.

:func:`prepare_clipart` runs three steps: :func:`index_clipart` (media -> seeded split entries),
:func:`encode_clipart` (entries -> tokens, through the cache), :func:`write_clipart`. The library only
checks that the Debian media packages are there (:func:`check_media`); installing them is the
command's job (``multisk data prepare clipart``, ``multisk demo``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
import time
import warnings
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from multisk.data.encoders.encoding import (
    GLOVE_NAME,
    MAX_TEXT_WORDS,
    CaptionEncoder,
    FeatureCache,
    encode_audio_cached,
    encode_pictures_cached,
    write_split,
)
from multisk.data.formats.folder import read_sidecar_caption
from multisk.data.encoders.image_features import PictureEncoder
from multisk.errors import DataFormatError

DEBIAN_PACKAGES = (
    "openclipart-png",
    "openclipart-svg",
    "tuxpaint-stamps-default",
    "asterisk-core-sounds-en-wav",
    "asterisk-core-sounds-en",
)
# 2: Tux Paint stamps that exist only as SVG joined test_out_of_domain; the "val" split was added;
#    byte-identical OpenClipArt copies are kept once (111 test_in_domain pictures had a copy in train)
BENCHMARK_VERSION = 2
SPLITS = ("train", "val", "test_in_domain", "test_out_of_domain", "test_audio")
SPLIT_ROLES = {"train": "train", "val": "validation", "test_in_domain": "test",
               "test_out_of_domain": "test", "test_audio": "test"}
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
    openclipart_val: int = 240  # held out of the training source for model selection (10 % of train)
    openclipart_test: int = 600
    max_per_title: int = 2  # OpenClipArt sets share one boilerplate title; keep at most this many per title
    dedupe: bool = True  # keep one of byte-identical pictures (1,206 extra copies in the package)
    # a train picture this close (cosine of the Lite0 global tokens) to a val / test picture is dropped:
    # the same drawing uploaded twice (flags, blueprints); None keeps them
    near_copy_cosine: Optional[float] = 0.999
    asterisk_test_fraction: float = 0.2
    image_size: int = 224
    grid: int = 2
    batch_size: int = 32


def apt_install_line(packages: Sequence[str] = DEBIAN_PACKAGES) -> str:
    return "apt-get install -y " + " ".join(packages)


def check_media(sources: ClipartSources) -> None:
    """Raise :class:`MissingMediaError` naming the missing Debian packages and the exact install line."""
    missing = sources.missing_packages()
    if missing:
        raise MissingMediaError(
            f"clipart benchmark: Debian packages not installed: {', '.join(missing)}. "
            f"Install them as root with:\n    sudo {apt_install_line(missing)}\n"
            "(`multisk data prepare clipart` and `multisk demo` do this themselves when run as root)"
        )


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


def _content_sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _openclipart_entry(rel: Path, png: Path, svg: Path) -> Dict[str, Any]:
    """One index entry: caption from the SVG's metadata, pixel count from the PNG header, and both
    files' content hashes (the package ships 1,206 byte-identical copies of pictures in other folders)."""
    from PIL import Image

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
    return {
        "file": rel.as_posix(),
        "png": str(png),
        "svg": str(svg),
        "category": rel.parts[0] if len(rel.parts) > 1 else "",
        "title": title,
        "keywords": keywords,
        "caption": openclipart_caption(title, keywords, rel.name),
        "metadata_error": error,
        "pixels": width * height,
        "png_sha1": _content_sha1(png),
        "svg_sha1": _content_sha1(svg),
    }


def index_openclipart(
    sources: ClipartSources, cache_dir: Path, sample: Optional[int] = None, seed: int = 0
) -> List[Dict[str, Any]]:
    """OpenClipArt pictures with a PNG and an SVG: ``{"file", "png", "svg", "category", "title",
    "keywords", "caption", "metadata_error", "pixels", "png_sha1", "svg_sha1"}``, sorted by file.

    Reading 8k SVG metadata, PNG headers and content hashes takes seconds, so the index is cached
    (keyed by every file's size and mtime). ``sample`` (fast runs with ``limit``) indexes only that
    many pictures, drawn with ``seed``.
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
    index_path = cache_dir / f"openclipart_index_v2_{digest}.json"  # v2: with content hashes
    if index_path.is_file():
        try:
            return json.loads(index_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            pass
    entries = [_openclipart_entry(rel, png, svg) for rel, png, svg in pairs]
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(index_path.name + ".tmp")
    tmp.write_text(json.dumps(entries), encoding="utf-8")
    os.replace(tmp, index_path)
    return entries


def openclipart_pool(entries: Sequence[Dict[str, Any]], settings: ClipartSettings) -> List[Dict[str, Any]]:
    """The seeded order of the usable pictures: shuffled with ``seed``, pictures over
    :data:`MAX_PICTURE_PIXELS` left out, a picture whose PNG or SVG is byte-identical to one already
    kept left out (``dedupe``; otherwise copies land on both sides of the train / test boundary), and
    at most ``max_per_title`` pictures per title (case-insensitive; collections such as 1,375
    "gramastar" stars share one title)."""
    order = list(entries)
    random.Random(settings.seed).shuffle(order)
    per_title: Dict[str, int] = {}
    kept_content: set = set()
    pool = []
    for entry in order:
        if entry["pixels"] > MAX_PICTURE_PIXELS:
            continue
        content = {entry["png_sha1"], entry["svg_sha1"]}
        if settings.dedupe and content & kept_content:
            continue
        key = " ".join((entry["title"] or entry["caption"]).lower().split())
        if per_title.get(key, 0) >= settings.max_per_title:
            continue
        per_title[key] = per_title.get(key, 0) + 1
        kept_content |= content
        pool.append(entry)
    return pool


def select_openclipart(
    entries: Sequence[Dict[str, Any]], settings: ClipartSettings, limit: Optional[int]
) -> Dict[str, List[Dict[str, Any]]]:
    """Seeded ``{"test", "val", "train"}`` subsample of :func:`openclipart_pool`, taken in that order:
    the first ``openclipart_test`` pictures, the next ``openclipart_val``, then up to
    ``openclipart_train`` (fewer when the pool runs out: 2,053 at the defaults). Test and validation come first so that a larger training set never moves
    them. With ``limit`` the total is capped at ``limit``: 20 % test and 10 % validation (at least one
    each from 2 and 3 pictures on), the rest train."""
    pool = openclipart_pool(entries, settings)
    n_test, n_val, n_train = settings.openclipart_test, settings.openclipart_val, settings.openclipart_train
    if limit is not None:
        n_test = max(1, limit // 5) if limit > 1 else 0
        n_val = max(1, limit // 10) if limit > 2 else 0
        n_train = limit - n_test - n_val
    return {
        "test": pool[:n_test],
        "val": pool[n_test : n_test + n_val],
        "train": pool[n_test + n_val : n_test + n_val + n_train],
    }


def _tuxpaint_pictures(stamps: Path) -> List[Path]:
    """One picture per stamp outside ``symbols/``: the PNG, or the SVG for stamps that ship only as SVG;
    sorted by path."""
    chosen: Dict[Path, Path] = {}
    for path in stamps.rglob("*"):
        suffix = path.suffix.lower()
        if suffix not in (".png", ".svg") or not path.is_file():
            continue
        rel = path.relative_to(stamps)
        if rel.parts[0] == "symbols":
            continue
        stem = rel.with_suffix("")
        if suffix == ".png" or stem not in chosen:
            chosen[stem] = path
    return sorted(chosen.values(), key=str)


def index_tuxpaint(sources: ClipartSources, on_error) -> List[Dict[str, Any]]:
    """Tux Paint stamps outside ``symbols/`` with a picture (PNG, else SVG) and an English caption
    (first line of NAME.txt); sound = NAME.ogg / NAME.wav (sound effect), speech = NAME_desc.ogg
    (spoken English caption)."""
    stamps = sources.tuxpaint_stamps
    entries = []
    for picture in _tuxpaint_pictures(stamps):
        rel = picture.relative_to(stamps).with_suffix("")
        txt = picture.with_suffix(".txt")
        if not txt.is_file():
            continue
        try:
            caption = read_sidecar_caption(txt)
        except DataFormatError as err:
            on_error(txt, err)
            continue
        if not caption:
            continue
        sound = next((p for p in (picture.with_suffix(".ogg"), picture.with_suffix(".wav")) if p.is_file()), None)
        speech = picture.with_name(picture.stem + "_desc.ogg")
        speech = speech if speech.is_file() else None
        entries.append(
            {
                "file": rel.as_posix(),
                "picture": str(picture),
                "category": rel.parts[0] if len(rel.parts) > 1 else "",
                "caption": caption,
                "audio_files": [str(p) for p in (sound, speech) if p is not None],
                "audio_parts": [name for name, p in (("sound", sound), ("speech", speech)) if p is not None],
            }
        )
    return entries


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


def prepared_version(root: str | Path) -> Optional[int]:
    """The ``benchmark_version`` of the clipart store at ``root`` (0 for a clipart store from before
    versions were compared), or None when ``root`` holds no store or a store of another kind."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        return None
    try:
        splits = json.loads(path.read_text(encoding="utf-8")).get("splits", {})
    except (json.JSONDecodeError, OSError, AttributeError):
        return None
    versions = {entry.get("benchmark_version", 0) for entry in splits.values()
                if isinstance(entry, dict) and entry.get("benchmark") == "clipart"}
    return min(versions) if versions else None


class _BadFiles:
    """Unreadable inputs: ``record(path, error)`` raises the error unless ``skip_bad``, else lists the
    file (every item using it is then left out)."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.skipped: List[Dict[str, str]] = []
        self.paths: set = set()

    def record(self, path: Path, err: DataFormatError) -> None:
        if not self.skip_bad:
            raise err
        self.skipped.append({"file": str(path), "error": str(err)})
        self.paths.add(str(path))

    @property
    def on_error(self) -> Optional[Callable[[Path, DataFormatError], None]]:
        """The callback for the encoders (None: they raise themselves)."""
        return self.record if self.skip_bad else None

    def usable(self, entry: Dict[str, Any]) -> bool:
        files = [_picture_of(entry), entry.get("wav"), *entry.get("audio_files", [])]
        return not any(f in self.paths for f in files if f)


def _picture_of(entry: Dict[str, Any]) -> Optional[str]:
    """The picture file of an entry (OpenClipArt's index calls it ``png``; Tux Paint ``picture``)."""
    return entry.get("picture") or entry.get("png")


@dataclass
class ClipartIndex:
    """The seeded selection: OpenClipArt ``{"test", "val", "train"}``, Tux Paint stamps, Asterisk
    ``{"train", "test"}``; each a list of entries (dicts with ``file``, ``caption``, ``category`` and
    the media paths; :func:`encode_clipart` adds ``tokens``)."""

    openclipart: Dict[str, List[Dict[str, Any]]]
    tuxpaint: List[Dict[str, Any]]
    asterisk: Dict[str, List[Dict[str, Any]]]

    def entries(self) -> List[Dict[str, Any]]:
        return [e for part in self.openclipart.values() for e in part] + self.tuxpaint + [
            e for part in self.asterisk.values() for e in part
        ]

    def filtered(self, keep: Callable[[Dict[str, Any]], bool]) -> "ClipartIndex":
        return ClipartIndex(
            {k: [e for e in v if keep(e)] for k, v in self.openclipart.items()},
            [e for e in self.tuxpaint if keep(e)],
            {k: [e for e in v if keep(e)] for k, v in self.asterisk.items()},
        )


def index_clipart(
    sources: ClipartSources,
    settings: ClipartSettings,
    cache_dir: Path,
    limit: Optional[int] = None,
    on_error: Optional[Callable[[Path, DataFormatError], None]] = None,
) -> ClipartIndex:
    """Read the media packages' file lists and metadata and draw the seeded splits. With ``limit``,
    OpenClipArt is indexed from a sample of ``max(20, 10 * limit)`` pictures and every source is capped
    at ``limit`` items (Tux Paint spread over its categories)."""
    def raise_error(path: Path, err: DataFormatError) -> None:
        raise err

    sample = None if limit is None else max(20, 10 * limit)
    openclipart = select_openclipart(index_openclipart(sources, cache_dir, sample=sample, seed=settings.seed),
                                     settings, limit)
    tux = index_tuxpaint(sources, on_error or raise_error)
    if limit is not None:
        tux = tux[:: max(1, len(tux) // limit)][:limit]
    ast_train, ast_test = split_asterisk(index_asterisk(sources), settings, limit)
    return ClipartIndex(openclipart, tux, {"train": ast_train, "test": ast_test})


def encode_clipart(
    index: ClipartIndex, cache: FeatureCache, settings: ClipartSettings, bad: _BadFiles, progress: bool = False
) -> Tuple[ClipartIndex, Dict[str, float]]:
    """Encode every entry's picture (Lite0), audio (log-mel) and caption (GloVe, MiniLM) through the
    cache into ``entry["tokens"]``; returns the index without entries that have a bad file, and the
    seconds per stage."""
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    encoder = PictureEncoder(image_size=settings.image_size, grid=settings.grid, batch_size=settings.batch_size)
    with_picture = [e for e in index.entries() if _picture_of(e)]
    tokens = encode_pictures_cached([Path(_picture_of(e)) for e in with_picture], encoder, cache,
                                    on_error=bad.on_error, progress=progress, desc="Lite0 pictures")
    for entry, picture in zip(with_picture, tokens):
        entry["tokens"] = {"video": picture}
    timings["pictures"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with_audio = [e for e in index.entries() if e.get("wav") or e.get("audio_files")]
    path_lists = [[Path(e["wav"])] if "wav" in e else [Path(p) for p in e["audio_files"]] for e in with_audio]
    frames = encode_audio_cached(path_lists, cache, on_error=bad.on_error, progress=progress, desc="log-mel audio")
    for entry, audio in zip(with_audio, frames):
        entry.setdefault("tokens", {})["audio"] = audio
    timings["audio"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    index = index.filtered(bad.usable)
    text_encoder = CaptionEncoder(cache)
    entries = index.entries()
    minilm = text_encoder.minilm_tokens([e["caption"] for e in entries], progress=progress)
    for entry, text_minilm in zip(entries, minilm):
        tokens = entry.setdefault("tokens", {})
        tokens.update(text=text_encoder.glove_tokens(entry["caption"]), text_minilm=text_minilm)
        tokens.setdefault("video", None)
        tokens.setdefault("audio", None)
    timings["text"] = time.perf_counter() - t0
    return index, timings


def drop_train_near_copies(index: ClipartIndex, threshold: Optional[float]) -> Tuple[ClipartIndex, List[Dict[str, Any]]]:
    """Leave out every OpenClipArt train picture whose Lite0 global token t has cosine
    <t, u> / (|t| |u|) >= ``threshold`` with the global token u of a val or test_in_domain picture
    (encoded entries, see :func:`encode_clipart`); val and test never change. Returns the index and
    ``[{"file", "copy_of", "cosine"}]``."""
    train = index.openclipart["train"]
    held = index.openclipart["val"] + index.openclipart["test"]
    if threshold is None or not train or not held:
        return index, []

    def unit_globals(entries):
        tokens = np.stack([np.asarray(e["tokens"]["video"][0], dtype=np.float64) for e in entries])
        return tokens / np.maximum(np.linalg.norm(tokens, axis=1, keepdims=True), 1e-12)

    cosine = unit_globals(train) @ unit_globals(held).T  # (n_train, n_held)
    nearest, best = cosine.argmax(axis=1), cosine.max(axis=1)
    dropped = [{"file": e["file"], "copy_of": held[j]["file"], "cosine": round(float(c), 6)}
               for e, j, c in zip(train, nearest, best) if c >= threshold]
    drop = {d["file"] for d in dropped}
    openclipart = {**index.openclipart, "train": [e for e in train if e["file"] not in drop]}
    return ClipartIndex(openclipart, index.tuxpaint, index.asterisk), dropped


def _item(entry: Dict[str, Any], source: str, **extra: Any) -> Dict[str, Any]:
    picture = _picture_of(entry)
    return {
        "id": f"{source}/{entry['file']}",
        "tokens": entry["tokens"],
        "caption": entry["caption"],
        "category": entry["category"],
        "source": source,
        "file": entry["file"],
        # the picture itself, for figures that show anchors by their top items
        **({"path": picture} if picture else {}),
        **extra,
    }


def clipart_split_items(index: ClipartIndex, seed: int) -> Dict[str, List[Dict[str, Any]]]:
    """Store items per split (see the module docstring); train interleaves OpenClipArt and Asterisk."""
    train = [_item(e, "openclipart") for e in index.openclipart["train"]]
    train += [_item(e, "asterisk") for e in index.asterisk["train"]]
    random.Random(seed + 2).shuffle(train)
    return {
        "train": train,
        "val": [_item(e, "openclipart") for e in index.openclipart["val"]],
        "test_in_domain": [_item(e, "openclipart") for e in index.openclipart["test"]],
        "test_out_of_domain": [_item(e, "tuxpaint", audio_parts=e["audio_parts"]) for e in index.tuxpaint],
        "test_audio": [_item(e, "asterisk") for e in index.asterisk["test"]],
    }


def _description(settings: ClipartSettings, limit: Optional[int]) -> Dict[str, Any]:
    """What the manifest records for every split: benchmark version, seed, sizes, encoders."""
    encoder = PictureEncoder(image_size=settings.image_size, grid=settings.grid)
    return {
        "benchmark": "clipart",
        "benchmark_version": BENCHMARK_VERSION,
        "seed": settings.seed,
        "limit": limit,
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("seed", "image_size", "grid", "batch_size")},
        "picture_encoder": encoder.describe(),
        # how to embed new text (class names, search queries) exactly like the stored text tokens
        "text_encoder": {"name": GLOVE_NAME, "lowercase": True, "max_words": MAX_TEXT_WORDS},
        "text_encoders": {"text": f"{GLOVE_NAME} (lower-cased, first {MAX_TEXT_WORDS} in-vocabulary words)",
                          "text_minilm": CaptionEncoder.minilm_description()},
        "audio_features": "log-mel, 16 kHz, n_fft 400, hop 160, 40 HTK mels, ln(x + 1e-6)",
    }


def write_clipart(
    root: Path, split_items: Dict[str, List[Dict[str, Any]]], description: Dict[str, Any]
) -> Tuple[Dict[str, int], Dict[str, Dict[str, int]]]:
    """Write every split (with its ``role`` and item count per source); returns (items per split,
    items per split and modality)."""
    counts, present = {}, {}
    for split, items in split_items.items():
        per_source: Dict[str, int] = {}
        for item in items:
            per_source[item["source"]] = per_source.get(item["source"], 0) + 1
        metadata = {**description, "role": SPLIT_ROLES[split], "sources": per_source}
        info = write_split(root, split, items, metadata=metadata)
        counts[split] = info["count"]
        present[split] = {m: meta["items_present"] for m, meta in info["modalities"].items()}
    return counts, present


def prepare_clipart(
    root: str | Path,
    limit: Optional[int] = None,
    skip_bad: bool = False,
    settings: Optional[ClipartSettings] = None,
    sources: Optional[ClipartSources] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Build the clipart benchmark's feature store under ``root``.

    Args:
        root: store root (``manifest.json``, one folder per split, ``cache/``, ``skipped.json``,
            ``near_copies.json``: train pictures left out as near-copies of val / test ones).
        limit: cap every source (OpenClipArt, Tux Paint, Asterisk) at this many items (fast CI runs).
        skip_bad: skip unreadable media, listing them in ``ROOT/skipped.json`` and the result, instead
            of raising :class:`DataFormatError` naming the file.
        settings: sizes, seed and encoder settings (defaults: :class:`ClipartSettings`).
        sources: media locations (defaults: the Debian packages' paths).
        progress: show tqdm progress bars.

    Returns:
        ``{"root", "splits": {split: count}, "modalities": {split: {m: items_present}},
        "skipped": [...], "train_near_copies_dropped", "seconds", "timings": {stage: seconds}}``.

    Raises:
        MissingMediaError: the Debian media packages are not installed (the message gives the line).
        DataFormatError: an unreadable input (unless ``skip_bad``), naming the file.
    """
    started = time.perf_counter()
    settings = settings or ClipartSettings()
    sources = sources or ClipartSources()
    if limit is not None and limit < 1:
        raise ValueError(f"prepare_clipart: limit must be >= 1, got {limit}")
    check_media(sources)
    root = Path(root)
    cache = FeatureCache(root / "cache")
    bad = _BadFiles(skip_bad)

    t0 = time.perf_counter()
    index = index_clipart(sources, settings, root / "cache", limit=limit, on_error=bad.record)
    timings = {"index": time.perf_counter() - t0}
    index, encode_timings = encode_clipart(index, cache, settings, bad, progress=progress)
    timings.update(encode_timings)
    index, near_copies = drop_train_near_copies(index, settings.near_copy_cosine)
    t0 = time.perf_counter()
    description = {**_description(settings, limit), "train_near_copies_dropped": len(near_copies)}
    counts, present = write_clipart(root, clipart_split_items(index, settings.seed), description)
    (root / "skipped.json").write_text(json.dumps(bad.skipped, indent=2), encoding="utf-8")
    (root / "near_copies.json").write_text(json.dumps(near_copies, indent=2), encoding="utf-8")
    timings["write"] = time.perf_counter() - t0
    return {
        "root": str(root),
        "splits": counts,
        "modalities": present,
        "skipped": bad.skipped,
        "train_near_copies_dropped": len(near_copies),
        "seconds": round(time.perf_counter() - started, 2),
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }


__all__ = [
    "ClipartIndex",
    "ClipartSettings",
    "ClipartSources",
    "DEBIAN_PACKAGES",
    "MissingMediaError",
    "SPLITS",
    "SPLIT_ROLES",
    "apt_install_line",
    "check_media",
    "clipart_split_items",
    "drop_train_near_copies",
    "encode_clipart",
    "index_asterisk",
    "index_clipart",
    "index_openclipart",
    "index_tuxpaint",
    "openclipart_pool",
    "prepared_version",
    "select_openclipart",
    "write_clipart",
    "openclipart_caption",
    "prepare_clipart",
    "read_asterisk_transcripts",
    "read_svg_metadata",
]
