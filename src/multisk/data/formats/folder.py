"""The "your own folder" format: a folder of pictures, videos and sounds (+ captions) -> one split of a
feature store (the format of :mod:`multisk.data.store.feature_store`; modalities and encoders in
:mod:`multisk.data.encoders.encoding`).

Items: files are grouped by their path without extension, so ``dog.jpg`` + ``dog.wav`` + ``dog.txt``
make one item (picture, sound, caption). A video brings its own audio track unless a separate sound
file shares its name. Captions come from a CSV (columns ``file``, ``caption``; ``file`` relative to the
folder, with or without extension) or else from the first line of a sidecar ``NAME.txt``. Pictures may
be raster images or SVG (rasterised by :func:`multisk.data.encoders.image_features.rasterise_svg`).

:func:`prepare_folder` runs three steps: :func:`index_folder` (files -> entries with captions),
:func:`encode_folder` (entries -> items with tokens, through the token cache), :func:`write_split`.
"""

from __future__ import annotations

import csv
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from multisk.data.encoders.encoding import (
    GLOVE_NAME,
    MAX_TEXT_WORDS,
    CaptionEncoder,
    FeatureCache,
    encode_audio_cached,
    encode_pictures_cached,
    encode_video_cached,
    progress_bar,
    write_split,
)
from multisk.data.encoders.audio_features import HOP_LENGTH, SAMPLE_RATE
from multisk.data.encoders.image_features import SVG_EXTENSIONS, PictureEncoder
from multisk.errors import DataFormatError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"} | SVG_EXTENSIONS
AUDIO_EXTENSIONS = {".wav", ".ogg", ".flac", ".oga", ".mp3", ".aiff", ".aif"}
AUDIO_FRAMES_PER_SECOND = SAMPLE_RATE / HOP_LENGTH  # log-mel frames per second of sound (100)
VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv"}


def _read_caption_csv(csv_path: Path) -> Dict[str, str]:
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
                raise DataFormatError(
                    f"{csv_path}: expected columns 'file' and 'caption', got {reader.fieldnames}"
                )
            captions: Dict[str, str] = {}
            for lineno, row in enumerate(reader, 2):
                name = (row.get("file") or "").strip()
                caption = (row.get("caption") or "").strip()
                if not name:
                    raise DataFormatError(f"{csv_path}: line {lineno}: field 'file' is empty")
                if not caption:
                    raise DataFormatError(f"{csv_path}: line {lineno}: field 'caption' is empty for {name!r}")
                captions[name] = caption
            return captions
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{csv_path}: not valid UTF-8 ({err})") from None
    except OSError as err:
        raise DataFormatError(f"{csv_path}: cannot read captions ({err})") from None


def read_caption_csv(csv_path: str | Path) -> Dict[str, str]:
    """``file -> caption`` of a captions CSV (columns ``file``, ``caption``); errors name the file and line."""
    return _read_caption_csv(Path(csv_path))


def read_sidecar_caption(txt_path: Path) -> Optional[str]:
    """First non-empty line of a caption file (the Tux Paint ``NAME.txt`` convention), or None if empty."""
    try:
        text = txt_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{txt_path}: caption file is not valid UTF-8 ({err})") from None
    except OSError as err:
        raise DataFormatError(f"{txt_path}: cannot read caption ({err})") from None
    for line in text.splitlines():
        if line.strip():
            return " ".join(line.split())
    return None


def _scan_folder(folder: Path) -> Dict[str, Dict[str, List[Path]]]:
    """stem (relative path without extension, '/'-separated) -> {"image"|"video"|"audio"|"text": paths}."""
    groups: Dict[str, Dict[str, List[Path]]] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        ext = path.suffix.lower()
        kind = (
            "image" if ext in IMAGE_EXTENSIONS
            else "video" if ext in VIDEO_EXTENSIONS
            else "audio" if ext in AUDIO_EXTENSIONS
            else "text" if ext == ".txt"
            else None
        )
        if kind is None:
            continue
        stem = path.relative_to(folder).with_suffix("").as_posix()
        groups.setdefault(stem, {}).setdefault(kind, []).append(path)
    return groups


def _caption_for(stem: str, files: Dict[str, List[Path]], folder: Path, table: Optional[Dict[str, str]]) -> Optional[str]:
    """The CSV row of the item's main file (matched by relative path, stem or file name), else its
    sidecar ``NAME.txt`` (only when there is no CSV)."""
    if table is not None:
        main = (files.get("image", []) + files.get("video", []) + files.get("audio", []))[0]
        return table.get(main.relative_to(folder).as_posix()) or table.get(stem) or table.get(main.name)
    if files.get("text"):
        return read_sidecar_caption(files["text"][0])
    return None


