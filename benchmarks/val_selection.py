"""Recipe selection on the validation split only (issue 19, item 4; docs/results.md §6).

Reads finished training runs (``multisk train`` / ``benchmarks/claim.py`` output folders) and reports,
from the ``val`` split alone — no test split is opened:

- the per-epoch validation score the trainer logged before every checkpoint (``prior/val_rsum``: the
  text→picture rsum R@1 + R@5 + R@10 at the w chosen for that epoch's weights, and that w), so a run
  of E epochs also gives the score of every shorter schedule (the learning-rate schedule and the data
  order do not depend on the total epoch count);
- for the final checkpoint, text→picture and picture→text R@1 / R@5 / R@10 / MedR on ``val`` for every
  prior weight w in 0, 0.1, …, 1 (the mix ``[√(1 − w) x̂ ; √w p]`` of docs/prior.md);
- the rules for choosing w (which validation number to maximise), each judged by two-fold
  cross-fitting on ``val``: the caption groups of ``val`` are split in two seeded halves, w is chosen on
  one half by the rule and the other half's text→picture metrics at that w are recorded, then the halves
  swap. A rule can only be judged on data it did not choose on; this keeps the judgement on ``val``.

    python benchmarks/val_selection.py runs/grid/*/*_seed0 --data data/clipart --json runs/grid/val.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from multisk.data.store.evaluation_batches import EVAL_MODEL_BATCH, caption_groups, evaluation_collate, fixed_size_batches
from multisk.evaluate.inputs import eval_store_dataset
from multisk.evaluate.loading import load_model
from multisk.metrics.directions import evaluate_directions
from multisk.prior.fit import PRIOR_WEIGHTS
from multisk.prior.maps import combine_with_prior


def rsum(m: Mapping[str, float]) -> float:
    return float(m["R1"] + m["R5"] + m["R10"])


# rule name -> score of one curve point (higher is better); ties go to the smaller w, as in training
RULES: Dict[str, Callable[[Mapping[str, Any]], float]] = {
    "t2v rsum (shipped)": lambda pt: rsum(pt["t2v"]),
    "t2v + v2t rsum": lambda pt: rsum(pt["t2v"]) + rsum(pt["v2t"]),
    "t2v R10": lambda pt: pt["t2v"]["R10"],
    "t2v MedR": lambda pt: -pt["t2v"]["MedR"],
}


@torch.no_grad()
def val_embeddings(checkpoint: Path, data_root: str, split: str) -> Dict[str, Any]:
    """Learned ``x`` (N, E) and prior ``p`` (N, T) unit embeddings of text and pictures on ``split``."""
    model, cfg = load_model(checkpoint)
    dataset = eval_store_dataset(cfg, data_root, split)
    table = model.modality_table
    loader = DataLoader(dataset, batch_size=64, shuffle=False, collate_fn=evaluation_collate(dataset, table))
    learned: Dict[str, List[torch.Tensor]] = {}
    prior: Dict[str, List[torch.Tensor]] = {}
    present: List[torch.Tensor] = []
    for batch, n in fixed_size_batches(loader, EVAL_MODEL_BATCH):
        out = model(batch)
        for m in ("text", "video"):
            learned.setdefault(m, []).append(F.normalize(out["joint"][m][:n].float(), dim=-1))
            prior.setdefault(m, []).append(out["prior"][m][:n].float())
        present.append(out["nonempty"]["text"][:n] & out["nonempty"]["video"][:n])
    keep = torch.cat(present).numpy()  # the text-picture pairs, as the trainer's choice of w scores them
    groups = caption_groups(dataset)
    groups = groups if groups is not None else np.arange(len(dataset))
    return {"x": {m: torch.cat(v)[keep] for m, v in learned.items()},
            "p": {m: torch.cat(v)[keep] for m, v in prior.items()}, "groups": groups[keep], "table": table}


def curve(emb: Mapping[str, Any], keep: Optional[np.ndarray] = None) -> List[Dict[str, Any]]:
    """Metrics of t2v and v2t for every w in PRIOR_WEIGHTS, on the items ``keep`` (default all)."""
    n = len(emb["groups"])
    keep = np.ones(n, dtype=bool) if keep is None else keep
    points = []
    for w in PRIOR_WEIGHTS:
        mixed = combine_with_prior(emb["x"], emb["p"], w)
        scored = evaluate_directions({m: mixed[m][keep].numpy() for m in ("text", "video")},
                                     groups=emb["groups"][keep], directions=["t2v", "v2t"], table=emb["table"])
        points.append({"w": float(w), **{d: {k: scored[d][k] for k in ("R1", "R5", "R10", "MedR")} for d in scored}})
    return points


def choose(points: Sequence[Mapping[str, Any]], rule: str) -> Mapping[str, Any]:
    return max(points, key=RULES[rule])  # first maximum: ties go to the smaller w


def cross_fit(emb: Mapping[str, Any], seed: int = 0) -> Dict[str, Any]:
    """Each rule chooses w on one seeded half of val's caption groups; the other half scores it."""
    groups = emb["groups"]
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    first = set(rng.permutation(unique)[: len(unique) // 2].tolist())
    half = np.array([g in first for g in groups])
    curves = [curve(emb, half), curve(emb, ~half)]
    out = {}
    for rule in RULES:
        held = []
        for choose_on, score_on in ((0, 1), (1, 0)):
            w = choose(curves[choose_on], rule)["w"]
            held.append({"w": w, **next(pt for pt in curves[score_on] if pt["w"] == w)["t2v"]})
        out[rule] = {"w": [h["w"] for h in held],
                     **{k: float(np.mean([h[k] for h in held])) for k in ("R1", "R5", "R10", "MedR")}}
    return out


def logged_epochs(run: Path) -> List[Dict[str, float]]:
    """The trainer's per-checkpoint choices from metrics.jsonl: ``[{step, w, val_rsum}]`` in order."""
    rows = []
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "prior/val_rsum" in record:
            rows.append({"step": record["step"], "w": record["prior/weight"], "val_rsum": record["prior/val_rsum"]})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (each with checkpoints/latest.pt and metrics.jsonl)")
    parser.add_argument("--data", required=True, help="the prepared store the runs trained on")
    parser.add_argument("--split", default="val")
    parser.add_argument("--json", default=None, help="write everything as JSON here")
    args = parser.parse_args(argv)
    report = {}
    for run in map(Path, args.runs):
        emb = val_embeddings(run / "checkpoints" / "latest.pt", args.data, args.split)
        points = curve(emb)
        shipped = choose(points, "t2v rsum (shipped)")
        report[str(run)] = {"epochs": logged_epochs(run), "curve": points, "chosen": shipped,
                            "cross_fit": cross_fit(emb)}
        t = shipped["t2v"]
        print(f"{run}: w {shipped['w']:.1f}  val t2v R1 {t['R1']:.1f} R5 {t['R5']:.1f} R10 {t['R10']:.1f} "
              f"MedR {t['MedR']:.1f}  rsum {rsum(t):.1f}; per-epoch val rsum "
              + " ".join(f"{e['val_rsum']:.1f}" for e in report[str(run)]["epochs"]), flush=True)
        for rule, r in report[str(run)]["cross_fit"].items():
            print(f"    cross-fit {rule:20s} w {r['w']}  held-out half t2v R1 {r['R1']:.1f} R5 {r['R5']:.1f} "
                  f"R10 {r['R10']:.1f} MedR {r['MedR']:.1f} rsum {rsum(r):.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
