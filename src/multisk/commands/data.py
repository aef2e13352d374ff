"""``multisk data``: prepare the embedded benchmark or your own media, convert the field's formats,
and inspect a feature store.

    multisk data prepare clipart [--root data/clipart] [--limit N] [--skip-bad] [--no-install] [--no-progress]
    multisk data prepare folder PATH --out DIR [--captions CSV] [--split NAME] [--skip-bad] [--clip-seconds S] [--no-progress]
    multisk data convert {msrvtt,youcook2,howto100m} INPUT --out DIR --word-vectors SPEC [--split NAME] [--dtype D] [--skip-bad] ...
    multisk data info ROOT
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from typing import Any, Dict


class _DeprecatedFlag(argparse.Action):
    """An old spelling of a store-true flag: sets the new flag's value and says so on stderr."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"note: {option_string} is deprecated; use {new} (same meaning)", file=sys.stderr)
        setattr(namespace, self.dest, True)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("data", help="prepare, convert and inspect datasets (feature stores)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    prepare = actions.add_parser("prepare", help="build a feature store from media")
    sources = prepare.add_subparsers(dest="source", required=True, metavar="SOURCE")
    clipart = sources.add_parser("clipart", help="the embedded default benchmark (OpenClipArt, Tux Paint, Asterisk)")
    clipart.add_argument("--root", default="data/clipart", help="output feature-store root (default: data/clipart)")
    clipart.add_argument("--limit", type=int, default=None, help="at most N items per source (quick runs)")
    clipart.add_argument("--skip-bad", action="store_true", help="skip unreadable media and report them")
    clipart.add_argument("--no-install", action="store_true", help="do not apt-get the media packages")
    clipart.add_argument("--no-progress", action="store_true", help="no progress bars")
    clipart.set_defaults(func=_prepare_clipart)

    folder = sources.add_parser("folder", help="your own pictures (raster or SVG) / videos / sounds")
    folder.add_argument("path", help="folder of media files")
    folder.add_argument("--out", required=True, help="output feature-store root")
    folder.add_argument("--captions", default=None, help="CSV of captions (see docs/data.md)")
    folder.add_argument("--split", default="test", help="split name (default: test)")
    folder.add_argument("--skip-bad", action="store_true", help="skip unreadable files and report them")
    folder.add_argument("--no-progress", action="store_true", help="no progress bars")
    folder.add_argument("--clip-seconds", type=float, default=None,
                        help="split each video into moments of this many seconds, so search returns moments "
                             "(default: one item per video)")
    folder.set_defaults(func=_prepare_folder)

    convert = actions.add_parser("convert", help="convert MSR-VTT / YouCook2 pickles or HowTo100M features")
    convert.add_argument("kind", choices=["msrvtt", "youcook2", "howto100m"])
    convert.add_argument("input", help="the pickle (msrvtt, youcook2) or the CSV (howto100m)")
    convert.add_argument("--out", required=True, help="output feature-store root")
    convert.add_argument("--word-vectors", required=True,
                         help="word2vec .bin / text file, GloVe text file, or 'glove-6b-50d'")
    convert.add_argument("--split", default=None, help="split name (default: test; train for howto100m)")
    convert.add_argument("--skip-bad", action="store_true", help="skip bad items, list them in OUT/SPLIT.skipped.json")
    convert.add_argument("--max-words", type=int, default=20, help="text tokens per caption (default: 20)")
    case = convert.add_mutually_exclusive_group()
    case.add_argument("--lowercase", dest="lowercase", action="store_true", default=None,
                      help="lower-case words before the vocabulary look-up (default: only for glove-6b-50d)")
    case.add_argument("--no-lowercase", dest="lowercase", action="store_false")
    convert.add_argument("--max-video-tokens", type=int, default=None,
                         help="video window in time steps (default: 48 msrvtt, 72 youcook2, 12 howto100m)")
    convert.add_argument("--max-audio-frames", type=int, default=None,
                         help="audio window in frames (default: 3072 msrvtt, 4608 youcook2, 768 howto100m)")
    convert.add_argument("--complete-size", type=int, default=None,
                         help="benchmark size used as the retrieval divisor (default: 1000 msrvtt test, 3350 youcook2)")
    convert.add_argument("--first-caption-only", action="store_true",
                         help="msrvtt train pickles: keep only each video's first caption")
    convert.add_argument("--dtype", default=None, choices=["float32", "float16"],
                         help="storage dtype of the features (default: float32 for msrvtt / youcook2, as the "
                              "reference evaluates; float16 for howto100m training clips)")
    howto = convert.add_argument_group("howto100m")
    howto.add_argument("--features-path", help="root of {path}/{id}_2d.npz and {id}_3d.npz")
    howto.add_argument("--features-path-3d", help="root of the 3D features if elsewhere")
    howto.add_argument("--audio-path", help="root of {path}/{id}_spec.npz")
    howto.add_argument("--caption-path", help="caption.pickle")
    howto.add_argument("--max-videos", type=int, default=None, help="convert the first N videos of the CSV")
    howto.add_argument("--max-clips", type=int, default=None, help="stop after N clips")
    howto.add_argument("--clips-per-video", type=int, default=1)
    howto.add_argument("--clip-seconds", type=float, default=8.0)
    howto.add_argument("--seed", type=int, default=0)
    howto.add_argument("--text-audio-misaligned", action="store_true",
                       help="take each clip's audio window clip_seconds/2 after its text span starts, as the "
                            "reference's pre-training deliberately does (docs/data.md)")
    howto.add_argument("--audio-offset-quirk", action=_DeprecatedFlag, dest="text_audio_misaligned", nargs=0,
                       help="deprecated spelling of --text-audio-misaligned")
    convert.set_defaults(func=_convert)

    info = actions.add_parser("info", help="print a feature store's manifest summary")
    info.add_argument("root", help="feature-store root")
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    info.set_defaults(func=_info)


def _print_summary(manifest_or_info: Dict[str, Any]) -> None:
    print(json.dumps(manifest_or_info, indent=2, sort_keys=True, ensure_ascii=False, default=str))


def ensure_clipart_media(install: bool = True, sources: Any = None) -> None:
    """Install the clipart benchmark's Debian media packages if they are missing.

    As root with ``install`` (and apt-get present): ``apt-get install -y ...``, with ``apt-get update``
    first if that fails (a fresh image has no package lists). Otherwise, or if the install fails,
    :class:`multisk.data.formats.clipart.MissingMediaError` gives the exact line to run.
    """
    from multisk.data.formats.clipart import ClipartSources, MissingMediaError, apt_install_line, check_media

    sources = sources or ClipartSources()
    missing = sources.missing_packages()
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not missing or not (install and is_root and shutil.which("apt-get")):
        check_media(sources)  # raises with the install line when something is missing
        return
    line = apt_install_line(missing)
    print(f"[data] installing the clipart media packages: {line}", flush=True)
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


def _prepare_clipart(args: argparse.Namespace) -> int:
    from multisk.data.formats.clipart import prepare_clipart

    ensure_clipart_media(install=not args.no_install)
    summary = prepare_clipart(args.root, limit=args.limit, skip_bad=args.skip_bad, progress=not args.no_progress)
    _print_summary(summary)
    return 0


def _prepare_folder(args: argparse.Namespace) -> int:
    from multisk.data.formats.folder import prepare_folder

    summary = prepare_folder(args.path, args.out, captions=args.captions, split=args.split, skip_bad=args.skip_bad,
                             progress=not args.no_progress, clip_seconds=args.clip_seconds)
    _print_summary(summary)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from multisk.data.formats.convert import DEFAULT_SPLITS, convert_dataset, skipped_report_path

    opts: Dict[str, Any] = {}
    if args.max_video_tokens is not None:
        opts["max_video_tokens"] = args.max_video_tokens
    if args.max_audio_frames is not None:
        opts["max_audio_frames"] = args.max_audio_frames
    if args.kind == "howto100m":
        opts.update(features_path=args.features_path, audio_path=args.audio_path, caption_path=args.caption_path,
                    max_videos=args.max_videos, max_clips=args.max_clips, clips_per_video=args.clips_per_video,
                    clip_seconds=args.clip_seconds, seed=args.seed,
                    text_audio_misaligned=args.text_audio_misaligned)
        if args.features_path_3d:
            opts["features_path_3d"] = args.features_path_3d
    else:
        if args.complete_size is not None:
            opts["complete_size"] = args.complete_size
        if args.kind == "msrvtt" and args.first_caption_only:
            opts["all_captions"] = False
    info = convert_dataset(args.kind, args.input, args.out, word_vectors=args.word_vectors, split=args.split,
                           skip_bad=args.skip_bad, max_words=args.max_words, lowercase=args.lowercase,
                           dtype=args.dtype, **opts)
    split = args.split or DEFAULT_SPLITS[args.kind]
    dtypes = sorted({meta["dtype"] for meta in info.get("modalities", {}).values()})
    print(f"wrote split {split!r} to {args.out}: {info['count']} items in {'/'.join(dtypes)} "
          f"(complete size {info.get('complete_size')}, skipped bad {info.get('skipped_bad', 0)}, "
          f"skipped by rule {info.get('skipped_by_rule', 0)})")
    window = info.get("eval_window")
    if window:
        print(f"evaluation protocol recorded (docs/evaluation.md): the first {window['video']} video steps / {window['audio']} "
              f"audio frames of each item; empty modalities go through the masking token "
              f"(`multisk eval --empty-modalities excluded` to leave such items out)")
    if args.skip_bad:
        print(f"skip report: {skipped_report_path(args.out, split)}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from multisk.data.store.feature_store import read_manifest

    manifest = read_manifest(args.root)
    if args.json:
        _print_summary(manifest)
        return 0
    print(f"{args.root}: {manifest['format']} v{manifest['version']}, {len(manifest['splits'])} split(s)")
    for name, split in sorted(manifest["splits"].items()):
        print(f"  {name}: {split['count']} items" + (
            f" (complete size {split['complete_size']})" if "complete_size" in split else ""))
        for modality, meta in sorted(split.get("modalities", {}).items()):
            print(f"    {modality:<8} dim {meta['dim']:<5} {meta['dtype']:<8} {meta['tokens']} tokens, "
                  f"present in {meta.get('items_present', '?')} items")
        extra = {k: v for k, v in split.items() if k not in ("count", "modalities", "files", "complete_size")}
        for key, value in sorted(extra.items()):
            print(f"    {key}: {json.dumps(value, default=str, ensure_ascii=False)}")
    return 0


__all__ = ["ensure_clipart_media", "register"]
