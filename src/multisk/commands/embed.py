"""``multisk embed`` (embed a prepared collection) and ``multisk search`` (text query over it)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed", help="index a media folder incrementally (--folder, --index), or a prepared split (--data, --split, --out)",
        description="Either `--folder PATH --index DIR`: index your own pictures / videos / sounds incrementally "
                    "(new files added, changed ones re-embedded, deleted ones dropped; an interrupted run resumes), "
                    "or `--data ROOT --split NAME --out FILE.npz`: embed a prepared feature-store split. Both copy "
                    "the checkpoint into the index's folder, so the index keeps working when moved.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--folder", default=None, help="media folder to index (searched recursively)")
    p.add_argument("--index", default=None, help="with --folder: the index folder (created; updated by later runs)")
    p.add_argument("--captions", default=None, help="with --folder: CSV of captions (columns file, caption)")
    p.add_argument("--clip-seconds", type=float, default=None,
                   help="with --folder: index videos as moments of this many seconds (default: whole videos)")
    p.add_argument("--chunk-items", type=int, default=32,
                   help="with --folder: items embedded between two progress saves (default 32)")
    p.add_argument("--skip-bad", action="store_true", help="with --folder: skip unreadable files and list them")
    p.add_argument("--data", default=None, help="feature-store root")
    p.add_argument("--split", default=None)
    p.add_argument("--out", default=None, help="output .npz index")
    p.add_argument("--no-copy-checkpoint", action="store_true",
                   help="record the checkpoint by path and SHA-256 only (the index then breaks if it moves)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--calibration-split", default=None,
                   help="split of the same store whose captions calibrate the low-confidence notice of "
                        "`multisk search` (default: the validation split, else the indexed split's own captions "
                        "with each one's item left out; never a split marked role 'test')")
    p.add_argument("--calibration-quantile", type=float, default=None,
                   help="a search is flagged when its best score is below this quantile of real captions' best "
                        "scores (default 0.05)")
    p.set_defaults(func=run_embed)

    s = subparsers.add_parser("search", help="text search over an index written by `multisk embed`")
    s.add_argument("query", help="free text")
    s.add_argument("--index", required=True, help="index folder or .npz written by `multisk embed`")
    s.add_argument("--target", default="video",
                   help="embedding to search: video, audio, video+audio (items having both), any (each item by "
                        "the modalities it has)")
    s.add_argument("--top", type=int, default=10)
    s.add_argument("--checkpoint", default=None,
                   help="the checkpoint the index was made with, if it is no longer where the index says")
    s.add_argument("--word-vectors", default=None,
                   help="the word-vector file the store's text was made with, if it is no longer where recorded")
    s.add_argument("--exact-limit", type=int, default=None,
                   help="search exactly up to this many items, approximately (faiss) beyond (default 100000)")
    s.add_argument("--nprobe", type=int, default=32,
                   help="approximate search: index cells scanned per query (more: better recall, slower; default 32)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=run_search)


def run_embed(args: argparse.Namespace) -> int:
    from multisk.errors import ConfigError

    if args.folder is not None:
        if args.index is None or args.data is not None or args.out is not None:
            raise ConfigError("embed --folder PATH: give the index folder with --index DIR (not --data / --out)")
        return _embed_folder(args)
    if args.data is None or args.split is None or args.out is None:
        raise ConfigError("embed: give --folder PATH --index DIR (your media), or --data ROOT --split NAME --out FILE")
    return _embed_store(args)


def _embed_folder(args: argparse.Namespace) -> int:
    from multisk.evaluate.collection import CollectionEmbedder, embed_collection
    from multisk.device import pick_device

    embedder = CollectionEmbedder(args.checkpoint, args.folder, args.index, device=pick_device(args.device),
                                  captions=args.captions, clip_seconds=args.clip_seconds, chunk_items=args.chunk_items,
                                  batch_size=args.batch_size, skip_bad=args.skip_bad,
                                  copy_checkpoint=not args.no_copy_checkpoint, progress=not args.no_progress,
                                  quantile=args.calibration_quantile)
    summary = embed_collection(embedder)
    resumed = f", of which {summary['resumed']} embedded by an interrupted run" if summary["resumed"] else ""
    print(f"wrote {summary['index']}: {summary['items']} items from {summary['entries']} files "
          f"({summary['new']} new, {summary['changed']} changed, {summary['removed']} removed, {summary['unchanged']} "
          f"unchanged{resumed}) in {summary['seconds']:.1f} s")
    for bad in summary["skipped"]:
        print(f"skipped {bad['file']}: {bad['error']}")
    _print_calibration(summary["calibration"])
    return 0


def _print_calibration(calibration) -> None:
    if "reason" in calibration:
        print(f"note: no low-confidence calibration for `multisk search`: {calibration['reason']}")
    else:
        thresholds = ", ".join(f"{t} {v['threshold']:.3f}" for t, v in calibration["targets"].items())
        print(f"calibration: {calibration['captions']} captions ({calibration['source']}); a search is flagged "
              f"low-confidence below the {100 * calibration['quantile']:g}th percentile of their best scores: "
              f"{thresholds}")


def _embed_store(args: argparse.Namespace) -> int:
    from multisk.data.store.feature_store import read_manifest
    from multisk.errors import ConfigError
    from multisk.evaluate.index import save_index
    from multisk.evaluate.inputs import eval_store_dataset
    from multisk.evaluate.loading import load_model
    from multisk.evaluate.pipeline import embed_dataset
    from multisk.evaluate.search_calibration import CALIBRATION_QUANTILE
    from multisk.evaluate.text_queries import query_encoder_spec
    from multisk.device import pick_device

    quantile = CALIBRATION_QUANTILE if args.calibration_quantile is None else args.calibration_quantile
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"--calibration-quantile: must be in (0, 1), got {quantile}")
    device = pick_device(args.device)
    model, cfg = load_model(args.checkpoint, device=device)
    dataset = eval_store_dataset(cfg, args.data, args.split)
    emb = embed_dataset(model, dataset, device=device, batch_size=args.batch_size)
    manifest = read_manifest(args.data)
    spec = query_encoder_spec(manifest, args.split, dataset.modality_map.get("text", "text"))
    calibration = _calibration(model, emb, manifest, spec, args, quantile, device,
                               preferred=cfg.data.val_split)
    path = save_index(args.out, emb, dataset.store.items, checkpoint=Path(args.checkpoint), text_encoder=spec,
                      calibration=calibration, copy_checkpoint=not args.no_copy_checkpoint)
    have = ", ".join(f"{m} {int(flag.sum())}" for m, flag in emb["nonempty"].items())
    print(f"wrote {path}: {len(dataset)} items (having {have}), embeddings {sorted(emb['joint'])}")
    if spec is None:
        print(f"note: the store records no text encoder for {dataset.modality_map.get('text', 'text')!r}; "
              f"`multisk search` cannot embed queries for this index")
    _print_calibration(calibration)
    return 0


def _calibration(model, emb, manifest, spec, args: argparse.Namespace, quantile: float, device, preferred=None):
    """The index's score calibration (:mod:`multisk.evaluate.search_calibration`), or ``{"reason"}``."""
    from multisk.evaluate.search_calibration import calibrate, calibration_source

    if spec is None:
        return {"reason": "the store records no text encoder, so no caption can be embedded as a query"}
    source = calibration_source(manifest, args.data, args.split, args.calibration_split, preferred)
    try:
        return calibrate(model, emb, source, spec, device=device, quantile=quantile)
    except FileNotFoundError as err:  # e.g. the word-vector file has moved: the index is still useful
        return {"reason": f"captions cannot be embedded as queries here ({err})"}


