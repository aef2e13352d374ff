"""Retrieval in every direction the embeddings allow (docs/evaluation.md).

Names. Embeddings come as a dict ``name -> (N, E)`` where row i of every matrix is item i. Single
modalities are ``"text"``, ``"video"``, ``"audio"``; embeddings the model itself computes for a pair
(``everything_at_once``) are ``"text_video"``, ``"text_audio"``, ``"video_audio"`` (either order).
Direction labels use the letters of the modality table (t / v / a; a row of ``model.modality_specs``
brings its own, e.g. ``f`` for flow: ``t2f f2t``, single → single only; pass the model's
``modality_table`` as ``table``):

* single → single: ``t2v v2t t2a a2t v2a a2v``
* late fusion (always available when the single modalities are): ``t2v+a v+a2t v2t+a t+a2v a2t+v
  t+v2a``. The late-fused embedding of x and y is ``(n(x) + n(y)) / 2`` (the reference's late fusion), n = L2
  normalisation; it is re-normalised before the cosine, which changes nothing in the ranking since
  cosine similarity ignores the scale of each row.
* model-fused pairs (when the pair embedding exists): ``t2va va2t v2ta ta2v a2tv tv2a``.

Missing modalities. ``nonempty[m]`` (N,) bool says whether item i has modality m (``None`` or a
missing key: every item has it — the reference evaluates every item, empty modalities included).
A side made of several modalities needs all of them. For direction X→Y:

* gallery = items that have Y (an item without Y cannot be retrieved, but every item with Y is a
  distractor, whether or not it has X);
* queries = items that have X **and** Y (a query whose own item is not in the gallery has no
  correct answer; with ``complete_size`` it still counts as a miss).

A direction with no valid query is omitted. Percentages are over the direction's own queries, or
over ``complete_size`` when given.

Multiple positives. ``groups`` (N,) ints: items sharing a group (e.g. identical captions) are all
correct answers for each other (see :mod:`multisk.metrics.retrieval` for the rank this implies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from multisk.metrics.retrieval import metrics_from_ranks, retrieval_ranks
from multisk.modalities import MODALITIES, MODALITY_SPECS, ModalityTable

ArrayLike = Union[np.ndarray, torch.Tensor]

LETTER = {name: spec.letter for name, spec in MODALITY_SPECS.items()}  # the built-in rows; Side reads the table


@dataclass(frozen=True)
class Side:
    """One side of a retrieval direction: one modality, or a pair fused late or by the model."""

    modalities: Tuple[str, ...]  # in the order of the modality table
    fused_by_model: bool = False
    letters: Tuple[str, ...] = field(default=(), compare=False)  # the table's letters of ``modalities``

    @property
    def label(self) -> str:
        letters = self.letters or tuple(MODALITY_SPECS[m].letter for m in self.modalities)
        return "".join(letters) if self.fused_by_model else "+".join(letters)


def _side(*modalities: str, fused_by_model: bool = False, table: Optional[ModalityTable] = None) -> Side:
    table = MODALITY_SPECS if table is None else table
    order = list(table)
    ordered = tuple(sorted(modalities, key=order.index))
    return Side(ordered, fused_by_model, tuple(table[m].letter for m in ordered))


def _all_directions() -> List[Tuple[Side, Side]]:
    """Every direction of docs/evaluation.md in the order reports list them."""
    t, v, a = "text", "video", "audio"
    singles = [(t, v), (v, t), (t, a), (a, t), (v, a), (a, v)]
    directions = [(_side(x), _side(y)) for x, y in singles]
    for fused_by_model in (False, True):
        for single, (p1, p2) in ((t, (v, a)), (v, (t, a)), (a, (t, v))):
            pair = _side(p1, p2, fused_by_model=fused_by_model)
            directions += [(_side(single), pair), (pair, _side(single))]
    return directions


ALL_DIRECTIONS: Dict[str, Tuple[Side, Side]] = {
    f"{query.label}2{gallery.label}": (query, gallery) for query, gallery in _all_directions()
}


def table_directions(table: Optional[ModalityTable] = None) -> Dict[str, Tuple[Side, Side]]:
    """:data:`ALL_DIRECTIONS` (docs/evaluation.md, over text, video, audio), then, for every further row of the
    modality table (``table``, e.g. ``model.modality_table``; default the built-in rows), single →
    single directions between it and each other modality (``t2f f2t``)."""
    table = MODALITY_SPECS if table is None else table
    directions = dict(ALL_DIRECTIONS)
    for extra in (m for m in table if m not in MODALITIES):
        for other in (m for m in table if m != extra):
            for query, gallery in ((other, extra), (extra, other)):
                pair = (_side(query, table=table), _side(gallery, table=table))
                directions.setdefault(f"{pair[0].label}2{pair[1].label}", pair)
    return directions


def _parse_name(name: str, table: Optional[ModalityTable] = None) -> Side:
    table = MODALITY_SPECS if table is None else table
    if name in table:
        return _side(name, table=table)
    parts = name.split("_")
    if len(parts) == 2 and all(p in table for p in parts) and parts[0] != parts[1]:
        return _side(*parts, fused_by_model=True, table=table)
    raise ValueError(
        f"embeddings: unknown embedding name {name!r}; expected one of {', '.join(table)} "
        "or a model-fused pair such as 'video_audio'"
    )


def _normalize_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


class _DirectionProblems:
    """Validated inputs plus the embedding and validity mask of every buildable side."""

    def __init__(
        self,
        embeddings: Mapping[str, ArrayLike],
        nonempty: Optional[Mapping[str, ArrayLike]],
        groups: Optional[ArrayLike],
        table: Optional[ModalityTable] = None,
    ) -> None:
        if not embeddings:
            raise ValueError("embeddings: empty dict")
        self.normalized: Dict[Side, torch.Tensor] = {}
        num_items: Optional[int] = None
        device = None
        for name, value in embeddings.items():
            side = _parse_name(name, table)
            tensor = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
            if tensor.ndim != 2:
                raise ValueError(f"embeddings[{name!r}]: expected (N, E), got shape {tuple(tensor.shape)}")
            if num_items is None:
                num_items, device = tensor.shape[0], tensor.device
            elif tensor.shape[0] != num_items:
                raise ValueError(
                    f"embeddings[{name!r}]: {tensor.shape[0]} rows, but other embeddings have {num_items}"
                )
            self.normalized[side] = _normalize_rows(tensor.to(device=device, dtype=torch.float32))
        assert num_items is not None
        self.num_items = num_items
        if num_items == 0:
            raise ValueError("embeddings: no items")

        self.nonempty: Dict[str, np.ndarray] = {}
        for key, mask in (nonempty or {}).items():
            array = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
            if array.shape != (num_items,) or array.dtype != np.bool_:
                raise ValueError(
                    f"nonempty[{key!r}]: expected a bool array of shape ({num_items},), "
                    f"got {array.dtype} {array.shape}"
                )
            self.nonempty[key] = array

        self.groups: Optional[np.ndarray] = None
        if groups is not None:
            group_array = np.asarray(groups.cpu() if isinstance(groups, torch.Tensor) else groups)
            if group_array.shape != (num_items,) or not np.issubdtype(group_array.dtype, np.integer):
                raise ValueError(
                    f"groups: expected integer group ids of shape ({num_items},), "
                    f"got {group_array.dtype} {group_array.shape}"
                )
            self.groups = group_array

    def embedding(self, side: Side) -> Optional[torch.Tensor]:
        """(N, E) L2-normalised embedding of a side, or None when the inputs cannot build it."""
        if side in self.normalized:
            return self.normalized[side]
        if side.fused_by_model or len(side.modalities) == 1:
            return None
        parts = [self.normalized.get(Side((m,))) for m in side.modalities]  # sides compare by modalities
        if any(p is None for p in parts):
            return None
        # late fusion (n(x) + n(y)) / 2, re-normalised (cosine ignores the scale anyway)
        fused = _normalize_rows(sum(parts) / len(parts))  # type: ignore[arg-type]
        self.normalized[side] = fused
        return fused

    def valid(self, side: Side) -> np.ndarray:
        """(N,) bool: the item has every modality of the side."""
        valid = np.ones(self.num_items, dtype=bool)
        fused_name = "_".join(side.modalities)
        if side.fused_by_model and fused_name in self.nonempty:
            return valid & self.nonempty[fused_name]
        for modality in side.modalities:
            if modality in self.nonempty:
                valid &= self.nonempty[modality]
        return valid


def available_directions(embedding_names: Sequence[str], table: Optional[ModalityTable] = None) -> List[str]:
    """Labels of the directions that embeddings with these names allow, in report order (``table``:
    the modality table the names come from, default the built-in rows)."""
    sides = {_parse_name(name, table) for name in embedding_names}
    singles = {s.modalities[0] for s in sides if len(s.modalities) == 1}
    result = []
    for label, (query, gallery) in table_directions(table).items():
        buildable = True
        for side in (query, gallery):
            if side.fused_by_model or len(side.modalities) == 1:
                buildable &= side in sides
            else:
                buildable &= all(m in singles for m in side.modalities)
        if buildable:
            result.append(label)
    return result


def direction_ranks(
    embeddings: Mapping[str, ArrayLike],
    nonempty: Optional[Mapping[str, ArrayLike]] = None,
    groups: Optional[ArrayLike] = None,
    directions: Optional[Sequence[str]] = None,
    table: Optional[ModalityTable] = None,
) -> Dict[str, np.ndarray]:
    """0-based tie-averaged rank of the true item for every query of every direction.

    Args: as :func:`evaluate_directions`.

    Returns:
        dict direction label -> (Q_direction,) float64 ranks (directions without queries omitted).
    """
    problems = _DirectionProblems(embeddings, nonempty, groups, table)
    possible = available_directions(list(embeddings), table)
    known = table_directions(table)
    if directions is None:
        wanted = possible
    else:
        unknown = [d for d in directions if d not in known]
        if unknown:
            raise ValueError(f"directions: unknown {unknown}; known: {', '.join(known)}")
        missing = [d for d in directions if d not in possible]
        if missing:
            raise ValueError(
                f"directions: {missing} need embeddings that are not given (have {sorted(embeddings)})"
            )
        wanted = list(directions)

    ranks: Dict[str, np.ndarray] = {}
    for label in wanted:
        query_side, gallery_side = known[label]
        query_embedding = problems.embedding(query_side)
        gallery_embedding = problems.embedding(gallery_side)
        assert query_embedding is not None and gallery_embedding is not None
        gallery_valid = problems.valid(gallery_side)
        query_valid = problems.valid(query_side) & gallery_valid
        if not query_valid.any():
            continue
        if query_valid.all() and problems.groups is None:
            # every item on both sides: the plain diagonal ground truth
            sims = query_embedding @ gallery_embedding.T
            ranks[label] = retrieval_ranks(sims)
            continue
        query_items = np.flatnonzero(query_valid)
        gallery_items = np.flatnonzero(gallery_valid)
        device = query_embedding.device
        sims = query_embedding[torch.as_tensor(query_items, device=device)] @ gallery_embedding[
            torch.as_tensor(gallery_items, device=device)
        ].T
        if problems.groups is None:
            positives = query_items[:, None] == gallery_items[None, :]
        else:
            positives = problems.groups[query_items][:, None] == problems.groups[gallery_items][None, :]
        ranks[label] = retrieval_ranks(sims, positives=torch.as_tensor(positives, device=device))
    return ranks


def evaluate_directions(
    embeddings: Mapping[str, ArrayLike],
    nonempty: Optional[Mapping[str, ArrayLike]] = None,
    groups: Optional[ArrayLike] = None,
    complete_size: Optional[int] = None,
    directions: Optional[Sequence[str]] = None,
    table: Optional[ModalityTable] = None,
) -> Dict[str, Dict[str, float]]:
    """Retrieval metrics (docs/evaluation.md) for every direction the embeddings allow.

    Args:
        embeddings: name -> (N, E) torch or numpy; row i of every matrix is item i. Names:
            ``text``, ``video``, ``audio`` and model-fused pairs such as ``video_audio``.
        nonempty: modality (or fused name) -> (N,) bool; items lacking a modality are excluded from
            the side that needs it (see the module docstring). None: every item has everything.
        groups: (N,) ints; items of one group are all correct answers for each other.
        complete_size: divide R@k by this complete dataset size (missing items count as misses).
        directions: restrict to these labels (default: all that the embeddings allow).
        table: the modality table the embedding names and letters come from (``model.modality_table``
            of a model with configured rows such as ``flow``); default the built-in rows.

    Returns:
        dict direction label (``"t2v"``, ``"t2v+a"``, ``"t2va"``, ...) -> metrics dict of
        :func:`multisk.metrics.retrieval_metrics`.
    """
    ranks = direction_ranks(embeddings, nonempty=nonempty, groups=groups, directions=directions, table=table)
    return {label: metrics_from_ranks(r, complete_size) for label, r in ranks.items()}


__all__ = ["ALL_DIRECTIONS", "Side", "available_directions", "direction_ranks", "evaluate_directions", "table_directions"]
