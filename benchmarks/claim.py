"""Does preserving modality structure help? The paper's claim, tested on the embedded benchmark.

Trains, for several seeds each, the variants below with configs/demo.yaml (the demo's recipe),
evaluates zero-shot in-domain (held-out OpenClipArt), out-of-domain (Tux Paint) and on held-out speech
prompts, and writes a Markdown report with mean ± std (sample std over seeds):

- ``contrastive``   — the EAO baseline, contrastive loss only;
- ``sspc_multi``    — + SSPC with Multi-SK (the paper's ``reference`` cost);
- ``sspc_classic``  — + SSPC with classic Sinkhorn-Knopp (one assignment per sample);
- ``sspc_multi_softce`` (on request) — + SSPC with Multi-SK and the soft cross-entropy cost.

Beside them: the training-free baselines (random, linear probe, ImageNet class-name bridge;
:mod:`multisk.evaluate.baselines`) as rows, and per run the structure-preservation metric (mean k-NN
Jaccard between frozen input features and joint embeddings, :mod:`multisk.metrics.structure`).

Weak alignment (``--corrupt 0,0.3,0.6``): the captions of a seeded fraction of the training pairs are
shuffled among themselves (``data.corrupt_fraction``), as HowTo100M's ASR is only weakly aligned with
its video; every variant is trained at every level and the report shows how much each loses.

    python benchmarks/claim.py --seeds 3 --corrupt 0,0.3,0.6 --out runs/claim/results_table.md --json runs/claim/raw.json
    python benchmarks/claim.py --quick --data DIR --set model.text_dim=12 ...   # CI-sized smoke run

Every number in the report comes from the runs this script made; the command line is written into it.
Each run's JSON entry also records what its loss really did (``sspc_enabled``, ``solver`` from the run's
own config, the logged SSPC values), so a variant that silently trained the wrong loss is visible.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]

VARIANTS: Dict[str, List[str]] = {
    "contrastive": ["loss.sspc.enabled=false"],
    "sspc_multi": ["loss.sspc.enabled=true", "loss.sspc.solver=multi", "loss.sspc.cost=reference"],
    "sspc_classic": ["loss.sspc.enabled=true", "loss.sspc.solver=classic", "loss.sspc.cost=reference"],
    "sspc_multi_softce": ["loss.sspc.enabled=true", "loss.sspc.solver=multi", "loss.sspc.cost=soft_ce"],
}
DEFAULT_VARIANTS = ("contrastive", "sspc_multi", "sspc_classic")
# (split, direction, label) reported
REPORTED = [
    ("test_in_domain", "t2v", "in-domain text→picture"),
    ("test_out_of_domain", "t2v", "out-of-domain text→picture"),
    ("test_audio", "t2a", "text→speech"),
]
METRICS = ("R1", "R5", "R10", "MedR")


def loss_record(out_dir: Path) -> Dict[str, Any]:
    """What the run's loss really was: its saved config and the SSPC values it logged."""
    from multisk.config import load_config

    cfg = load_config(out_dir / "config.yaml")
    active, sspc = [], []
    for line in (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "loss" in record:
            active.append(record.get("loss/sspc/active", 0.0))
            sspc.append(record.get("loss/sspc", 0.0))
    return {"sspc_enabled": cfg.loss.sspc.enabled, "solver": cfg.loss.sspc.solver, "cost": cfg.loss.sspc.cost,
            "corrupt_fraction": cfg.data.corrupt_fraction, "sspc_active_max": max(active, default=0.0),
            "sspc_logged": sspc}


def run_one(config: str, overrides: Sequence[str], out_dir: Path) -> Dict:
    from multisk.config import load_config
    from multisk.train.trainer import train

    cfg = load_config(config, [*overrides, f"train.output_dir={out_dir}"])
    results = train(cfg, progress=False, make_plots=False)
    evaluation = results["evaluation"]
    record = {
        "retrieval": {split: entry["retrieval"] for split, entry in evaluation.items()},
        "structure": {split: entry.get("structure", {}) for split, entry in evaluation.items()},
        "loss": loss_record(out_dir),
    }
    if "prior" in results:
        # with the text-space prior (docs/prior.md) the question "does SSPC help?" is about the learned
        # part: score the same checkpoint with w = 0 too
        from multisk.commands.demo import prior_ablations

        learned = next(iter(prior_ablations(cfg, out_dir / "checkpoints" / "latest.pt", "run",
                                            with_prior_alone=False).values()))
        record["prior_weight"] = results["prior"]["weight"]
        record["learned"] = {"retrieval": {split: entry["retrieval"] for split, entry in learned.items()},
                             "structure": {split: entry.get("structure", {}) for split, entry in learned.items()}}
    return record


RECORD_FILE = "claim_record.json"


def reused_record(out_dir: Path, config: str, overrides: Sequence[str]) -> Optional[Dict]:
    """A finished run's record when ``out_dir`` holds one made with the same config file and overrides.

    Only the command line is compared: a record made before the recipe (``config``'s contents or the
    code) changed is reused too, so ``--reuse`` is for resuming an interrupted sweep or adding levels
    to one, not for comparing code versions.
    """
    path = out_dir / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SystemExit(f"claim.py --reuse: {path} is unreadable ({error}); delete it to train that run again")
    if not isinstance(record, dict):
        raise SystemExit(f"claim.py --reuse: {path} is not a run record (a JSON object); delete it to train that run again")
    if record.get("config") != config or record.get("overrides") != list(overrides):
        return None
    return record


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}"


