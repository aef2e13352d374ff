"""``multisk train --config FILE [key=value ...] [--resume auto|latest|PATH]``."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model (torchrun-compatible)",
                              description="Train according to a YAML config; key=value pairs override it.")
    p.add_argument("--config", required=True, help="YAML config file (see configs/)")
    p.add_argument("--resume", default="auto",
                   help="'auto' (default: 'latest' when torchrun restarted the group after a failure, i.e. "
                        "TORCHELASTIC_RESTART_COUNT > 0, else a fresh start), 'latest' "
                        "(OUTPUT_DIR/checkpoints/latest.pt, if any) or a checkpoint path")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=100")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from multisk.config import load_config
    from multisk.train.trainer import train

    cfg = load_config(args.config, args.overrides)
    results = train(cfg, resume=args.resume, progress=not args.no_progress)
    if "evaluation" in results:
        from multisk.evaluate.report import format_results_table

        print(format_results_table(results["evaluation"]))
    print(json.dumps({"steps": results.get("steps"), "output_dir": cfg.train.output_dir}))
    return 0
