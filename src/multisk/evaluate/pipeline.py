"""Embed evaluation datasets with a model and score every retrieval direction (SPEC §7)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from multisk.data.dataset import collate_batch
from multisk.evaluate.directions import evaluate_directions


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


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

    Returns ``{"joint": {name: (N, E) float32}, "nonempty": {modality: (N,) bool},
    "input_anchor_scores": {m: (N, K)}, "joint_anchor_scores": {m: {n: (N, K)}}}`` as CPU tensors.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_batch)
    parts: Dict[str, Any] = {"joint": {}, "nonempty": {}, "input_anchor_scores": {}, "joint_anchor_scores": {}}

    def add(store: Dict[str, list], key: str, value: torch.Tensor) -> None:
        store.setdefault(key, []).append(value.detach().float().cpu() if value.is_floating_point() else value.cpu())

    for batch in loader:
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        with _autocast(device, precision):
            out = model(batch)
        for name, emb in out["joint_normalized"].items():
            add(parts["joint"], name, emb)
        for m, flag in out["nonempty"].items():
            add(parts["nonempty"], m, flag)
        for m, scores in out["input_anchor_scores"].items():
            add(parts["input_anchor_scores"], m, scores)
        for m, per_joint in out["joint_anchor_scores"].items():
            inner = parts["joint_anchor_scores"].setdefault(m, {})
            for n, scores in per_joint.items():
                add(inner, n, scores)
    model.train(was_training)

    def cat(store: Dict[str, Any]) -> Dict[str, Any]:
        return {k: (torch.cat(v) if isinstance(v, list) else cat(v)) for k, v in store.items()}

    return {key: cat(value) for key, value in parts.items()}


def caption_groups(dataset) -> Optional[np.ndarray]:
    """Items sharing a ``group`` field (identical captions) are all correct answers; None if absent."""
    items = dataset.store.items
    if not items or all("group" not in item for item in items):
        return None
    keys: Dict[Any, int] = {}
    return np.asarray([keys.setdefault(item.get("group", f"__item{i}"), len(keys)) for i, item in enumerate(items)])


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


def evaluate_model(
    model: torch.nn.Module,
    datasets: Mapping[str, Any],
    *,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    batch_size: int = 128,
    keep_embeddings: bool = False,
) -> Dict[str, Any]:
    """Evaluate every split: ``{split: {"retrieval": {direction: metrics}, "n_items": N, ...}}``."""
    results: Dict[str, Any] = {}
    for split, dataset in datasets.items():
        emb = embed_dataset(model, dataset, device=device, precision=precision, batch_size=batch_size)
        nonempty = nonempty_for_joint(emb["nonempty"], emb["joint"].keys())
        # only a complete size the data declares (MSR-VTT's 1000, YouCook2's 3350) changes the
        # denominators; otherwise each direction is scored over the queries it has
        complete = dataset.store.info.get("complete_size")
        retrieval = evaluate_directions(emb["joint"], nonempty, groups=caption_groups(dataset),
                                        complete_size=complete)
        entry: Dict[str, Any] = {"retrieval": retrieval, "n_items": len(dataset)}
        if complete:
            entry["complete_size"] = complete
        if keep_embeddings:
            entry["embeddings"] = emb
        results[split] = entry
    return results


__all__ = ["caption_groups", "embed_dataset", "evaluate_model", "nonempty_for_joint"]