def table(rows: Dict[str, List[Dict]], reported=REPORTED) -> str:
    """One row per entry of ``rows`` (name -> per-seed retrieval dicts ``{split: {direction: metrics}}``)."""
    header = ["variant", "seeds"] + [f"{label} {m}" for _, _, label in reported for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, per_seed in rows.items():
        cells = [name, str(len(per_seed))]
        for split, direction, _ in reported:
            for metric in METRICS:
                values = [r[split][direction][metric] for r in per_seed
                          if split in r and direction in r[split] and metric in r[split][direction]]
                cells.append(mean_std(values))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def structure_table(rows: Dict[str, List[Dict]], splits: Sequence[str]) -> str:
    """Mean k-NN Jaccard (×100) per split and modality, mean ± std over seeds."""
    columns = []
    for split in splits:
        modalities = sorted({m for per_seed in rows.values() for r in per_seed for m in r.get(split, {})})
        columns += [(split, m) for m in modalities]
    header = ["variant", "seeds"] + [f"{split} {m}" for split, m in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, per_seed in rows.items():
        cells = [name, str(len(per_seed))]
        for split, m in columns:
            values = [100 * r[split][m]["knn_jaccard"] for r in per_seed if m in r.get(split, {})]
            cells.append(mean_std(values))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def drop_table(runs: Dict[str, Dict[float, List[Dict]]], levels: Sequence[float], reported=REPORTED) -> str:
    """R@10 and MedR per corruption level, and the change from the clean level (mean over seeds)."""
    header = ["variant"]
    for _, _, label in reported:
        header += [f"{label} R10 @ {int(100 * lv)} %" for lv in levels] + [f"{label} MedR @ {int(100 * lv)} %" for lv in levels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, per_level in runs.items():
        cells = [name]
        for split, direction, _ in reported:
            for metric in ("R10", "MedR"):
                for lv in levels:
                    values = [r[split][direction][metric] for r in per_level.get(lv, [])
                              if split in r and direction in r[split]]
                    cells.append(mean_std(values))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--data", default="data/clipart", help="prepared clipart store (multisk data prepare clipart)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated subset of {', '.join(VARIANTS)}")
    parser.add_argument("--reuse", action="store_true",
                        help=f"reuse runs under --work whose {RECORD_FILE} has the same config and overrides "
                             "(resume an interrupted sweep, or add corruption levels to one)")
    parser.add_argument("--corrupt", default="0",
                        help="comma-separated fractions of training pairs whose captions are shuffled, e.g. 0,0.3,0.6")
    parser.add_argument("--no-baselines", action="store_true", help="skip the training-free baseline rows")
    parser.add_argument("--set", action="append", default=[], metavar="key=value", help="extra config override")
    parser.add_argument("--work", default="runs/claim", help="folder for the individual runs")
    parser.add_argument("--out", default=None, help="Markdown report to write")
    parser.add_argument("--json", default=None, help="raw per-run metrics as JSON")
    parser.add_argument("--quick", action="store_true", help="CI-sized: 1 seed, 1 epoch")
    parser.add_argument("--reported", default=None,
                        help="override the reported split:direction pairs, e.g. 'test:t2v,test:t2a'")
    args = parser.parse_args(argv)

    seeds = list(range(args.first_seed, args.first_seed + (1 if args.quick else args.seeds)))
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    try:
        levels = [float(x) for x in args.corrupt.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--corrupt: expected comma-separated fractions, got {args.corrupt!r}")
    if not levels or any(not 0 <= lv <= 1 for lv in levels):
        parser.error(f"--corrupt: fractions must be in [0, 1], got {args.corrupt!r}")
    reported = REPORTED
    if args.reported:
        reported = [(p.split(":")[0], p.split(":")[1], p) for p in args.reported.split(",")]
    base = [f"data.root={args.data}", *args.set]
    if args.quick:
        base.append("train.epochs=1")
    work = Path(args.work)
    started = time.perf_counter()

    # runs[variant][level] = per-seed run records
    runs: Dict[str, Dict[float, List[Dict]]] = {}
    for level in levels:
        for name in names:
            for seed in seeds:
                t0 = time.perf_counter()
                tag = f"{name}_c{int(round(100 * level))}_seed{seed}"
                overrides = [*base, *VARIANTS[name], f"data.corrupt_fraction={level}", f"train.seed={seed}"]
                record = reused_record(work / tag, args.config, overrides) if args.reuse else None
                if record is None:
                    record = run_one(args.config, overrides, work / tag)
                    record.update(seed=seed, config=args.config, overrides=overrides)
                    (work / tag / RECORD_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
                    print(f"[claim] {tag}: {time.perf_counter() - t0:.0f} s", flush=True)
                else:
                    print(f"[claim] {tag}: reused {work / tag / RECORD_FILE}", flush=True)
                runs.setdefault(name, {}).setdefault(level, []).append(record)

    baselines: Dict[str, Any] = {}
    if not args.no_baselines:
        from multisk.evaluate.baselines import compute_baselines

        splits = list(dict.fromkeys(split for split, _, _ in reported))
        baselines = compute_baselines(args.data, splits, seed=0)

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    report = [
        "# Results: does structure preservation help on the embedded benchmark?",
        "",
        f"Made by `{command}` in {time.perf_counter() - started:.0f} s "
        f"({len(seeds)} seed(s) per variant and corruption level; mean ± sample std over seeds; "
        "R@k in %, MedR = median rank).",
    ]
    for level in levels:
        rows = {name: [r["retrieval"] for r in runs[name][level]] for name in names}
        rows.update({f"{name}, learned part (w = 0)": [r["learned"]["retrieval"] for r in runs[name][level]]
                     for name in names if all("learned" in r for r in runs[name][level])})
        if level == levels[0]:
            rows.update({f"baseline: {b}": [per_split] for b, per_split in baselines.get("runs", {}).items()})
        report += ["", f"## Captions of {int(round(100 * level))} % of the training pairs shuffled", "",
                   table(rows, reported)]
    if len(levels) > 1:
        report += ["", "## Weak alignment: R@10 and MedR by corruption level", "", drop_table(
            {name: {lv: [r["retrieval"] for r in runs[name][lv]] for lv in levels} for name in names}, levels, reported)]
    splits = list(dict.fromkeys(split for split, _, _ in reported))
    structure_rows = {f"{name} @ {int(round(100 * lv))} %": [r["structure"] for r in runs[name][lv]]
                      for lv in levels for name in names}
    structure_rows.update({f"{name}, learned part @ {int(round(100 * lv))} %": [r["learned"]["structure"]
                                                                              for r in runs[name][lv]]
                           for lv in levels for name in names if all("learned" in r for r in runs[name][lv])})
    weights = {name: [r["prior_weight"] for lv in levels for r in runs[name][lv] if "prior_weight" in r] for name in names}
    if any(weights.values()):
        report += ["", "Text-space prior weight w chosen on the validation split, per run: " + "; ".join(
            f"{name} {', '.join(f'{w:.1f}' for w in ws)}" for name, ws in weights.items() if ws)]
    report += ["", "## Structure preservation: mean 10-NN Jaccard (×100) between frozen input features and the "
               "joint space", "", structure_table(structure_rows, splits)]
    if baselines.get("skipped"):
        report += ["", "Baselines not computed: " + "; ".join(f"{b}: {why}" for b, why in baselines["skipped"].items())]
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    if args.json:
        raw = {"command": command, "runs": {name: {str(lv): recs for lv, recs in per.items()} for name, per in runs.items()},
               "baselines": baselines}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
