"""``multisk eval --checkpoint PATH --data ROOT [--split S ...]``: zero-shot retrieval and classification."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint on a prepared feature store",
                              description="Every retrieval direction the embeddings allow (R@1/5/10/50, "
                                          "MedR, MeanR; SPEC §7) and zero-shot classification by category.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (e.g. runs/x/checkpoints/latest.pt)")
    p.add_argument("--data", required=True, help="feature-store root (e.g. data/clipart)")
    p.add_argument("--split", action="append", default=None,
                   help="split to evaluate (repeatable; default: every split except the training split)")
    p.add_argument("--out", default=None, help="output folder (default: next to the checkpoint, eval/)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from multisk.train.data import store_dataset
    from multisk.data.feature_store import read_manifest
    from multisk.evaluate.classification import classify_by_category
    from multisk.evaluate.loading import load_model
    from multisk.evaluate.pipeline import evaluate_model
    from multisk.evaluate.report import format_results_table, results_to_markdown
    from multisk.train.distributed import pick_device

    device = pick_device(args.device)
    model, cfg = load_model(args.checkpoint, device=device, use_ema=args.ema)
    manifest = read_manifest(args.data)
    splits = args.split or [s for s in manifest["splits"] if s != cfg.data.train_split]
    datasets = {s: store_dataset(cfg, args.data, s) for s in splits}
    results = evaluate_model(model, datasets, device=device, precision=args.precision,
                             batch_size=args.batch_size, keep_embeddings=True)
    for split, entry in results.items():
        emb = entry.pop("embeddings")
        classification = classify_by_category(model, datasets[split], emb, manifest, device=device)
        if classification:
            entry["classification"] = classification
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (out / "results.md").write_text(results_to_markdown(results), encoding="utf-8")
    print(format_results_table(results))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0