def index_folder(folder: Path, caption_table: Optional[Dict[str, str]] = None) -> List[Dict[str, Any]]:
    """Entries ``{"stem", "files": {kind: [path]}, "caption"}``, one per picture / video / sound name.

    Raises:
        DataFormatError: two pictures/videos or two sounds share a name, or no media at all.
    """
    entries: List[Dict[str, Any]] = []
    for stem, files in _scan_folder(folder).items():
        visuals = files.get("image", []) + files.get("video", [])
        if len(visuals) > 1:
            raise DataFormatError(f"{folder}: several pictures/videos named {stem!r}: {[p.name for p in visuals]}")
        if len(files.get("audio", [])) > 1:
            raise DataFormatError(f"{folder}: several sound files named {stem!r}: {[p.name for p in files['audio']]}")
        if not visuals and not files.get("audio"):
            continue  # a caption file alone is not an item
        entries.append({"stem": stem, "files": files, "caption": _caption_for(stem, files, folder, caption_table)})
    if not entries:
        raise DataFormatError(f"{folder}: no pictures, videos or sound files found")
    return entries


def _unmatched_caption_rows(entries: List[Dict[str, Any]], folder: Path, table: Dict[str, str]) -> List[str]:
    """CSV names that match no entry by stem, relative path or file name."""
    paths = [p for e in entries for ps in e["files"].values() for p in ps]
    known = {e["stem"] for e in entries} | {p.relative_to(folder).as_posix() for p in paths} | {p.name for p in paths}
    return sorted(name for name in table if name not in known)


class _SkipLog:
    """Collects bad files under ``skip_bad`` (``handler(stem)`` is an ``on_error`` callback that marks
    the stem's whole item as bad); without ``skip_bad`` the handler is None, so the error is raised."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.skipped: List[Dict[str, str]] = []
        self.bad_stems: set = set()

    def handler(self, stem: str) -> Optional[Callable[[Path, DataFormatError], None]]:
        if not self.skip_bad:
            return None

        def on_error(bad_path: Path, err: DataFormatError) -> None:
            self.skipped.append({"file": str(bad_path), "error": str(err)})
            self.bad_stems.add(stem)

        return on_error


def _encode_pictures(entries, encoder, cache, log: _SkipLog, progress: bool) -> Dict[str, Optional[np.ndarray]]:
    """stem -> (1 + grid^2, 1280) Lite0 tokens of the entries that have a picture, batched."""
    with_picture = [e for e in entries if e["files"].get("image")]
    paths = [e["files"]["image"][0] for e in with_picture]
    stem_of = {str(p): e["stem"] for p, e in zip(paths, with_picture)}
    on_error = None
    if log.skip_bad:
        on_error = lambda path, err: log.handler(stem_of[str(path)])(path, err)  # noqa: E731
    tokens = encode_pictures_cached(paths, encoder, cache, on_error=on_error, progress=progress, desc="pictures")
    return {e["stem"]: t for e, t in zip(with_picture, tokens)}


def _encode_videos(entries, encoder, cache, log: _SkipLog, progress: bool) -> Dict[str, Tuple[np.ndarray, Optional[np.ndarray]]]:
    """stem -> (per-second Lite0 tokens, log-mel frames of the track or None), one video at a time."""
    with_video = [e for e in entries if e["files"].get("video")]
    out: Dict[str, Tuple[np.ndarray, Optional[np.ndarray]]] = {}
    for entry in progress_bar(with_video, len(with_video), "videos", progress):
        path = entry["files"]["video"][0]
        try:
            out[entry["stem"]] = encode_video_cached(path, encoder, cache)
        except DataFormatError as err:
            if not log.skip_bad:
                raise
            log.handler(entry["stem"])(path, err)  # type: ignore[misc]
    return out


def _encode_sounds(entries, cache, log: _SkipLog) -> Dict[str, Optional[np.ndarray]]:
    """stem -> log-mel frames of the entry's separate sound file."""
    with_sound = [e for e in entries if e["files"].get("audio")]
    return {
        e["stem"]: encode_audio_cached([e["files"]["audio"]], cache, on_error=log.handler(e["stem"]))[0]
        for e in with_sound
    }


