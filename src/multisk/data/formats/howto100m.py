"""HowTo100M in the layout the field uses (docs/data.md), and training-clip sampling (the reference's rule).

Files::

    CSV                                   a column ``path``: relative video paths ("None/" prefixes dropped);
                                          the video id is the last path component
    {features_path}/{path}/{id}_2d.npz    key ``features``: (T2, 2048) 2D-CNN features at 1 feature / s
    {features_path}/{path}/{id}_3d.npz    key ``features``: (T3, 2048) 3D-CNN features at 1.5 features / s
    {features_path_audio}/{path}/{id}_spec.npz   key ``arr_0``: (40, F) log-mel spectrogram, 100 frames / s
    caption.pickle                        dict id -> {'start': (S,), 'end': (S,), 'text': (S,) strings}

``caption.pickle`` is a Python pickle: **loading a pickle executes code stored in it** — only load
files from a source you trust.

The reference's fallback names are tried too: ``{features_path}/{path}_2d.npz`` for 2D and
``{features_path_3d}/{path}/{id}.npz`` for 3D (:data:`FEATURE_FILE_NAMES`).

A *missing* feature file (no name found) means that half / modality is absent for the video: a missing
2D or 3D file leaves that half of every video token zero; missing audio gives an empty audio modality;
a video without captions gives clips without text. Such videos are counted when the dataset is built
(:attr:`HowTo100MDataset.missing_files`) and reported in one warning with the counts and the first ids
— never a silent empty modality. ``strict_files=True`` makes any missing file an error instead. A file
that exists but is truncated, has the wrong key, shape or feature size, or contains NaN/inf raises
:class:`DataFormatError` naming the file and the field.

Clip sampling (the reference's rule, docs/data.md): draw ``start ~ U[0, max(0, duration - clip_seconds)]``
with ``duration = int(seconds covered by the spectrogram)``, ``end = start + clip_seconds``. If ``start``
lies inside an ASR segment (else: if ``end`` lies inside one), that segment is grown with neighbours —
each step adds the neighbour that keeps the span shorter (the previous one on ties; only the existing
side at a video border) — until it spans at least ``clip_seconds``; the clip is then the grown span and
its text the words of its segments. Words are kept in time order (the reference appends a previous
segment's words after the current ones; with the 20-word limit time order keeps the first words of the
span). Otherwise the clip has no text. Video tokens come from the clip span. Audio:

* ``text_audio_misaligned=False`` (EAO's own ablation, the default of the library): audio frames of the
  same span, ``[frame(span_start), frame(span_end))``, at most ``max_audio_frames``;
* ``text_audio_misaligned=True`` (EAO's and the paper's pre-training, ``flag_text_audio_misaligned:
  true`` in both; ``data.flag_text_audio_misaligned`` in the config, on in ``configs/paper/``): the audio
  window starts ``clip_seconds / 2`` (4 s) after the span start and lasts ``clip_seconds``, so it may
  run past the span (and is shorter where the spectrogram ends first). This disentangles audio from the
  ASR text, which is a transcript of that same audio.

A clip without ASR text takes ``max_audio_frames`` frames from its start in both modes (the reference).
Here ``frame(t) = floor((t * 16000 - 200) / 160)`` (librosa's ``time_to_frames`` with n_fft 400, hop 160).

Memory: ``caption.pickle`` holds ~1.2M Python dicts. Python objects touched by a DataLoader worker (even
by the garbage collector) are copied into that worker, so a dict shared by fork slowly becomes a copy per
worker and rank. :class:`CaptionTable` therefore packs the captions of the CSV's videos into a few flat
numpy arrays (segment times, UTF-8 text bytes + offsets) right after loading and drops the dict.
"""

from __future__ import annotations

import csv as csv_module
import math
import os
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from multisk.data.formats.arrays import (
    FEATURE_DIM_2D,
    FEATURE_DIM_3D,
    check_array,
    check_layout,
    check_values,
    combine_video_features,
    read_pickle,
)
from multisk.errors import DataFormatError

N_MELS = 40
FPS_2D = 1.0
FPS_3D = 1.5
SAMPLE_RATE = 16000
HOP_LENGTH = 160  # 10 ms -> 100 frames / s
N_FFT = 400  # 25 ms window

