"""Embed evaluation datasets with a model and score every retrieval direction (docs/evaluation.md)."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from multisk.data.store.evaluation_batches import EVAL_MODEL_BATCH, caption_groups, evaluation_collate, fixed_size_batches
from multisk.metrics.directions import Side, evaluate_directions, table_directions
from multisk.evaluate.inputs import dataset_inputs, empty_modalities_mode
from multisk.metrics.structure import structure_preservation
from multisk.modalities import MODALITY_SPECS, ModalityTable
from multisk.precision import autocast_context


def storage_dtypes(dataset) -> Dict[str, str]:
    """Model modality -> the dtype its features are stored in (the store manifest's ``dtype``); empty
    for a dataset without a feature store."""
    store = getattr(dataset, "store", None)
    mapping = getattr(dataset, "modality_map", None) or {}
    stored = (getattr(store, "info", None) or {}).get("modalities", {})
    return {m: str(stored[name]["dtype"]) for m, name in mapping.items() if name in stored}


def model_modality_table(model: torch.nn.Module) -> ModalityTable:
    """The modality table a model was built with (``MultiModalModel.modality_table``: the built-in
    rows plus ``model.modality_specs``); the built-in rows for a model without one."""
    return getattr(model, "modality_table", MODALITY_SPECS)


@torch.no_grad()
def embed_dataset(
    model: torch.nn.Module,
    dataset,
    *,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    batch_size: int = 128,
) -> Dict[str, Any]:
    """Run ``model`` over ``dataset`` in order.

    ``batch_size`` items are loaded at a time; the model always sees :data:`EVAL_MODEL_BATCH` items per
    call, each padded to the dataset's fixed window (:func:`evaluation_collate`), so the embeddings are
    bit-identical for any ``batch_size``.

    Returns ``{"joint": {name: (N, E) float32}, "nonempty": {modality: (N,) bool},
    "input_anchor_scores": {m: (N, K)}, "joint_anchor_scores": {m: {n: (N, K)}}}`` as CPU tensors.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    # the rows the dataset's items carry (a configured row such as flow is a field of every item)
    collate = evaluation_collate(dataset, getattr(dataset, "modality_table", model_modality_table(model)))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    parts: Dict[str, Any] = {"joint": {}, "nonempty": {}, "input_anchor_scores": {}, "joint_anchor_scores": {}}

    def add(store: Dict[str, list], key: str, value: torch.Tensor, n: int) -> None:
        value = value[:n]
        store.setdefault(key, []).append(value.detach().float().cpu() if value.is_floating_point() else value.cpu())

    for batch, n in fixed_size_batches(loader, EVAL_MODEL_BATCH):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        with autocast_context(device, precision):
            out = model(batch)
        for name, emb in out["joint_normalized"].items():
            add(parts["joint"], name, emb, n)
        for m, flag in out["nonempty"].items():
            add(parts["nonempty"], m, flag, n)
        for m, scores in out["input_anchor_scores"].items():
            add(parts["input_anchor_scores"], m, scores, n)
        for m, per_joint in out["joint_anchor_scores"].items():
            inner = parts["joint_anchor_scores"].setdefault(m, {})
            for j, scores in per_joint.items():
                add(inner, j, scores, n)
    model.train(was_training)

    def cat(store: Dict[str, Any]) -> Dict[str, Any]:
        return {k: (torch.cat(v) if isinstance(v, list) else cat(v)) for k, v in store.items()}

    return {key: cat(value) for key, value in parts.items()}


def nonempty_for_joint(nonempty: Mapping[str, torch.Tensor], names) -> Dict[str, torch.Tensor]:
    """Validity of each joint embedding: a fused pair needs both of its modalities."""
    result = {}
    for name in names:
        parts = name.split("_")
        flag = nonempty[parts[0]].clone()
        for p in parts[1:]:
            flag &= nonempty[p]
        result[name] = flag
    return result


def _direction_modalities(query: Side, gallery: Side) -> Tuple[List[str], bool]:
    """(modalities a direction needs, whether it needs a model-fused pair embedding)."""
    return list(dict.fromkeys(query.modalities + gallery.modalities)), query.fused_by_model or gallery.fused_by_model


def score_retrieval(
    emb: Mapping[str, Any],
    *,
    mode: str,
    groups: Optional[np.ndarray] = None,
    complete_size: Optional[int] = None,
    table: Optional[ModalityTable] = None,
) -> Tuple[Dict[str, Dict[str, float]], Dict[str, str]]:
    """Every retrieval direction a split allows, and why each other direction was skipped.

    Args:
        emb: :func:`embed_dataset` output (``joint`` and ``nonempty``).
        mode: ``"masking_token"`` (every item is a query and a gallery entry; an empty modality is the
            model's masking-token embedding, docs/evaluation.md) or ``"excluded"`` (items lacking a modality leave the
            sides that need it).
        table: the model's modality table (:func:`model_modality_table`; default the built-in rows):
            names, letters and the directions listed, skipped ones included.
    Returns:
        ``(retrieval, skipped)``: direction label -> metrics, and direction label -> reason.
    """
    nonempty = emb["nonempty"]
    # a modality no item has cannot be retrieved in either mode: every gallery entry would be the same
    # masking-token embedding
    absent = sorted(m for m, flag in nonempty.items() if not bool(flag.any()))
    usable = {n: e for n, e in emb["joint"].items() if not set(n.split("_")) & set(absent)}
    skipped: Dict[str, str] = {}
    retrieval: Dict[str, Dict[str, float]] = {}
    if usable:
        validity = None if mode == "masking_token" else nonempty_for_joint(nonempty, usable.keys())
        retrieval = evaluate_directions(usable, validity, groups=groups, complete_size=complete_size, table=table)
    model_has_pairs = any("_" in n for n in emb["joint"])
    for label, (query, gallery) in table_directions(table).items():
        if label in retrieval:
            continue
        needed, needs_pair = _direction_modalities(query, gallery)
        if needs_pair and not model_has_pairs:
            continue  # models without fused pair embeddings never have these; listing them is noise
        missing_branch = [m for m in needed if m not in nonempty]
        empty = [m for m in needed if m in absent]
        if missing_branch:
            skipped[label] = f"the model has no {' / '.join(missing_branch)} branch"
        elif empty:
            skipped[label] = f"no item of this split has {' / '.join(empty)}"
        elif needs_pair:
            skipped[label] = "the model computes no embedding for this pair"
        else:
            skipped[label] = f"no item has every modality of both sides ({' + '.join(needed)}; empty modalities excluded)"
    return retrieval, skipped


def evaluate_split(
    model: torch.nn.Module,
    dataset,
    *,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    batch_size: int = 128,
    empty_modalities: str = "auto",
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Embed one split and score it; returns ``(entry, embeddings)``.

    ``entry``: ``{"n_items", "complete_size"?, "inputs", "retrieval", "skipped": {"directions": {...}}}``
    (:func:`evaluate_model` documents the fields). Further per-split blocks (classification, baselines,
    structure preservation) are added by the caller next to ``retrieval``.
    """
    mode = empty_modalities_mode(dataset, empty_modalities)
    emb = embed_dataset(model, dataset, device=device, precision=precision, batch_size=batch_size)
    # only a complete size the data declares (MSR-VTT's 1000, YouCook2's 3350) changes the
    # denominators; otherwise each direction is scored over the queries it has
    complete = dataset.store.info.get("complete_size") if hasattr(dataset, "store") else None
    retrieval, skipped = score_retrieval(emb, mode=mode, groups=caption_groups(dataset), complete_size=complete,
                                         table=model_modality_table(model))
    inputs = {
        **dataset_inputs(dataset),
        "empty_modalities": mode,
        "precision": precision,
        "model_batch": EVAL_MODEL_BATCH,
        "storage_dtype": storage_dtypes(dataset),
        "items_with": {m: int(flag.sum()) for m, flag in emb["nonempty"].items()},
    }
    entry: Dict[str, Any] = {"n_items": len(dataset)}
    if complete:
        entry["complete_size"] = complete
    entry["inputs"] = inputs
    entry["retrieval"] = retrieval
    entry["skipped"] = {"directions": skipped}
    if hasattr(dataset, "store") and hasattr(dataset, "modality_map"):
        # how much of each modality's frozen input-space neighbourhood the joint space keeps
        entry["structure"] = structure_preservation(dataset, emb["joint"], emb["nonempty"])
    return entry, emb


def evaluate_model(
    model: torch.nn.Module,
    datasets: Mapping[str, Any],
    *,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    batch_size: int = 128,
    keep_embeddings: bool = False,
    empty_modalities: str = "auto",
) -> Dict[str, Any]:
    """Evaluate every split (docs/evaluation.md).

    Returns ``{split: entry}`` with, per split:

    * ``n_items``; ``complete_size`` when the data declares one (R@k is divided by it);
    * ``inputs``: what was fed and how it was scored — ``text_tokens``, ``video_tokens``,
      ``audio_frames`` (the windows), ``crop``, ``window_from``, ``empty_modalities``
      (``"masking_token"`` / ``"excluded"``), ``precision``, ``items_with`` (items having each modality);
    * ``retrieval``: direction label -> metrics (:func:`multisk.metrics.evaluate_directions`);
    * ``skipped``: ``{"directions": {label: reason}}`` for every direction the split cannot score;
    * ``structure``: modality -> ``{"knn_jaccard", "k", "n_items"}``, the mean 10-NN Jaccard between the
      frozen input features and the joint embeddings (:func:`multisk.metrics.structure.structure_preservation`);
    * ``embeddings`` (only with ``keep_embeddings``): the :func:`embed_dataset` output.

    ``empty_modalities="auto"`` takes what each store records (masking token for the field's formats,
    exclusion otherwise; :func:`multisk.evaluate.inputs.empty_modalities_mode`).
    """
    results: Dict[str, Any] = {}
    for split, dataset in datasets.items():
        entry, emb = evaluate_split(model, dataset, device=device, precision=precision, batch_size=batch_size,
                                    empty_modalities=empty_modalities)
        if keep_embeddings:
            entry["embeddings"] = emb
        results[split] = entry
    return results


__all__ = ["EVAL_MODEL_BATCH", "caption_groups", "fixed_size_batches", "embed_dataset", "evaluation_collate", "evaluate_model", "evaluate_split", "model_modality_table",
           "nonempty_for_joint", "score_retrieval", "storage_dtypes"]