def _folder_item(entry: Dict[str, Any], folder: Path, tokens: Dict[str, Optional[np.ndarray]]) -> Dict[str, Any]:
    stem, files = entry["stem"], entry["files"]
    main = (files.get("image") or files.get("video") or files["audio"])[0]
    return {
        "id": stem,
        "tokens": tokens,
        "caption": entry["caption"],
        "category": Path(stem).parent.as_posix() if Path(stem).parent != Path(".") else "",
        "source": "folder",
        "file": main.relative_to(folder).as_posix(),
        # the media files to show for the item, relative to the folder: {"image" | "video" | "audio": path}
        "media": {kind: files[kind][0].relative_to(folder).as_posix() for kind in ("image", "video", "audio")
                  if files.get(kind)},
        # pictures only: figures show anchors by their top pictures
        **({"path": str(main.resolve())} if files.get("image") else {}),
    }


def encode_folder(
    entries: List[Dict[str, Any]],
    folder: Path,
    encoder,
    cache: Optional[FeatureCache],
    skip_bad: bool = False,
    progress: bool = False,
) -> Tuple[List[Dict[str, Any]], List[Dict[str, str]]]:
    """Entries of :func:`index_folder` -> (store items ``{"id", "tokens": {modality: array or None},
    "caption", "category", "source", "file"[, "path"]}``, skipped files ``{"file", "error"}``).

    With ``skip_bad`` an entry with a bad file is left out and the file listed; otherwise the first bad
    file raises :class:`DataFormatError` naming it.
    """
    log = _SkipLog(skip_bad)
    pictures = _encode_pictures(entries, encoder, cache, log, progress)
    videos = _encode_videos(entries, encoder, cache, log, progress)
    sounds = _encode_sounds(entries, cache, log)
    kept = [e for e in entries if e["stem"] not in log.bad_stems]
    text_encoder = CaptionEncoder(cache)
    captioned = [e for e in kept if e["caption"] is not None]
    minilm = dict(zip([e["stem"] for e in captioned],
                      text_encoder.minilm_tokens([e["caption"] for e in captioned], progress=progress)))
    items = []
    for entry in kept:
        stem, caption = entry["stem"], entry["caption"]
        video, audio = videos.get(stem, (pictures.get(stem), None))
        audio = sounds.get(stem, audio)  # a separate sound file wins over the video's track
        tokens = {
            "video": video,
            "audio": audio,
            "text": text_encoder.glove_tokens(caption) if caption else None,
            "text_minilm": minilm.get(stem),
        }
        items.append(_folder_item(entry, folder, tokens))
    return items, log.skipped


def clip_video_items(items: List[Dict[str, Any]], clip_seconds: Optional[float]) -> List[Dict[str, Any]]:
    """Split every video item into moments: windows ``[k c, (k + 1) c)`` of ``c = clip_seconds`` over the
    video's duration ``D`` (its sound track's length at 100 log-mel frames per second, else its number of
    1-fps frames), the last one ending at ``D`` (a tail shorter than ``c / 2`` joins the window before),
    so that search answers with a moment, not a whole video.

    A moment keeps the video's caption and category, gets the id ``STEM#t=START,END`` (the W3C media
    fragment of that window), fields ``start`` / ``end`` (seconds) and ``entry`` (the video's id); its
    tokens are the video's 1-fps frames ``floor(start) .. ceil(end)`` (at least one) and log-mel frames
    ``100 start .. 100 end``. Pictures and sounds pass unchanged; ``clip_seconds`` None keeps whole videos.
    """
    if clip_seconds is None:
        return list(items)
    if not clip_seconds > 0:
        raise DataFormatError(f"--clip-seconds: must be > 0, got {clip_seconds}")
    out: List[Dict[str, Any]] = []
    for item in items:
        if "video" not in item.get("media", {}):
            out.append(item)
            continue
        frames, audio = item["tokens"]["video"], item["tokens"]["audio"]
        duration = audio.shape[0] / AUDIO_FRAMES_PER_SECOND if audio is not None else float(frames.shape[0])
        count = max(1, int(np.ceil(duration / clip_seconds - 1e-6)))
        if count > 1 and duration - (count - 1) * clip_seconds < clip_seconds / 2:
            count -= 1  # a tail shorter than half a window joins the last window
        for k in range(count):
            start, end = k * clip_seconds, (duration if k == count - 1 else (k + 1) * clip_seconds)
            first = min(int(np.floor(start)), frames.shape[0] - 1)
            video = frames[first: max(first + 1, int(np.ceil(end - 1e-6)))]
            sound = None
            if audio is not None:
                sound = audio[int(round(start * AUDIO_FRAMES_PER_SECOND)): int(round(end * AUDIO_FRAMES_PER_SECOND))]
                sound = sound if sound.shape[0] > 0 else None
            out.append({**item, "id": f"{item['id']}#t={start:g},{end:g}", "tokens": {**item["tokens"], "video": video,
                        "audio": sound}, "start": round(float(start), 3), "end": round(float(end), 3),
                        "entry": item["id"]})
    return out


