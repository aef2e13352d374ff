"""Does preserving modality structure help? The paper's claim, tested on the embedded benchmark.

Trains, for several seeds each, the variants below with configs/demo.yaml, evaluates zero-shot
in-domain (held-out OpenClipArt), out-of-domain (Tux Paint) and on held-out speech prompts, and writes
a Markdown report with mean ± std (sample std over seeds) plus an ablation over K and r/K:

- ``contrastive``     — the EAO baseline, contrastive loss only;
- ``sspc_classic``    — + SSPC with classic Sinkhorn-Knopp (one assignment per sample);
- ``sspc_multi``      — + SSPC with Multi-SK, the paper's ``reference`` cost (BCE on exp(s/τ));
- ``sspc_multi_softce`` — + SSPC with Multi-SK and the soft cross-entropy cost.

    python benchmarks/claim.py --seeds 3 --out docs/results.md          # the full table (CPU, ~1 h)
    python benchmarks/claim.py --quick --data DIR --set model.text_dim=12 ...   # CI-sized smoke run

Every number in the report comes from the runs this script made; the command line is written into it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]

VARIANTS: Dict[str, List[str]] = {
    "contrastive": ["loss.sspc.enabled=false"],
    "sspc_classic": ["loss.sspc.enabled=true", "loss.sspc.solver=classic", "loss.sspc.cost=reference"],
    "sspc_multi": ["loss.sspc.enabled=true", "loss.sspc.solver=multi", "loss.sspc.cost=reference"],
    "sspc_multi_softce": ["loss.sspc.enabled=true", "loss.sspc.solver=multi", "loss.sspc.cost=soft_ce"],
}
# (K, r/K) pairs of the ablation, run with the Multi-SK variant
ABLATION = [(16, 0.5), (64, 0.5), (32, 0.25), (32, 0.75)]
# (split, direction) pairs reported
REPORTED = [
    ("test_in_domain", "t2v", "in-domain text→picture"),
    ("test_out_of_domain", "t2v", "out-of-domain text→picture"),
    ("test_audio", "t2a", "text→speech"),
]
METRICS = ("R1", "R5", "R10", "MedR")


def run_one(config: str, overrides: Sequence[str], out_dir: Path) -> Dict:
    from multisk.config import load_config
    from multisk.train.trainer import train

    cfg = load_config(config, [*overrides, f"train.output_dir={out_dir}"])
    results = train(cfg, progress=False, make_plots=False)
    return {split: entry["retrieval"] for split, entry in results["evaluation"].items()}


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}"


def table(runs: Dict[str, List[Dict]], reported=REPORTED) -> str:
    header = ["variant", "seeds"] + [f"{label} {m}" for _, _, label in reported for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, per_seed in runs.items():
        cells = [name, str(len(per_seed))]
        for split, direction, _ in reported:
            for metric in METRICS:
                values = [r[split][direction][metric] for r in per_seed
                          if split in r and direction in r[split] and metric in r[split][direction]]
                cells.append(mean_std(values))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--data", default="data/clipart", help="prepared clipart store (multisk data prepare clipart)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--no-ablation", action="store_true", help="skip the K and r/K ablation")
    parser.add_argument("--ablation-seeds", type=int, default=None, help="seeds per ablation cell (default --seeds)")
    parser.add_argument("--set", action="append", default=[], metavar="key=value", help="extra config override")
    parser.add_argument("--work", default="runs/claim", help="folder for the individual runs")
    parser.add_argument("--out", default=None, help="Markdown report to write (e.g. docs/results.md)")
    parser.add_argument("--json", default=None, help="raw per-run metrics as JSON")
    parser.add_argument("--quick", action="store_true", help="CI-sized: 1 seed, 1 epoch, no ablation")
    parser.add_argument("--reported", default=None,
                        help="override the reported split:direction pairs, e.g. 'test:t2v,test:t2a'")
    args = parser.parse_args(argv)

    seeds = 1 if args.quick else args.seeds
    ablation_seeds = args.ablation_seeds or seeds
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    reported = REPORTED
    if args.reported:
        reported = [(p.split(":")[0], p.split(":")[1], p) for p in args.reported.split(",")]
    base = [f"data.root={args.data}", *args.set]
    if args.quick:
        base.append("train.epochs=1")
    work = Path(args.work)
    started = time.perf_counter()
    runs: Dict[str, List[Dict]] = {}
    for name in names:
        for seed in range(seeds):
            t0 = time.perf_counter()
            result = run_one(args.config, [*base, *VARIANTS[name], f"train.seed={seed}"], work / f"{name}_seed{seed}")
            runs.setdefault(name, []).append(result)
            print(f"[claim] {name} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    ablation: Dict[str, List[Dict]] = {}
    if not (args.quick or args.no_ablation):
        for k, fraction in ABLATION:
            label = f"sspc_multi K={k} r/K={fraction}"
            for seed in range(ablation_seeds):
                overrides = [*base, *VARIANTS["sspc_multi"], f"model.num_anchors={k}",
                             f"loss.sspc.assign_fraction={fraction}", f"train.seed={seed}"]
                ablation.setdefault(label, []).append(
                    run_one(args.config, overrides, work / f"ablation_K{k}_r{fraction}_seed{seed}"))
                print(f"[claim] {label} seed {seed} done", flush=True)
        if "sspc_multi" in runs:
            ablation = {"sspc_multi K=32 r/K=0.5 (main)": runs["sspc_multi"], **ablation}

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    report = [
        "# Results: does structure preservation help on the embedded benchmark?",
        "",
        f"Made by `{command}` in {time.perf_counter() - started:.0f} s "
        f"({seeds} seed(s) per variant; mean ± sample std over seeds; R@k in %, MedR = median rank).",
        "",
        table(runs, reported),
    ]
    if ablation:
        report += ["", "## Ablation: number of anchors K and assignments r/K (Multi-SK, reference cost)", "",
                   table(ablation, reported)]
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "ablation": ablation}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