# file names tried in order, relative to (features_path | features_path_3d | features_path_audio);
# {path} is the CSV's relative path, {id} its last component. The second names are the reference's
# fallbacks (docs/data.md).
FEATURE_FILE_NAMES = {
    "2d": ("{path}/{id}_2d.npz", "{path}_2d.npz"),
    "3d": ("{path}/{id}_3d.npz", "{path}/{id}.npz"),
    "audio": ("{path}/{id}_spec.npz",),
}


# ---------------------------------------------------------------------------------------------------
# the feature files (array checks and the 2D + 3D video layout: multisk.data.formats.arrays)


def load_npz_array(path: Path, key: str, shape: Sequence[Optional[int]]) -> np.ndarray:
    """Read array ``key`` from an ``.npz`` file, checked with :func:`check_array` (no pickles allowed)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive.files:
                have = ", ".join(archive.files) or "none"
                raise DataFormatError(f"{path}: missing field {key!r} (keys present: {have})")
            value = archive[key]
    except DataFormatError:
        raise
    except FileNotFoundError:
        raise DataFormatError(f"{path}: field {key!r}: file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise DataFormatError(f"{path}: field {key!r}: truncated or corrupt npz ({type(err).__name__}: {err})") from None
    return check_array(value, str(path), key, shape=shape)


def _stored_npz_member(path: Path, key: str) -> Optional[np.ndarray]:
    """A read-only memory map of member ``key`` of an npz written uncompressed (``np.savez``), or None when
    the member is compressed (``np.savez_compressed``) or absent. Reads the zip directory, the member's
    local header and the ``.npy`` header only."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(key + ".npy")
        except KeyError:
            return None
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise ValueError("bad local file header")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(fh)
        offset = fh.tell()
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")


def open_npz_array(path: Path, key: str, shape: Sequence[Optional[int]]) -> np.ndarray:
    """Array ``key`` of an ``.npz`` file for slicing: an uncompressed member is memory-mapped (only the
    rows later sliced from it are read; rank, sizes and dtype are checked now, the values where they are
    used, :func:`check_values`); a compressed one is read and checked whole (:func:`load_npz_array`)."""
    try:
        view = _stored_npz_member(path, key)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: field {key!r}: file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, struct.error) as err:
        raise DataFormatError(f"{path}: field {key!r}: truncated or corrupt npz ({type(err).__name__}: {err})") from None
    if view is None:
        return load_npz_array(path, key, shape)
    check_layout(view, str(path), key, shape=shape)
    return view


# ---------------------------------------------------------------------------------------------------
# time <-> spectrogram frames, as the reference converts them (librosa with n_fft = 400, hop 160)