def run_search(args: argparse.Namespace) -> int:
    from multisk.evaluate.index import load_index, search_index
    from multisk.evaluate.search_calibration import confidence_notice
    from multisk.device import pick_device

    index = load_index(args.index)
    spec = index["meta"].get("text_encoder")
    if spec and spec.get("kind", "word_vectors") == "word_vectors":
        from multisk.evaluate.text_queries import describe, query_words

        words = query_words(spec, args.query, word_vectors=args.word_vectors)
        if words is not None and words[0]:  # say what the query was matched on (stderr: stdout stays the hits)
            unknown = f"; not in the vocabulary: {' '.join(words[1])}" if words[1] else ""
            print(f"query words used ({describe(spec)}): {' '.join(words[0])}{unknown}", file=sys.stderr)
    hits = search_index(index, args.query, target=args.target, top=args.top, device=pick_device(args.device),
                        checkpoint=args.checkpoint, word_vectors=args.word_vectors, exact_limit=args.exact_limit,
                        nprobe=args.nprobe)
    notice = confidence_notice(index["meta"], args.target, hits[0]["score"]) if hits else None
    if notice:
        print(notice, file=sys.stderr)
    for rank, hit in enumerate(hits, 1):
        moment = f"  [{hit['start']:g}-{hit['end']:g} s]" if "start" in hit else ""
        print(f"{rank:3d}  {hit['score']:.4f}  {hit['id']}  {json.dumps(hit.get('caption', ''))}{moment}")
    return 0
