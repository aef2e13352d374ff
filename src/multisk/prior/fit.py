"""Fitting the closed-form text-space prior of a model and choosing its weights on held-out data.

:class:`multisk.prior.maps.TextSpacePrior` holds buffers only; this module fills them (docs/prior.md,
docs/results.md):

1. :func:`fit_text_space_prior`, before training: pools every training item's inputs with the prior's
   own pooling, fits one ridge map per non-text modality to the captions' text embeddings
   (:class:`~multisk.prior.maps.RidgeMap`), λ from :data:`RIDGE_LAMBDAS`; with a concept head, loads
   it (Lite0's ImageNet classifier, the MiniLM embeddings of the 1000 class names) and chooses α from
   :data:`CONCEPT_MIXES`.
2. :func:`choose_prior_weight`, at every checkpoint: the retrieval weight w from :data:`PRIOR_WEIGHTS`
   for the model's current weights.

Every choice maximises the validation "rsum" (R@1 + R@5 + R@10, the usual model-selection number of
retrieval papers) of the text→modality directions, ties going to the earlier grid value. The
validation data is ``data.val_split`` when it has the modality paired with text, else a seeded 10 % of
the training items held out of the fit that chooses (the final map is refitted on every training pair).
Never a test split.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from multisk.config import Config, ConfigError
from multisk.data.encoders.class_names import class_name_embeddings, imagenet_class_names
from multisk.data.store.dataset import collate_batch
from multisk.data.store.evaluation_batches import EVAL_MODEL_BATCH, caption_groups, evaluation_collate, fixed_size_batches
from multisk.data.encoders.lite0 import load_lite0
from multisk.prior.maps import RidgeMap, TextSpacePrior, combine_with_prior, pool_inputs
from multisk.prior.mixed import prior_of
from multisk.prior.validation import text_to, val_rsum, validation_pairs

RIDGE_LAMBDAS = (1.0, 10.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
CONCEPT_MIXES = tuple(round(0.1 * i, 1) for i in range(11))
PRIOR_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
LITE0_DIM, IMAGENET_CLASSES, MINILM_DIM = 1280, 1000, 384


# ---------------------------------------------------------------------------------------------- pooling
@torch.no_grad()
def pooled_dataset(prior: TextSpacePrior, dataset, batch_size: int = 256) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """``{modality: (pool (N, d') float64, nonempty (N,) bool)}`` over a dataset, in item order; the
    text pool is L2-normalised (the caption's embedding p_t)."""
    collate = getattr(dataset, "collate_fn", None) or collate_batch
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    parts: Dict[str, List[Tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in prior.encoders}
    for batch in loader:
        for m, encoder in prior.encoders.items():
            if m in batch:
                pool, nonempty = pool_inputs(batch[m], batch[f"{m}_mask"], encoder)
                if m == "text":
                    pool = F.normalize(pool, dim=-1)
                parts[m].append((pool.double(), nonempty))
    return {m: (torch.cat([p for p, _ in chunks]).numpy(), torch.cat([f for _, f in chunks]).numpy())
            for m, chunks in parts.items() if chunks}


# ------------------------------------------------------------------------------------------- the fit
def _fit_ridge(prior: TextSpacePrior, modality: str, train, val, val_groups, train_groups, seed: int, table) -> Dict[str, Any]:
    x, present = train[modality]
    t, t_present = train["text"]
    paired = present & t_present
    if paired.sum() < 4:
        raise ConfigError(f"model.prior: the training split has {int(paired.sum())} items with both text and "
                          f"{modality}; the ridge map needs at least 4 (disable model.prior or drop {modality})")
    fit_mask, vx, vt, vg, source = validation_pairs(modality, train, val, val_groups, train_groups, seed)
    chooser = RidgeMap().fit(x[fit_mask], t[fit_mask])
    curve = [{"lambda": lam, "rsum": val_rsum(vt, chooser.predict(vx, lam), modality, vg, table)} for lam in RIDGE_LAMBDAS]
    best = max(curve, key=lambda c: c["rsum"])  # first maximum: ties go to the smaller λ
    ridge = RidgeMap().fit(x[paired], t[paired])
    prior.set_ridge(modality, ridge.mean, ridge.scale, ridge.weights(best["lambda"]), ridge.target_mean)
    return {"lambda": best["lambda"], "n_train": int(paired.sum()), "chosen_on": source, "curve": curve}


def concept_head_arrays() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lite0's ImageNet classifier ``(1000, 1280), (1000,)`` and the MiniLM embeddings of the class
    names ``(1000, 384)`` (packaged weights, offline; :mod:`multisk.data.encoders.class_names`)."""
    classifier = load_lite0().classifier
    return (classifier.weight.detach().double().numpy(), classifier.bias.detach().double().numpy(),
            class_name_embeddings(imagenet_class_names()))


def _check_concept_inputs(cfg: Config, store_info: Mapping[str, Any]) -> None:
    m = cfg.model
    if m.prior.concept_classes != IMAGENET_CLASSES or m.video_dim != LITE0_DIM or m.text_dim != MINILM_DIM:
        raise ConfigError(
            f"model.prior.concept_classes: the concept head is Lite0's ImageNet classifier read through MiniLM "
            f"class-name embeddings; it needs concept_classes {IMAGENET_CLASSES}, model.video_dim {LITE0_DIM} "
            f"(Lite0 pictures) and model.text_dim {MINILM_DIM} (MiniLM captions), got {m.prior.concept_classes}, "
            f"{m.video_dim}, {m.text_dim}")
    encoder = store_info.get("picture_encoder")
    if "lite0" not in str(encoder).lower():
        raise ConfigError(f"model.prior.concept_classes: the training store does not record Lite0 pictures "
                          f"(picture_encoder: {encoder!r}); set model.prior.concept_classes=0")


def _choose_concept_mix(prior: TextSpacePrior, train, val, val_groups, train_groups, seed: int, table) -> Dict[str, Any]:
    _, vx, vt, vg, source = validation_pairs("video", train, val, val_groups, train_groups, seed)
    pool = torch.as_tensor(vx, dtype=torch.float32, device=prior.concept_weight.device)
    with torch.no_grad():
        ridge = F.normalize(prior.ridge_embedding("video", pool), dim=-1).cpu()
        concepts = F.normalize(prior.concept_embedding(pool), dim=-1).cpu()
    curve = []
    for alpha in CONCEPT_MIXES:
        embedded = F.normalize((1 - alpha) * ridge + alpha * concepts, dim=-1).double().numpy()
        curve.append({"alpha": alpha, "rsum": val_rsum(vt, embedded, "video", vg, table)})
    best = max(curve, key=lambda c: c["rsum"])
    prior.concept_mix.fill_(best["alpha"])
    return {"alpha": best["alpha"], "chosen_on": source, "curve": curve}


def fit_text_space_prior(model: torch.nn.Module, cfg: Config, train_dataset, val_dataset=None, *,
                         concept_arrays: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None) -> Dict[str, Any]:
    """Fill ``model.prior``'s buffers from the training data (module docstring); returns a report
    ``{modality: {lambda, n_train, chosen_on, curve}, "concepts": {alpha, ...}?}``.

    ``concept_arrays`` (classifier weight, bias, class embeddings) replaces the packaged Lite0/MiniLM
    concept head (tests use small ones).
    """
    prior = prior_of(model)
    if prior is None:
        raise ConfigError("model.prior.enabled: the model was built without a prior")
    table = model.modality_table
    seed = cfg.train.seed
    train = pooled_dataset(prior, train_dataset)
    val = pooled_dataset(prior, val_dataset) if val_dataset is not None else None
    train_groups = caption_groups(train_dataset) if hasattr(train_dataset, "store") else None
    val_groups = caption_groups(val_dataset) if val_dataset is not None and hasattr(val_dataset, "store") else None
    report: Dict[str, Any] = {}
    for m in prior.mapped:
        if m in train:
            report[m] = _fit_ridge(prior, m, train, val, val_groups, train_groups, seed, table)
    if prior.concept_classes > 0:
        if concept_arrays is None:
            _check_concept_inputs(cfg, getattr(getattr(train_dataset, "store", None), "info", {}) or {})
            concept_arrays = concept_head_arrays()
        prior.set_concepts(*concept_arrays)
        report["concepts"] = _choose_concept_mix(prior, train, val, val_groups, train_groups, seed, table)
    prior.mix_weight.fill_(cfg.model.prior.weight if cfg.model.prior.weight is not None else 0.0)
    prior.fitted.fill_(True)
    return report


# ------------------------------------------------------------------------------ the retrieval weight
@torch.no_grad()
def choose_prior_weight(model: torch.nn.Module, val_dataset, *, device: torch.device | str = "cpu",
                        batch_size: int = 256, weights: Sequence[float] = PRIOR_WEIGHTS) -> Dict[str, Any]:
    """Set ``model.prior.mix_weight`` to the w with the best mean validation rsum over the text→m
    directions the split has (pictures, sounds, ...); returns ``{"weight", "curve"}``."""
    prior = prior_of(model)
    table = model.modality_table
    was_training = model.training
    model.eval()
    learned: Dict[str, List[torch.Tensor]] = {}
    priors: Dict[str, List[torch.Tensor]] = {}
    present: Dict[str, List[torch.Tensor]] = {}
    collate = evaluation_collate(val_dataset, getattr(val_dataset, "modality_table", table))
    loader = DataLoader(val_dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch, n in fixed_size_batches(loader, EVAL_MODEL_BATCH):  # batch-size-independent, as evaluation
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        out = model(batch)
        for m in prior.encoders:
            if m in out["joint"] and m in out["prior"]:
                learned.setdefault(m, []).append(F.normalize(out["joint"][m][:n].float(), dim=-1).cpu())
                priors.setdefault(m, []).append(out["prior"][m][:n].float().cpu())
                present.setdefault(m, []).append(out["nonempty"][m][:n].cpu())
    model.train(was_training)
    x = {m: torch.cat(v) for m, v in learned.items()}
    p = {m: torch.cat(v) for m, v in priors.items()}
    flags = {m: torch.cat(v).numpy() for m, v in present.items()}
    groups = caption_groups(val_dataset) if hasattr(val_dataset, "store") else None
    targets = [m for m in prior.mapped if m in x and "text" in x and (flags[m] & flags["text"]).sum() >= 2]
    if not targets:
        raise ConfigError("data.val_split: the validation split has no modality paired with text; model.prior.weight "
                          "cannot be chosen on it (give model.prior.weight)")
    curve = []
    for w in weights:
        combined = combine_with_prior(x, p, w)
        scores = []
        for m in targets:
            keep = flags[m] & flags["text"]
            scores.append(val_rsum(combined["text"][keep].numpy(), combined[m][keep].numpy(), m,
                                    groups[keep] if groups is not None else None, table))
        curve.append({"weight": float(w), "rsum": float(np.mean(scores))})
    best = max(curve, key=lambda c: c["rsum"])
    prior.mix_weight.fill_(best["weight"])
    return {"weight": best["weight"], "directions": [text_to(m, table) for m in targets], "curve": curve}


__all__ = ["CONCEPT_MIXES", "PRIOR_WEIGHTS", "RIDGE_LAMBDAS", "choose_prior_weight", "concept_head_arrays",
           "fit_text_space_prior", "pooled_dataset"]
