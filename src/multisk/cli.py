"""The ``multisk`` command line. Each sub-command lives in its own module under ``multisk.commands``
and exposes ``register(subparsers)``; this file only assembles them, so commands stay independent."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from multisk.errors import UserFacingError

# module name under multisk.commands, in the order shown by --help
COMMAND_MODULES = ("demo", "model", "data", "train", "evaluate", "baseline", "embed", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multisk",
        description="Structure-preserving multi-modal representation learning (Multi-SK).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"multisk.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"multisk.commands.{name}":
                continue  # command not installed in this build
            raise
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # user-facing errors become one clear line; bugs keep their traceback
        if isinstance(err, UserFacingError):
            print(f"multisk {args.command}: error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
