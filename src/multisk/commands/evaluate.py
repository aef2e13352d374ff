"""``multisk eval --checkpoint PATH --data ROOT [--split S ...]``: zero-shot retrieval and classification."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint on a prepared feature store",
                              description="Every retrieval direction the embeddings allow (R@1/5/10/50, "
                                          "MedR, MeanR; docs/evaluation.md) and zero-shot classification by category.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (e.g. runs/x/checkpoints/latest.pt)")
    p.add_argument("--data", required=True, help="feature-store root (e.g. data/clipart)")
    p.add_argument("--split", action="append", default=None,
                   help="split to evaluate (repeatable; default: every split except the training split)")
    p.add_argument("--out", default=None, help="output folder (default: next to the checkpoint, eval/)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    p.add_argument("--empty-modalities", default="auto", choices=["auto", "masking_token", "excluded"],
                   help="an item lacking a modality: 'masking_token' scores it through the model's masking token "
                        "(every item is a query, docs/evaluation.md), 'excluded' leaves it out of the directions needing "
                        "that modality; 'auto' (default): what the store records (masking_token for converted "
                        "MSR-VTT / YouCook2), else excluded")
    p.add_argument("--word-vectors", default=None,
                   help="word-vector file for class names, if the store's recorded file has moved")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision of the forward pass (default fp32, as the reference evaluates)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--prior-weight", type=float, default=None,
                   help="for a model trained with model.prior: score with this weight w of the text-space prior "
                        "instead of the one chosen on the validation split (0 = the learned embeddings alone, "
                        "1 = the closed-form prior alone)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from multisk.data.store.feature_store import read_manifest
    from multisk.evaluate.classification import classify_by_category
    from multisk.evaluate.inputs import eval_store_dataset
    from multisk.evaluate.loading import load_model
    from multisk.evaluate.pipeline import evaluate_split
    from multisk.evaluate.report import format_inputs_line, format_results_table, results_to_markdown, write_metrics_json
    from multisk.device import pick_device

    device = pick_device(args.device)
    model, cfg = load_model(args.checkpoint, device=device, use_ema=args.ema)
    if args.prior_weight is not None:
        from multisk.evaluate.loading import set_prior_weight

        set_prior_weight(model, args.prior_weight, where=f"{args.checkpoint}: --prior-weight")
    if getattr(model, "prior", None) is not None:
        print(f"text-space prior weight w = {float(model.prior.mix_weight):.2f} (0 = learned embeddings only)")
    manifest = read_manifest(args.data)
    splits = args.split or [s for s in manifest["splits"] if s != cfg.data.train_split]
    unknown = [s for s in splits if s not in manifest["splits"]]
    if unknown:
        from multisk.data.store.feature_store import FeatureStoreError

        raise FeatureStoreError(f"{Path(args.data) / 'manifest.json'}: no split {unknown} (have: {sorted(manifest['splits'])})")
    print(f"evaluating {args.checkpoint}{' (EMA weights)' if args.ema else ''} on {args.data}: {', '.join(splits)}")
    results = {}
    for split in splits:
        dataset = eval_store_dataset(cfg, args.data, split)
        entry, emb = evaluate_split(model, dataset, device=device, precision=args.precision,
                                    batch_size=args.batch_size, empty_modalities=args.empty_modalities)
        print(f"{split}: {format_inputs_line(entry)}")
        classification, skipped = classify_by_category(model, dataset, emb, manifest, device=device,
                                                       word_vectors=args.word_vectors)
        if classification:
            entry["classification"] = classification
        if skipped:
            entry["skipped"]["classification"] = skipped
        results[split] = entry
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent.parent / "eval"
    write_metrics_json(results, out / "results.json")
    (out / "results.md").write_text(results_to_markdown(results), encoding="utf-8")
    print()
    print(format_results_table(results))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0
