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
    p.add_argument("--no-baselines", action="store_true", help="skip the training-free baseline rows")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to both runs")
    p.set_defaults(func=run)


def structure_table(structure, markdown: bool = False) -> str:
    """run -> split -> modality -> {"knn_jaccard", ...} as one row per (run, split); '' when empty."""
    columns = [m for m in ("text", "video", "audio")
               if any(m in per_split for splits in structure.values() for per_split in splits.values())]
    if not columns:
        return ""
    header = ["run", "split"] + columns
    rows = [[run, split] + [f"{100 * per_split[m]['knn_jaccard']:.1f}" if m in per_split else "-" for m in columns]
            for run, splits in structure.items() for split, per_split in splits.items()]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":--", ":--"] + ["--:"] * len(columns)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [header] + rows)


PRIOR_ALONE = "text-space prior alone (w = 1)"


def prior_ablations(cfg, checkpoint: Path, name: str, with_prior_alone: bool):
    """A run trained with model.prior, scored again with its learned embeddings only (w = 0) and, once,
    with the closed-form prior only (w = 1): the rows that say what each part contributes."""
    from multisk.evaluate.loading import load_model, set_prior_weight
    from multisk.evaluate.pipeline import evaluate_model
    from multisk.train.datasets_for_config import build_eval_datasets

    model, _ = load_model(checkpoint)
    eval_sets = build_eval_datasets(cfg)
    rows = {f"{name}, learned part only (w = 0)": 0.0}
    if with_prior_alone:
        rows[PRIOR_ALONE] = 1.0
    results = {}
    for label, weight in rows.items():
        set_prior_weight(model, weight, where=f"{checkpoint}: prior weight")
        results[label] = evaluate_model(model, eval_sets)
    return results


def run(args: argparse.Namespace) -> int:
    from multisk.config import load_config
    from multisk.evaluate.report import comparison_table
    from multisk.train.trainer import train

    start = time.perf_counter()
    data = Path(args.data)
    from multisk.data.formats.clipart import BENCHMARK_VERSION, prepared_version

    version = prepared_version(data)  # None: no store, or not a clipart store (used as it is)
    if not (data / "manifest.json").is_file() or args.limit is not None or version not in (None, BENCHMARK_VERSION):
        from multisk.commands.data import ensure_clipart_media
        from multisk.data.formats.clipart import prepare_clipart

        print(f"[demo] preparing the embedded benchmark (version {BENCHMARK_VERSION}) in {data} ...", flush=True)
        ensure_clipart_media(install=not args.no_install)  # apt-get, as root, lives in the command layer
        prepare_clipart(data, limit=args.limit)
    else:
        print(f"[demo] using the prepared benchmark in {data} (delete it to rebuild)", flush=True)
    out = Path(args.out)
    runs, structure, splits = {}, {}, []
    for name, extra in RUNS.items():
        cfg = load_config(args.config, [*extra, f"data.root={data}", f"train.output_dir={out / name}",
                                        *args.overrides])
        print(f"[demo] training '{name}' ({cfg.train.epochs} epochs, batch {cfg.train.batch_size}) ...", flush=True)
        results = train(cfg, progress=not args.no_progress)
        runs[name] = {split: entry["retrieval"] for split, entry in results["evaluation"].items()}
        structure[name] = {split: entry.get("structure", {}) for split, entry in results["evaluation"].items()}
        splits = list(cfg.data.eval_splits)
        if "prior" in results:
            print(f"[demo] '{name}': text-space prior weight w = {results['prior']['weight']:.1f}, chosen on "
                  f"split '{cfg.data.val_split}' (0 = learned embeddings only, 1 = closed-form prior only)", flush=True)
            ablations = prior_ablations(cfg, out / name / "checkpoints" / "latest.pt", name,
                                        with_prior_alone=not any(k.startswith(PRIOR_ALONE) for k in runs))
            for label, evaluation in ablations.items():
                runs[label] = {split: entry["retrieval"] for split, entry in evaluation.items()}
                structure[label] = {split: entry.get("structure", {}) for split, entry in evaluation.items()}
    baselines = {}
    if not args.no_baselines:
        from multisk.evaluate.baselines import compute_baselines

        print("[demo] training-free baselines (random, linear probe, ImageNet class-name bridge) ...", flush=True)
        baselines = compute_baselines(data, splits, train_split=cfg.data.train_split)
        for baseline, reason in baselines["skipped"].items():
            print(f"[demo] baseline {baseline} not computed: {reason}")
    table_runs = {**runs, **{f"{b} (no training)": per_split for b, per_split in baselines.get("runs", {}).items()
                             if per_split}}
    directions = ("t2v", "t2a")
    text = comparison_table(table_runs, directions=directions, style="text")
    markdown = comparison_table(table_runs, directions=directions, style="markdown")
    structure_text = structure_table(structure)
    (out / "comparison.md").write_text(markdown + "\n\n" + structure_table(structure, markdown=True) + "\n",
                                       encoding="utf-8")
    (out / "comparison.json").write_text(json.dumps({"runs": runs, "structure": structure, "baselines": baselines},
                                                    indent=2), encoding="utf-8")
    print()
    print("Zero-shot retrieval (t2v = text→picture, t2a = text→audio; R@k in %, MedR = median rank):")
    print(text)
    if structure_text:
        print()
        print("Structure preservation (mean 10-NN Jaccard ×100 between the frozen input features and the "
              "joint space; higher = more of each item's input-space neighbours kept):")
        print(structure_text)
    plots = sorted(str(p) for p in out.glob("*/plots/*.png"))
    print(f"\n[demo] comparison: {out / 'comparison.md'}; plots ({len(plots)}):")
    for p in plots:
        print(f"  {p}")
    print(f"[demo] done in {time.perf_counter() - start:.0f} s")
    return 0
