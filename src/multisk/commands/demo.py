"""``multisk demo``: the README's main job on the embedded benchmark.

Prepare "clipart" (if not cached) → train the contrastive-only baseline and the SSPC model with
configs/demo.yaml → evaluate both zero-shot in-domain and out-of-domain → print one comparison table
(text→picture and text→audio) → list the plots. Everything lands in ``--out`` (default runs/demo).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"

# run name -> overrides on top of the demo config
RUNS = {
    "contrastive": ["loss.sspc.enabled=false"],
    "sspc": ["loss.sspc.enabled=true"],
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="prepare the embedded benchmark, train baseline + SSPC, compare",
                              description=__doc__)
    p.add_argument("--data", default="data/clipart", help="feature-store root of the embedded benchmark")
    p.add_argument("--out", default="runs/demo", help="output folder for both runs and the comparison")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="base config (default: configs/demo.yaml)")
    p.add_argument("--limit", type=int, default=None, help="cap every media source (quick smoke runs)")
    p.add_argument("--no-install", action="store_true", help="never apt-get the media packages")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to both runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from multisk.config import load_config
    from multisk.evaluate.report import comparison_table
    from multisk.train.trainer import train

    start = time.perf_counter()
    data = Path(args.data)
    if not (data / "manifest.json").is_file() or args.limit is not None:
        from multisk.data.clipart import prepare_clipart

        print(f"[demo] preparing the embedded benchmark in {data} ...", flush=True)
        prepare_clipart(data, limit=args.limit, install=not args.no_install)
    else:
        print(f"[demo] using the prepared benchmark in {data} (delete it to rebuild)", flush=True)
    out = Path(args.out)
    runs = {}
    for name, extra in RUNS.items():
        cfg = load_config(args.config, [*extra, f"data.root={data}", f"train.output_dir={out / name}",
                                        *args.overrides])
        print(f"[demo] training '{name}' ({cfg.train.epochs} epochs, batch {cfg.train.batch_size}) ...", flush=True)
        results = train(cfg, progress=not args.no_progress)
        runs[name] = {split: entry["retrieval"] for split, entry in results["evaluation"].items()}
    directions = ("t2v", "t2a")
    text = comparison_table(runs, directions=directions, style="text")
    markdown = comparison_table(runs, directions=directions, style="markdown")
    (out / "comparison.md").write_text(markdown + "\n", encoding="utf-8")
    (out / "comparison.json").write_text(json.dumps(runs, indent=2), encoding="utf-8")
    print()
    print("Zero-shot retrieval (t2v = text→picture, t2a = text→audio; R@k in %, MedR = median rank):")
    print(text)
    plots = sorted(str(p) for p in out.glob("*/plots/*.png"))
    print(f"\n[demo] comparison: {out / 'comparison.md'}; plots ({len(plots)}):")
    for p in plots:
        print(f"  {p}")
    print(f"[demo] done in {time.perf_counter() - start:.0f} s")
    return 0
