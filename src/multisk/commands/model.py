"""``multisk model-summary``: build a model from a config on the meta device and print its
parameter table (no memory is allocated, so the 893M-parameter paper model takes about a second)."""

from __future__ import annotations

import argparse

import torch

from multisk.config import load_config
from multisk.models import build_model, parameter_table


def register(subparsers: "argparse._SubParsersAction") -> None:
    parser = subparsers.add_parser(
        "model-summary",
        help="print the model's parameter counts per module",
        description="Build the model of a config on the meta device and print parameter counts per "
        "module; the last line is 'parameters: N'.",
    )
    parser.add_argument("--config", default=None, help="YAML config file (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.depth=2")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    cfg.model.compile = False  # nothing runs on the meta device; compiling would only cost time
    with torch.device("meta"):
        model = build_model(cfg.model)
    print(f"variant: {cfg.model.variant}; modalities: {', '.join(model.modalities)}; "
          f"joint embeddings: {', '.join(model.joint_names)}")
    print(parameter_table(model))
    return 0