def frames_to_seconds(n_frames: int) -> float:
    """Time of frame ``n``: ``(n * hop + n_fft // 2) / sr``; duration of a spectrogram is ``int()`` of it."""
    return (n_frames * HOP_LENGTH + N_FFT // 2) / SAMPLE_RATE


def seconds_to_frame(seconds: float) -> int:
    """Frame holding time ``t``: ``floor((t * sr - n_fft // 2) / hop)``, at least 0."""
    return max(0, int(math.floor((seconds * SAMPLE_RATE - N_FFT // 2) / HOP_LENGTH)))


def feature_slice(features: Optional[np.ndarray], fps: float, start: float, end: float) -> Optional[np.ndarray]:
    """Rows ``[int(start * fps), int(end * fps) + 1)`` of a feature sequence (the reference's borders)."""
    if features is None:
        return None
    return features[int(start * fps) : int(end * fps) + 1]


# ---------------------------------------------------------------------------------------------------
# captions and clip sampling


def load_howto_captions(path: str | Path) -> Dict[str, Any]:
    """``caption.pickle``: dict video id -> {'start', 'end', 'text'} (checked per video when used).

    **A pickle: executes code on load — only read trusted files.**
    """
    data = read_pickle(Path(path), field="caption")
    if not isinstance(data, Mapping):
        raise DataFormatError(f"{path}: field 'caption': expected a dict video id -> segments, got {type(data).__name__}")
    return dict(data)


@dataclass
class CaptionSegments:
    """ASR segments of one video: ``start``/``end`` (S,) seconds, ``text`` S strings, sorted by start."""

    start: np.ndarray
    end: np.ndarray
    text: List[str]


def _segment_text(value: Any, where: str) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataFormatError(f"{where} field 'text': not valid UTF-8 ({err})") from None
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""  # empty ASR segments are stored as NaN in some caption files
    raise DataFormatError(f"{where} field 'text': expected strings, got {type(value).__name__}")


def check_segments(entry: Any, where: str) -> CaptionSegments:
    """Validate one ``caption.pickle`` entry (keys, equal lengths, finite times, ``start <= end``)."""
    if not isinstance(entry, Mapping):
        raise DataFormatError(f"{where}: expected a dict with 'start', 'end', 'text', got {type(entry).__name__}")
    for key in ("start", "end", "text"):
        if key not in entry:
            raise DataFormatError(f"{where}: missing field {key!r}")
    # checked (rank, dtype, finite) by check_array, but kept in float64: a float32 copy would move a
    # time of 3600 s by up to 1.2e-4 s, enough to shift a frame border (frames are 10 ms)
    check_array(entry["start"], where, "start", shape=(None,))
    check_array(entry["end"], where, "end", shape=(None,))
    start = np.asarray(entry["start"], dtype=np.float64)
    end = np.asarray(entry["end"], dtype=np.float64)
    texts = list(np.asarray(entry["text"], dtype=object).reshape(-1))
    if not (len(start) == len(end) == len(texts)):
        raise DataFormatError(
            f"{where} field 'text': lengths differ (start {len(start)}, end {len(end)}, text {len(texts)})"
        )
    if np.any(end < start):
        raise DataFormatError(f"{where} field 'end': a segment ends before it starts")
    if np.any(np.diff(start) < 0):
        raise DataFormatError(f"{where} field 'start': segments are not sorted by start time")
    return CaptionSegments(start, end, [_segment_text(t, where) for t in texts])


@dataclass
class ClipSpan:
    """A sampled clip: video span [start, end] s, audio span, the ASR segment range (or None), words."""

    start: float
    end: float
    audio_start: float
    audio_end: float
    segments: Optional[Tuple[int, int]]
    words: List[str]


def grow_segment(segments: CaptionSegments, index: int, min_seconds: float) -> Tuple[int, int]:
    """Grow segment ``index`` with neighbours until ``end[last] - start[first] >= min_seconds``.

    Each step adds the previous segment if that gives a span no longer than adding the next one
    (``end[last] - start[first-1] <= end[last+1] - start[first]``), else the next; at a border only the
    existing side is added; stops when no neighbour is left. Returns (first, last), inclusive.
    """
    first = last = index
    count = len(segments.start)
    while segments.end[last] - segments.start[first] < min_seconds:
        can_prev, can_next = first > 0, last < count - 1
        if can_prev and can_next:
            span_with_prev = segments.end[last] - segments.start[first - 1]
            span_with_next = segments.end[last + 1] - segments.start[first]
            if span_with_prev <= span_with_next:
                first -= 1
            else:
                last += 1
        elif can_prev:
            first -= 1
        elif can_next:
            last += 1
        else:
            break
    return first, last


def sample_clip(
    segments: Optional[CaptionSegments],
    duration: float,
    rng: np.random.Generator,
    clip_seconds: float = 8.0,
    text_audio_misaligned: bool = False,
) -> ClipSpan:
    """Draw one training clip by the rule in the module docstring.

    With ASR text, ``(start, end)`` is the grown segment span ``[S, E]`` and the audio span is ``[S, E]``,
    or ``[S + clip_seconds / 2, S + 3 * clip_seconds / 2]`` when ``text_audio_misaligned``. Without text
    both spans are ``[start, start + clip_seconds]``. ``rng.random()`` is drawn exactly once.
    """
    from multisk.data.encoders.text import tokenize

    start = float(rng.random()) * max(0.0, duration - clip_seconds)
    end = start + clip_seconds
    hit: Optional[int] = None
    if segments is not None and len(segments.start):
        i_start = max(0, int(np.searchsorted(segments.start, start, side="left")) - 1)
        i_end = max(0, int(np.searchsorted(segments.start, end, side="left")) - 1)
        if segments.start[i_start] <= start <= segments.end[i_start]:
            hit = i_start
        elif segments.start[i_end] <= end <= segments.end[i_end]:
            hit = i_end
    if hit is None:
        return ClipSpan(start, end, start, end, None, [])
    first, last = grow_segment(segments, hit, clip_seconds)  # type: ignore[arg-type]
    words: List[str] = []
    for j in range(first, last + 1):
        words.extend(tokenize(segments.text[j]))  # type: ignore[union-attr]
    span_start, span_end = float(segments.start[first]), float(segments.end[last])  # type: ignore[union-attr]
    audio_start, audio_end = span_start, span_end
    if text_audio_misaligned:
        audio_start = span_start + 0.5 * clip_seconds
        audio_end = audio_start + clip_seconds
    return ClipSpan(span_start, span_end, audio_start, audio_end, (first, last), words)


# ---------------------------------------------------------------------------------------------------
# the dataset


def read_video_csv(path: str | Path) -> List[str]:
    """The ``path`` column of a HowTo100M CSV (``None/`` prefixes removed, as in the reference).

    Read with the standard library's ``csv`` module (no pandas: ``pip install multisk`` without extras
    converts and trains on HowTo100M). Like ``pandas.read_csv``: the first row is the header, other
    columns are ignored, blank lines are skipped, a UTF-8 byte-order mark is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: field 'path': CSV file not found")
    paths: List[str] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv_module.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DataFormatError(f"{path}: empty CSV (expected a header row with a field 'path')")
            columns = [name.strip() for name in header]
            if "path" not in columns:
                raise DataFormatError(f"{path}: missing field 'path' (columns: {', '.join(columns)})")
            column = columns.index("path")
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue  # blank line
                value = row[column] if column < len(row) else ""
                cleaned = value.replace("None/", "").strip().strip("/")
                if not cleaned:
                    raise DataFormatError(f"{path}: line {reader.line_num} field 'path' is empty")
                paths.append(cleaned)
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not a readable CSV (not UTF-8: {err})") from None
    except csv_module.Error as err:
        raise DataFormatError(f"{path}: not a readable CSV (line {reader.line_num}: {err})") from None
    return paths


class PackedStrings:
    """Many strings in two numpy arrays: UTF-8 bytes ``data`` (N_bytes,) uint8 and ``offsets`` (n + 1,) int64.

    String ``i`` is ``data[offsets[i]:offsets[i + 1]].decode()``. Two arrays instead of n Python objects:
    a forked DataLoader worker shares them with its parent (no reference counts or GC headers are
    written, so no page is copied), and pickling them to a spawned worker is one buffer each.
    """

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        self.data = np.asarray(data, dtype=np.uint8)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        offsets = self.offsets
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(self.data):
            raise ValueError("PackedStrings: offsets must start at 0 and end at len(data)")

    @classmethod
    def from_strings(cls, strings: Sequence[str]) -> "PackedStrings":
        encoded = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets)

    @classmethod
    def from_chunks(cls, chunks: List[bytes], lengths: List[np.ndarray]) -> "PackedStrings":
        """From concatenated UTF-8 ``chunks`` whose string byte lengths are ``lengths`` (one array per
        chunk). Empties ``chunks`` while copying, so the bytes are held twice only one chunk at a time."""
        counts = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        data = np.empty(int(offsets[-1]), dtype=np.uint8)
        position = 0
        chunks.reverse()
        while chunks:
            chunk = chunks.pop()
            data[position : position + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            position += len(chunk)
        if position != len(data):
            raise ValueError(f"PackedStrings.from_chunks: {position} bytes in chunks, lengths say {len(data)}")
        return cls(data, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} strings")
        index %= len(self)
        return self.data[self.offsets[index] : self.offsets[index + 1]].tobytes().decode("utf-8")

    def slice(self, first: int, stop: int) -> List[str]:
        """Strings ``first .. stop - 1`` as a list."""
        return [self[i] for i in range(first, stop)]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.offsets.nbytes)


class CaptionTable:
    """The ASR captions of a list of videos as flat arrays (one row range per video).

    Video ``v``'s segments are rows ``ranges[v, 0]:ranges[v, 1]`` ((V, 2) int64) of ``start`` / ``end``
    (N,) float64 and ``text`` (:class:`PackedStrings`, N strings); a video listed twice shares one range.
    ``present`` (V,) bool: whether ``caption.pickle`` has an entry for the video. An entry that fails
    :func:`check_segments` is stored as its error message (``errors``: video row -> message) and raised
    when the video is read, so one bad entry fails that video, by name, exactly as before packing.

    ``consume=True`` removes each entry from ``captions`` once packed, so the dict shrinks while the
    table grows (peak memory ~ the larger of the two instead of their sum); texts are gathered as one
    UTF-8 ``bytes`` per video, never as one Python ``str`` per segment.
    """

    def __init__(self, captions: Mapping[str, Any], video_ids: Sequence[str], where: str, consume: bool = False) -> None:
        starts: List[np.ndarray] = []
        ends: List[np.ndarray] = []
        chunks: List[bytes] = []
        lengths: List[np.ndarray] = []
        self.ranges = np.zeros((len(video_ids), 2), dtype=np.int64)
        self.present = np.zeros(len(video_ids), dtype=bool)
        self.errors: Dict[int, str] = {}
        packed: Dict[str, int] = {}  # video id -> first row that packed it (duplicates reuse its range)
        total = 0
        for row, video_id in enumerate(video_ids):
            if video_id in packed:
                first_row = packed[video_id]
                self.ranges[row] = self.ranges[first_row]
                self.present[row] = self.present[first_row]
                if first_row in self.errors:
                    self.errors[row] = self.errors[first_row]
                continue
            packed[video_id] = row
            entry = captions.pop(video_id, None) if consume else captions.get(video_id)  # type: ignore[attr-defined]
            if entry is None:
                continue
            self.present[row] = True
            try:
                segments = check_segments(entry, f"{where}: video {video_id!r}")
            except DataFormatError as err:
                self.errors[row] = str(err)
                continue
            encoded = [text.encode("utf-8") for text in segments.text]
            starts.append(segments.start)
            ends.append(segments.end)
            chunks.append(b"".join(encoded))
            lengths.append(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
            self.ranges[row] = (total, total + len(encoded))
            total += len(encoded)
        self.start = np.concatenate(starts) if starts else np.zeros(0, dtype=np.float64)
        self.end = np.concatenate(ends) if ends else np.zeros(0, dtype=np.float64)
        del starts, ends
        self.text = PackedStrings.from_chunks(chunks, lengths)

    def __len__(self) -> int:
        return len(self.present)

    def segments(self, row: int) -> Optional[CaptionSegments]:
        """Segments of video ``row`` (None when the pickle has no entry for it)."""
        if row in self.errors:
            raise DataFormatError(self.errors[row])
        if not self.present[row]:
            return None
        first, stop = int(self.ranges[row, 0]), int(self.ranges[row, 1])
        return CaptionSegments(self.start[first:stop], self.end[first:stop], self.text.slice(first, stop))

    @property
    def nbytes(self) -> int:
        """Bytes held in arrays (what every worker shares)."""
        arrays = (self.ranges, self.present, self.start, self.end)
        return int(sum(a.nbytes for a in arrays) + self.text.nbytes)


@dataclass
class VideoFeatures:
    """Everything loaded for one video: (T2, 2048), (T3, 2048), (F, 40) frames (None when absent)."""

    video_id: str
    features_2d: Optional[np.ndarray]
    features_3d: Optional[np.ndarray]
    audio_frames: Optional[np.ndarray]
    segments: Optional[CaptionSegments]
    # kind ("2d", "3d", "audio") -> (file, field) the arrays come from; they may be memory maps whose values
    # are checked when a clip reads them (:meth:`rows`)
    sources: Dict[str, Tuple[str, str]] = field(default_factory=dict)

    def rows(self, kind: str, rows: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """``rows`` (a slice of this video's ``kind`` array) as float32, checked for NaN / inf (naming the file)."""
        if rows is None:
            return None
        where, name = self.sources.get(kind, (self.video_id, kind))
        return check_values(rows, where, name)

    @property
    def duration(self) -> float:
        """Seconds covered: from the spectrogram (as the reference), else from the video features."""
        if self.audio_frames is not None and self.audio_frames.shape[0]:
            return float(int(frames_to_seconds(self.audio_frames.shape[0])))
        candidates = [0.0]
        if self.features_3d is not None:
            candidates.append(self.features_3d.shape[0] / FPS_3D)
        if self.features_2d is not None:
            candidates.append(self.features_2d.shape[0] / FPS_2D)
        return float(int(max(candidates)))


class HowTo100MDataset:
    """HowTo100M training clips straight from the field's files (map-style, one video per index).

    ``dataset[i]`` is a list of ``clips_per_video`` per-item dicts (the multisk per-item shape: ``text``
    (Lt, Dt), ``video`` (Lv, 4096), ``audio`` (F, 40) frames, ``index``, ``id``; plus ``caption``,
    ``start``, ``end``). Clip ``k`` of video ``i`` has ``index = i * clips_per_video + k`` and id ``"<video id>#k"``. Use
    :attr:`collate_fn` (flattens the lists and pads to fixed lengths) with a ``DataLoader`` whose batch
    size counts videos, as in the reference (216 videos x 10 clips).

    Randomness: clip starts come from ``numpy.random.default_rng([seed, epoch, i])``, so an item is the
    same in every worker and rank for a given seed and epoch; call :meth:`set_epoch` each epoch.

    Args:
        csv, features_path, audio_path, caption_path: the files of docs/data.md (``features_path_3d`` defaults
            to ``features_path``).
        word_vectors: a ``KeyedVectors`` or a spec for :func:`multisk.data.encoders.word_vectors.load_word_vectors`.
        max_words / max_video_tokens / max_audio_frames: crop lengths (first words / first time steps /
            first frames of the span, as the reference); 20 / 12 / 768 for 8 s clips.
        text_audio_misaligned: audio window ``clip_seconds / 2`` after the span start, ``clip_seconds``
            long (module docstring; the paper's pre-training). ``audio_offset_quirk`` is its deprecated old
            name (still accepted, with a ``DeprecationWarning``).
        lowercase: lower-case words before the vocabulary look-up (GloVe); default: True only for the
            packaged GloVe.
        scan_files: check every video's files when built (``stat`` only) and warn with the counts of
            absent ones (:attr:`missing_files`); False skips the scan (missing files are then only
            noticed as empty modalities, or as errors with ``strict_files``).
        memory_map: memory-map uncompressed (``np.savez``) feature files, so a video's 10 clips read
            their own rows, not the whole files (~5x fewer bytes for 390 s videos; docs/benchmarks.md);
            rank, sizes and dtype are checked on opening, NaN / inf in the rows a clip reads. False (or
            a compressed file) reads and checks every file whole.
        video_dtype: dtype of the collated ``video`` tensor (``torch.float16`` halves the batch that
            workers pass through shared memory and copy to the device; the L2-normalised halves lose
            at most ~2.4e-4 relative per token, docs/data.md). Items stay float32.

    Memory: the CSV paths and the captions of its videos are held as flat arrays (:class:`PackedStrings`,
    :class:`CaptionTable`), not as Python objects, so DataLoader workers share them instead of copying.
    """

    def __init__(
        self,
        csv: str | Path,
        features_path: str | Path,
        audio_path: str | Path,
        caption_path: str | Path,
        word_vectors: Any,
        clips_per_video: int = 10,
        clip_seconds: float = 8.0,
        max_words: int = 20,
        max_video_tokens: int = 12,
        max_audio_frames: int = 768,
        features_path_3d: Optional[str | Path] = None,
        text_audio_misaligned: bool = False,
        lowercase: Optional[bool] = None,
        strict_files: bool = False,
        seed: int = 0,
        video_dtype: Any = None,
        audio_offset_quirk: Optional[bool] = None,
        scan_files: bool = True,
        memory_map: bool = True,
    ) -> None:
        from multisk.data.encoders.word_vectors import PACKAGED_GLOVE, load_word_vectors

        self.csv = Path(csv)
        self.video_paths = PackedStrings.from_strings(read_video_csv(self.csv))
        self.features_path = Path(features_path)
        self.features_path_3d = Path(features_path_3d) if features_path_3d is not None else self.features_path
        self.audio_path = Path(audio_path)
        for field, directory in (("features_path", self.features_path), ("features_path_3d", self.features_path_3d),
                                 ("features_path_audio", self.audio_path)):
            if not directory.is_dir():
                raise DataFormatError(f"{directory}: field {field!r}: directory not found")
        self.caption_path = Path(caption_path)
        # packed right away; the dict (a Python object per video and segment) is dropped on return
        self.captions = CaptionTable(load_howto_captions(self.caption_path),
                                     [self.video_id(i) for i in range(len(self.video_paths))], str(self.caption_path),
                                     consume=True)
        if isinstance(word_vectors, (str, os.PathLike)):
            if lowercase is None:
                lowercase = str(word_vectors) == PACKAGED_GLOVE
            word_vectors = load_word_vectors(str(word_vectors))
        self.kv = word_vectors
        self.lowercase = bool(lowercase)
        if clips_per_video < 1:
            raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
        self.clips_per_video = int(clips_per_video)
        self.clip_seconds = float(clip_seconds)
        self.max_tokens = {"text": int(max_words), "video": int(max_video_tokens), "audio": int(max_audio_frames)}
        if audio_offset_quirk is not None:
            warnings.warn("HowTo100MDataset: keyword 'audio_offset_quirk' is deprecated; use 'text_audio_misaligned' "
                          "(same meaning)", DeprecationWarning, stacklevel=2)
            text_audio_misaligned = bool(audio_offset_quirk)
        self.text_audio_misaligned = bool(text_audio_misaligned)
        self.video_dtype = video_dtype
        self.strict_files = bool(strict_files)
        self.memory_map = bool(memory_map)
        self.seed = int(seed)
        self.epoch = 0
        # counted once, reported in one warning (docs/data.md: never a silent empty modality)
        self.missing_files: Dict[str, List[str]] = self.scan_missing_files() if scan_files else {}
        self._report_missing()

    def __len__(self) -> int:
        return len(self.video_paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def audio_offset_quirk(self) -> bool:
        """Deprecated old name of :attr:`text_audio_misaligned` (read by callers written before the rename)."""
        warnings.warn("HowTo100MDataset.audio_offset_quirk is deprecated; use text_audio_misaligned",
                      DeprecationWarning, stacklevel=2)
        return self.text_audio_misaligned

    def video_id(self, index: int) -> str:
        return self.video_paths[index].split("/")[-1]

    def feature_file(self, index: int, kind: str) -> Tuple[Optional[Path], List[Path]]:
        """The first existing file of ``kind`` ("2d" / "3d" / "audio") for video ``index`` (None if none)
        and every name tried (:data:`FEATURE_FILE_NAMES`)."""
        root = {"2d": self.features_path, "3d": self.features_path_3d, "audio": self.audio_path}[kind]
        rel, video_id = self.video_paths[index], self.video_id(index)
        tried = [root / pattern.format(path=rel, id=video_id) for pattern in FEATURE_FILE_NAMES[kind]]
        return next((path for path in tried if path.is_file()), None), tried

    def _optional_npz(self, index: int, kind: str, key: str, shape: Sequence[Optional[int]],
                      sources: Dict[str, Tuple[str, str]]) -> Optional[np.ndarray]:
        path, tried = self.feature_file(index, kind)
        if path is None:
            if self.strict_files:
                also = f" (also tried {', '.join(map(str, tried[1:]))})" if len(tried) > 1 else ""
                raise DataFormatError(f"{tried[0]}: field {key!r}: file not found{also}")
            return None
        sources[kind] = (str(path), key)
        return open_npz_array(path, key, shape) if self.memory_map else load_npz_array(path, key, shape)

    def scan_missing_files(self) -> Dict[str, List[str]]:
        """Video ids per absent input (``"2d"``, ``"3d"``, ``"audio"``, ``"captions"``): one ``stat`` per
        file name, no file is read."""
        missing: Dict[str, List[str]] = {"2d": [], "3d": [], "audio": [], "captions": []}
        for index in range(len(self)):
            for kind in ("2d", "3d", "audio"):
                if self.feature_file(index, kind)[0] is None:
                    missing[kind].append(self.video_id(index))
            if not self.captions.present[index]:
                missing["captions"].append(self.video_id(index))
        return missing

    def _report_missing(self) -> None:
        absent = {kind: ids for kind, ids in self.missing_files.items() if ids}
        if not absent:
            return
        if self.strict_files:
            return  # reading such a video raises, naming the file
        effect = {"2d": "2D half of their video tokens is zero", "3d": "3D half of their video tokens is zero",
                  "audio": "no audio", "captions": "no text"}
        parts = [f"{len(ids)} of {len(self)} videos lack {kind} ({effect[kind]}; first: {', '.join(ids[:3])})"
                 for kind, ids in absent.items()]
        warnings.warn(f"HowTo100M {self.csv}: " + "; ".join(parts), stacklevel=3)

    def load_video(self, index: int) -> VideoFeatures:
        """Read the feature files and captions of video ``index`` (missing files -> None)."""
        video_id = self.video_id(index)
        sources: Dict[str, Tuple[str, str]] = {}
        f2d = self._optional_npz(index, "2d", "features", (None, FEATURE_DIM_2D), sources)
        f3d = self._optional_npz(index, "3d", "features", (None, FEATURE_DIM_3D), sources)
        spec = self._optional_npz(index, "audio", "arr_0", (N_MELS, None), sources)
        segments = self.captions.segments(index)
        if segments is None and self.strict_files:
            raise DataFormatError(f"{self.caption_path}: field {video_id!r}: no captions for this video")
        frames = None if spec is None else spec.T  # a view: a clip copies only its frames
        return VideoFeatures(video_id, f2d, f3d, frames, segments, sources)

    def clip_item(self, video: VideoFeatures, clip: ClipSpan, index: int) -> Dict[str, Any]:
        """Per-item dict (numpy arrays) of one clip: tokens cropped to ``max_tokens`` from the span start."""
        from multisk.data.encoders.text import encode_text

        video_tokens = combine_video_features(
            video.rows("2d", feature_slice(video.features_2d, FPS_2D, clip.start, clip.end)),
            video.rows("3d", feature_slice(video.features_3d, FPS_3D, clip.start, clip.end)),
        )[: self.max_tokens["video"]]
        if video.audio_frames is not None:
            first = seconds_to_frame(clip.audio_start)
            if clip.segments is None:  # no ASR: a fixed window from the start frame (the reference)
                last = first + self.max_tokens["audio"]
            else:
                last = min(seconds_to_frame(clip.audio_end), first + self.max_tokens["audio"])
            audio = video.rows("audio", video.audio_frames[first:last])
        else:
            audio = np.zeros((0, N_MELS), dtype=np.float32)
        caption = " ".join(clip.words)
        if clip.words:
            text = encode_text(self.kv, caption, self.max_tokens["text"], self.lowercase,
                               where=f"{self.caption_path}: video {video.video_id!r} field 'text'")
        else:
            text = np.zeros((0, self.kv.vector_size), dtype=np.float32)
        return {
            "text": text,
            "video": video_tokens,
            "audio": np.asarray(audio, dtype=np.float32),
            "index": index,
            "id": f"{video.video_id}#{index % self.clips_per_video}",
            "caption": caption,
            "start": clip.start,
            "end": clip.end,
        }

    def clips(self, index: int, as_tensors: bool = True) -> List[Dict[str, Any]]:
        """The ``clips_per_video`` sampled clips of video ``index``."""
        import torch

        video = self.load_video(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        items = []
        for k in range(self.clips_per_video):
            clip = sample_clip(video.segments, video.duration, rng, self.clip_seconds, self.text_audio_misaligned)
            item = self.clip_item(video, clip, index * self.clips_per_video + k)
            if as_tensors:
                for m in ("text", "video", "audio"):
                    item[m] = torch.from_numpy(np.ascontiguousarray(item[m]))
            items.append(item)
        return items

    def __getitem__(self, index: int) -> List[Dict[str, Any]]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        return self.clips(index)

    @property
    def collate_fn(self):
        """Flatten per-video clip lists and collate to the batch dict with fixed padded lengths."""
        from functools import partial

        dtypes = {"video": self.video_dtype} if self.video_dtype is not None else None
        return partial(collate_video_clips, pad_to=dict(self.max_tokens), dtypes=dtypes)


def collate_video_clips(
    videos: Sequence[Sequence[Mapping[str, Any]]],
    pad_to: Optional[Mapping[str, int]] = None,
    dtypes: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Flatten ``[[clip, ...], ...]`` (B videos x C clips) into one batch of B*C clips (batch dict)."""
    from multisk.data.store.dataset import collate_batch

    return collate_batch([clip for clips in videos for clip in clips], pad_to=pad_to, dtypes=dtypes)


__all__ = [
    "CaptionSegments", "CaptionTable", "ClipSpan", "FEATURE_FILE_NAMES", "HowTo100MDataset", "PackedStrings",
    "VideoFeatures", "check_segments", "collate_video_clips", "feature_slice", "frames_to_seconds", "grow_segment",
    "load_howto_captions", "load_npz_array", "open_npz_array", "read_video_csv", "sample_clip", "seconds_to_frame",
]
