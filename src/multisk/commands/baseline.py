"""``multisk baseline --data ROOT``: training-free reference points (random, linear probe, ImageNet
class-name bridge) for text→picture and text→audio retrieval, scored like a trained run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "baseline", help="training-free baselines (random, linear probe, class-name bridge) on a store",
        description="Random, a ridge linear probe from the frozen picture / sound features to the frozen "
                    "caption embedding (fitted on the training split, penalty chosen on a validation "
                    "split), and the ImageNet class-name bridge; scored with the trained runs' "
                    "group-aware retrieval metrics (docs/evaluation.md).")
    p.add_argument("--data", required=True, help="feature-store root (e.g. data/clipart)")
    p.add_argument("--split", action="append", default=None,
                   help="evaluation split (repeatable; default: every split except the train and val splits)")
    p.add_argument("--train-data", default=None,
                   help="store whose training split the linear probe is fitted on (default: --data); e.g. "
                        "data/clipart to score the benchmark's probe on your own collection")
    p.add_argument("--train-split", default="train", help="split the linear probe is fitted on")
    p.add_argument("--val-split", default="val",
                   help="split that chooses the ridge penalty if the store has it (else 10%% of the training split)")
    p.add_argument("--baselines", default="random,linear_probe,classname_bridge",
                   help="comma-separated subset of random, linear_probe, classname_bridge")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for baselines.json and baselines.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from multisk.data.store.feature_store import read_manifest
    from multisk.evaluate.baselines import compute_baselines
    from multisk.evaluate.report import comparison_table

    manifest = read_manifest(args.data)
    own_training = args.train_data is None or Path(args.train_data).resolve() == Path(args.data).resolve()
    held_out = (args.train_split, args.val_split) if own_training else ()
    splits = args.split or [s for s in manifest["splits"] if s not in held_out]
    if not splits:
        from multisk.errors import DataFormatError

        raise DataFormatError(f"{args.data}: no evaluation split besides {args.train_split!r}/{args.val_split!r}")
    names = [b.strip() for b in args.baselines.split(",") if b.strip()]
    result = compute_baselines(args.data, splits, train_split=args.train_split, val_split=args.val_split,
                               baselines=names, seed=args.seed, train_root=args.train_data)
    for name, reason in result["skipped"].items():
        print(f"[baseline] {name}: not computed: {reason}")
    for modality, detail in result["details"].get("linear_probe", {}).items():
        print(f"[baseline] linear probe {modality}→{detail['text_modality']}: λ = {detail['lambda']:g} chosen on "
              f"{detail['val']}; fitted on {detail['n_train']} training items")
    runs = {name: per_split for name, per_split in result["runs"].items() if per_split}
    if not runs:
        print("[baseline] nothing to report: the store's features allow no baseline")
        return 1
    print("Text→picture (t2v) and text→audio (t2a) retrieval, R@k in %, MedR = median rank:")
    print(comparison_table(runs, directions=("t2v", "t2a"), style="text"))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "baselines.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
        (out / "baselines.md").write_text(comparison_table(runs, directions=("t2v", "t2a")) + "\n", encoding="utf-8")
        print(f"wrote {out / 'baselines.json'} and {out / 'baselines.md'}")
    return 0