def folder_split_metadata(folder: Path, encoder, skipped: int, clip_seconds: Optional[float] = None) -> Dict[str, Any]:
    """The manifest record of a split made from ``folder`` (source, encoders; the clip length if any)."""
    return {
        "source": {"kind": "folder", "path": str(folder.resolve())},
        "picture_encoder": encoder.describe(),
        "text_encoder": {"name": GLOVE_NAME, "lowercase": True, "max_words": MAX_TEXT_WORDS},
        "text_encoders": {"text": GLOVE_NAME, "text_minilm": CaptionEncoder.minilm_description()},
        "skipped": skipped,
        **({"clip_seconds": float(clip_seconds)} if clip_seconds is not None else {}),
    }


def prepare_folder(
    path: str | Path,
    out: str | Path,
    captions: Optional[str | Path] = None,
    split: str = "test",
    skip_bad: bool = False,
    image_size: int = 224,
    grid: int = 2,
    cache_dir: Optional[str | Path] = None,
    progress: bool = True,
    clip_seconds: Optional[float] = None,
) -> Dict[str, Any]:
    """Encode a folder of the user's media into one split of a feature store.

    Args:
        path: folder with pictures (raster or SVG), videos and/or sound files (searched recursively;
            hidden files skipped).
        out: feature-store root to write (created; other splits already there are kept).
        captions: optional CSV with columns ``file`` and ``caption``; else sidecar ``NAME.txt`` files.
        split: name of the split to write.
        skip_bad: skip unreadable files (listed in the returned ``skipped`` and in
            ``OUT/skipped_SPLIT.json``) instead of raising :class:`DataFormatError`.
        image_size, grid: picture encoding (see :mod:`multisk.data.encoders.image_features`).
        cache_dir: token cache (default ``OUT/cache``).
        progress: show tqdm progress bars.
        clip_seconds: split each video into moments of this many seconds (:func:`clip_video_items`).

    Returns:
        ``{"root", "split", "count", "modalities": {m: items_present}, "skipped": [...], "seconds"}``.

    Raises:
        FileNotFoundError: ``path`` is not a folder.
        DataFormatError: a bad file (unless ``skip_bad``), a bad CSV, ambiguous names, or no media found.
    """
    started = time.perf_counter()
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: media folder not found")
    root = Path(out)
    cache = FeatureCache(Path(cache_dir) if cache_dir is not None else root / "cache")
    encoder = PictureEncoder(image_size=image_size, grid=grid)
    caption_table = _read_caption_csv(Path(captions)) if captions is not None else None

    entries = index_folder(folder, caption_table)
    if caption_table is not None:
        unmatched = _unmatched_caption_rows(entries, folder, caption_table)
        if unmatched:
            warnings.warn(f"{captions}: {len(unmatched)} caption rows match no media file (first: {unmatched[0]!r})")
    items, skipped = encode_folder(entries, folder, encoder, cache, skip_bad=skip_bad, progress=progress)
    if not items:
        raise DataFormatError(f"{folder}: every media file was skipped as bad (see the skipped list)")
    items = clip_video_items(items, clip_seconds)
    info = write_split(root, split, items, metadata=folder_split_metadata(folder, encoder, len(skipped), clip_seconds))
    (root / f"skipped_{split}.json").write_text(json.dumps(skipped, indent=2), encoding="utf-8")
    return {
        "root": str(root),
        "split": split,
        "count": info["count"],
        "modalities": {m: meta["items_present"] for m, meta in info["modalities"].items()},
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 2),
    }


__all__ = [
    "AUDIO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "clip_video_items",
    "encode_folder",
    "folder_split_metadata",
    "index_folder",
    "prepare_folder",
    "read_caption_csv",
    "read_sidecar_caption",
]
