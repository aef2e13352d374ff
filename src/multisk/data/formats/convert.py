"""Convert the field's formats (MSR-VTT / YouCook2 pickles, HowTo100M files) into a multisk feature store.

The store gets three modalities: ``text`` (word vectors of the caption's first ``max_words``
in-vocabulary words, docs/data.md), ``video`` (4096-d tokens ``[n(2D) ; n(3D)]``) and ``audio``
(spectrogram frames, (F, 40) per item). The split's manifest entry records ``source``, ``input``,
``complete_size`` (the divisor for retrieval percentages), ``max_tokens`` (the stored lengths),
``word_vectors``, ``lowercase``, ``text_encoder`` (how to embed new text the same way: see
:func:`text_encoder_record`) and the skip counts. The evaluation pickles also record ``eval_window``
(the first 48 / 3072 or 72 / 4608 steps, crop ``start``) and ``empty_modalities: masking_token``:
the protocol ``multisk eval`` applies to the split (docs/evaluation.md).

Bad input raises :class:`DataFormatError` naming the file and the field. With ``skip_bad=True`` bad items
are left out and listed in ``OUT/<split>.skipped.json`` (``{"file", "item", "field", "reason"}`` each).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

from multisk.data.formats.eval_pickles import bad_item_record, load_msrvtt, load_youcook2
from multisk.data.store.feature_store import FeatureStoreWriter
from multisk.data.formats.howto100m import HowTo100MDataset
from multisk.data.encoders.text import encode_text
from multisk.data.encoders.word_vectors import PACKAGED_GLOVE, load_word_vectors
from multisk.errors import DataFormatError

KINDS = ("msrvtt", "youcook2", "howto100m")
DEFAULT_SPLITS = {"msrvtt": "test", "youcook2": "test", "howto100m": "train"}


def skipped_report_path(out_root: str | Path, split: str) -> Path:
    return Path(out_root) / f"{split}.skipped.json"


def _write_report(path: Path, kind: str, source: str, bad: List[Dict[str, str]], skipped_by_rule: List[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"kind": kind, "input": source, "skipped_bad": bad, "skipped_by_rule": skipped_by_rule}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


#: storage dtypes a converted store may use, and the default per source kind
STORAGE_DTYPES = ("float32", "float16")
DEFAULT_DTYPES = {"msrvtt": "float32", "youcook2": "float32", "howto100m": "float16"}


def convert_dataset(
    kind: str,
    input: str | Path,
    out_root: str | Path,
    *,
    word_vectors: str,
    split: Optional[str] = None,
    skip_bad: bool = False,
    max_words: int = 20,
    lowercase: Optional[bool] = None,
    dtype: Optional[str] = None,
    **opts: Any,
) -> Dict[str, Any]:
    """Convert one source into split ``split`` of the store at ``out_root``; returns the manifest entry.

    Args:
        kind: ``"msrvtt"`` (input: the pickle), ``"youcook2"`` (input: the pickle) or ``"howto100m"``
            (input: the CSV; ``opts`` must give ``features_path``, ``audio_path``, ``caption_path`` and may
            give ``max_videos``, ``max_clips``, ``clips_per_video``, ``clip_seconds``, ``seed``,
            ``text_audio_misaligned``, ``features_path_3d``; ``audio_offset_quirk`` is the deprecated
            old name of ``text_audio_misaligned``).
        word_vectors: spec for :func:`multisk.data.encoders.word_vectors.load_word_vectors`.
        split: split name (default ``test`` for the pickles, ``train`` for HowTo100M).
        skip_bad: leave bad items out and write ``OUT/<split>.skipped.json`` instead of raising.
        max_words: text tokens kept per caption.
        lowercase: lower-case before the vocabulary look-up (default: only for ``glove-6b-50d``).
        dtype: storage dtype of the token matrices, ``"float32"`` or ``"float16"``. Default
            (:data:`DEFAULT_DTYPES`): float32 for the evaluation pickles (the reference evaluates float32
            features; float16 storage moves the published numbers, docs/evaluation.md), float16 for
            HowTo100M training clips (half the disk and page cache on a 136 M-clip set; training casts
            to the autocast dtype anyway). Recorded per modality in the manifest and in results.json.
        opts: for the pickles: ``max_video_tokens``, ``max_audio_frames``, ``complete_size``;
            MSR-VTT also ``all_captions``.

    Pickle inputs are unpickled: **that executes code stored in the file; convert trusted files only.**
    """
    if kind not in KINDS:
        raise DataFormatError(f"convert: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    split = split or DEFAULT_SPLITS[kind]
    dtype = DEFAULT_DTYPES[kind] if dtype is None else str(dtype)
    if dtype not in STORAGE_DTYPES:
        raise DataFormatError(f"convert: dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    kv = load_word_vectors(word_vectors)
    if lowercase is None:
        lowercase = str(word_vectors) == PACKAGED_GLOVE
    common = {"word_vectors": str(word_vectors), "lowercase": bool(lowercase), "source": kind, "input": str(input),
              "text_encoder": text_encoder_record(str(word_vectors), bool(lowercase), max_words)}
    if kind == "howto100m":
        return _convert_howto100m(Path(input), Path(out_root), split, kv, skip_bad, max_words, bool(lowercase), dtype, common, opts)
    return _convert_pickle(kind, Path(input), Path(out_root), split, kv, skip_bad, max_words, bool(lowercase), dtype, common, opts)


def text_encoder_record(word_vectors: str, lowercase: bool, max_words: int) -> Dict[str, Any]:
    """How the store's ``text`` tokens were made, so class names and search queries can be embedded the
    same way later: the word-vector source (a packaged name, or the file's absolute path, size and
    file name, so a moved file can be named exactly), the tokenisation and the word limit."""
    record: Dict[str, Any] = {"kind": "word_vectors", "name": word_vectors, "lowercase": lowercase,
                              "max_words": int(max_words), "tokenizer": "regex [\\w']+, in-vocabulary words only"}
    if word_vectors != PACKAGED_GLOVE:
        path = Path(word_vectors).expanduser().resolve()
        record.update(name=str(path), file_name=path.name, file_size=path.stat().st_size)
    return record


def _convert_pickle(kind, path, out_root, split, kv, skip_bad, max_words, lowercase, dtype, common, opts):
    allowed = {"max_video_tokens", "max_audio_frames", "complete_size"} | ({"all_captions"} if kind == "msrvtt" else set())
    unknown = set(opts) - allowed
    if unknown:
        raise DataFormatError(f"convert {kind}: unknown option(s) {sorted(unknown)} (known: {', '.join(sorted(allowed))})")
    loader = load_msrvtt if kind == "msrvtt" else load_youcook2
    evalset = loader(path, skip_bad=skip_bad, **opts)
    bad = list(evalset.bad)
    metadata = {
        **common,
        "complete_size": evalset.complete_size,
        "max_tokens": {"text": max_words, **evalset.window},
        # the evaluation protocol of docs/evaluation.md, applied by `multisk eval` and the trainer's periodic
        # evaluation whatever lengths a checkpoint was trained on: the first window, and every item
        # scored with its empty modalities going through the masking token
        "eval_window": {"text": max_words, **evalset.window, "crop": "start"},
        "empty_modalities": "masking_token",
        "skipped_by_rule": len(evalset.skipped_by_rule),
    }
    with FeatureStoreWriter(out_root, split, {"text": kv.vector_size, "video": 4096, "audio": 40}, dtype=dtype) as writer:
        for item in evalset.items:
            where = f"{path}: item {item['source_index']} (id {item['id']!r}) field 'caption'"
            text = encode_text(kv, item["caption"], max_words, lowercase, where=where)
            writer.add(
                item["id"],
                {"text": text if len(text) else None, "video": item["video"] if len(item["video"]) else None,
                 "audio": item["audio"] if len(item["audio"]) else None},
                caption=item["caption"],
                source_index=item["source_index"],
            )
        writer.metadata.update(metadata, skipped_bad=len(bad))
        info = writer.close()
    if skip_bad:
        _write_report(skipped_report_path(out_root, split), kind, str(path), bad, evalset.skipped_by_rule)
    return info


def _convert_howto100m(csv, out_root, split, kv, skip_bad, max_words, lowercase, dtype, common, opts):
    required = ("features_path", "audio_path", "caption_path")
    missing = [k for k in required if not opts.get(k)]
    if missing:
        raise DataFormatError(f"convert howto100m: missing option(s) {', '.join(missing)}")
    allowed = set(required) | {"max_videos", "max_clips", "clips_per_video", "clip_seconds", "seed",
                               "text_audio_misaligned", "audio_offset_quirk", "features_path_3d",
                               "max_video_tokens", "max_audio_frames"}
    unknown = set(opts) - allowed
    if unknown:
        raise DataFormatError(f"convert howto100m: unknown option(s) {sorted(unknown)} (known: {', '.join(sorted(allowed))})")
    if "audio_offset_quirk" in opts:
        warnings.warn("convert howto100m: option 'audio_offset_quirk' is deprecated; use 'text_audio_misaligned' "
                      "(same meaning)", DeprecationWarning, stacklevel=3)
        if "text_audio_misaligned" not in opts:
            opts = {**opts, "text_audio_misaligned": opts["audio_offset_quirk"]}
    max_videos = opts.get("max_videos")
    max_clips = opts.get("max_clips")
    dataset = HowTo100MDataset(
        csv, opts["features_path"], opts["audio_path"], opts["caption_path"], kv,
        clips_per_video=int(opts.get("clips_per_video", 1)),
        clip_seconds=float(opts.get("clip_seconds", 8.0)),
        max_words=max_words,
        max_video_tokens=int(opts.get("max_video_tokens", 12)),
        max_audio_frames=int(opts.get("max_audio_frames", 768)),
        features_path_3d=opts.get("features_path_3d"),
        text_audio_misaligned=bool(opts.get("text_audio_misaligned", False)),
        lowercase=lowercase,
        seed=int(opts.get("seed", 0)),
    )
    n_videos = len(dataset) if max_videos is None else min(len(dataset), int(max_videos))
    bad: List[Dict[str, str]] = []
    clips_written = 0
    with FeatureStoreWriter(out_root, split, {"text": kv.vector_size, "video": 4096, "audio": 40}, dtype=dtype) as writer:
        for index in range(n_videos):
            if max_clips is not None and clips_written >= int(max_clips):
                break
            try:
                clips = dataset.clips(index, as_tensors=False)
            except DataFormatError as err:
                if not skip_bad:
                    raise
                bad.append(bad_item_record(csv, dataset.video_paths[index], err))
                continue
            for clip in clips:
                if max_clips is not None and clips_written >= int(max_clips):
                    break
                writer.add(
                    clip["id"],
                    {m: (clip[m] if len(clip[m]) else None) for m in ("text", "video", "audio")},
                    caption=clip["caption"], video=dataset.video_id(index), start=clip["start"], end=clip["end"],
                )
                clips_written += 1
        writer.metadata.update(
            common,
            complete_size=clips_written,
            max_tokens=dict(dataset.max_tokens),
            videos=n_videos,
            clips_per_video=dataset.clips_per_video,
            seed=dataset.seed,
            text_audio_misaligned=dataset.text_audio_misaligned,
            skipped_bad=len(bad),
        )
        info = writer.close()
    if skip_bad:
        _write_report(skipped_report_path(out_root, split), "howto100m", str(csv), bad, [])
    return info


__all__ = ["DEFAULT_DTYPES", "DEFAULT_SPLITS", "KINDS", "STORAGE_DTYPES", "convert_dataset", "skipped_report_path"]
