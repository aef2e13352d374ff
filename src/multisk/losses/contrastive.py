"""Contrastive losses on cosine-similarity matrices (docs/losses.md), single-process and global-batch (DDP).

* :class:`NormSoftmax` — symmetric InfoNCE with temperature τ (EAO's "NormSoftmax", τ = 0.05):

      L = -(1/N) Σ_i log softmax_j(S_ij / τ)[i]  -  (1/N) Σ_j log softmax_i(S_ij / τ)[j]

  (the two directions are *summed*, as in the reference, not averaged).
* :class:`MaxMarginSoftmax` (MMS, Ilharco et al. 2019, used by AVLnet / EAO) — the same symmetric
  cross-entropy on the raw similarities (no temperature) with a margin δ (0.001) subtracted from the
  positives:  S' = S - δ·I,  L = CE_rows(S') + CE_cols(S').
* :class:`CombinatorialContrastiveLoss` — weighted mean of one of the above over configured pairs of
  joint embeddings ("text-video", "video_audio-text", ...), rows whose modalities are empty excluded.

Both losses are written as per-row cross-entropies of *query rows* against *key columns* with a given
positive column (:meth:`ContrastiveCriterion.row_losses`). In one process the queries are all rows; under
DDP each rank takes its local rows as queries against the gathered global keys (negatives = the global
batch), which is exactly the single-process loss split into per-rank shares (see ``distributed.py``).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from multisk.config import (
    CONTRASTIVE_KINDS, ConfigError, ContrastiveConfig, check_registry, validate_contrastive_config,
)
from multisk.losses.collectives import (
    ProcessGroup,
    all_gather_no_grad,
    all_gather_with_grad,
    local_row_offset,
    world_size,
)
from multisk.modalities import MODALITY_SPECS
from multisk.precision import autocast_disabled


class GlobalKeys(NamedTuple):
    """The global batch as the contrastive loss sees it (rank-major rows, N = W·b).

    ``joint``: joint-embedding name -> (N, E) normalised embeddings, with gradient to the local rows;
    ``nonempty``: modality -> (N,) bool.  In one process both are the local tensors.
    """

    joint: Dict[str, torch.Tensor]
    nonempty: Dict[str, torch.Tensor]


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Promote half / bfloat16 to float32 (loss arithmetic under autocast); float32/64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _masked_row_cross_entropy(
    logits: torch.Tensor, positive_index: torch.Tensor, key_valid: Optional[torch.Tensor]
) -> torch.Tensor:
    """Per-row cross-entropy ``logsumexp_{j valid} logits[i, j] - logits[i, pos_i]``.

    logits: (b, N) float; positive_index: (b,) int64 in [0, N); key_valid: (N,) bool or None (all
    valid). The positive column of every row always stays in the softmax, so each row is finite even
    when the row itself is to be discarded by the caller (no NaN leaks into gradients). Returns (b,).
    """
    positive_logit = logits.gather(1, positive_index[:, None]).squeeze(1)
    if key_valid is not None:
        column = torch.arange(logits.shape[1], device=logits.device)
        allowed = key_valid[None, :] | (column[None, :] == positive_index[:, None])
        logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.logsumexp(logits, dim=1) - positive_logit


class ContrastiveCriterion(nn.Module):
    """Symmetric cross-entropy on a similarity matrix whose diagonal holds the positive pairs.

    Subclasses define :meth:`logits`, the map from similarities (b, N) of query rows against keys
    (positives at ``positive_index``) to softmax logits.
    """

    def logits(self, similarity: torch.Tensor, positive_index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def row_losses(
        self,
        similarity: torch.Tensor,
        positive_index: torch.Tensor,
        key_valid: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """One direction, per query row: (b, N) similarities, (b,) positive columns -> (b,) losses."""
        logits = self.logits(at_least_float32(similarity), positive_index)
        return _masked_row_cross_entropy(logits, positive_index, key_valid)

    def forward(self, similarity: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Symmetric loss of a square similarity matrix.

        similarity: (N, N), S[i, j] = cos(a_i, b_j), positives on the diagonal. valid: (N,) bool,
        rows/columns to keep (default all) — equivalent to dropping the invalid rows and columns.
        Returns the 0-dim sum of the mean row-direction and mean column-direction losses (0 when no
        row is valid).
        """
        n = similarity.shape[0]
        if similarity.dim() != 2 or similarity.shape[1] != n:
            raise ValueError(f"similarity must be square (N, N), got {tuple(similarity.shape)}")
        positives = torch.arange(n, device=similarity.device)
        per_row = self.row_losses(similarity, positives, valid) + self.row_losses(similarity.t(), positives, valid)
        if valid is None:
            return per_row.mean()
        kept = torch.where(valid, per_row, torch.zeros_like(per_row))
        return kept.sum() / valid.sum().clamp(min=1)


class NormSoftmax(ContrastiveCriterion):
    """Symmetric InfoNCE, logits = S / τ (docs/losses.md; EAO's NormSoftmaxLoss, τ = 0.05)."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"loss.contrastive.temperature: must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def logits(self, similarity: torch.Tensor, positive_index: torch.Tensor) -> torch.Tensor:
        return similarity / self.temperature


class MaxMarginSoftmax(ContrastiveCriterion):
    """MMS: logits = S - δ·[j is the positive of row i] (no temperature; δ = 0.001)."""

    def __init__(self, margin: float = 0.001):
        super().__init__()
        if margin < 0:
            raise ConfigError(f"loss.contrastive.margin: must be >= 0, got {margin}")
        self.margin = float(margin)

    def logits(self, similarity: torch.Tensor, positive_index: torch.Tensor) -> torch.Tensor:
        margin = torch.zeros_like(similarity).scatter_(1, positive_index[:, None], self.margin)
        return similarity - margin


MMS = MaxMarginSoftmax


# loss.contrastive.kind -> the criterion built from the config
CRITERIA = {
    "norm_softmax": lambda cfg: NormSoftmax(cfg.temperature),
    "mms": lambda cfg: MaxMarginSoftmax(cfg.margin),
}
check_registry("loss.contrastive.kind", CRITERIA, CONTRASTIVE_KINDS)


def build_criterion(cfg: ContrastiveConfig) -> ContrastiveCriterion:
    """The criterion named by ``cfg.kind`` (a key of :data:`CRITERIA`)."""
    validate_contrastive_config(cfg)
    return CRITERIA[cfg.kind](cfg)


def embedding_modalities(name: str) -> Tuple[str, ...]:
    """Modalities a joint embedding is made of: "video_audio" -> ("video", "audio")."""
    return tuple(name.split("_"))


def parse_pairs(pair_weights: Mapping[str, float], available: Iterable[str]) -> List[Tuple[str, str, str, float]]:
    """Validate ``loss.contrastive.pair_weights`` -> [(pair name, embedding a, embedding b, weight)].

    Pairs with weight 0 are switched off (dropped). A pair with a nonzero weight whose embeddings the
    model does not produce, a malformed name, or a negative weight raises :class:`ConfigError`.
    """
    available = set(available)
    # the built-in modalities and those of the embeddings the model produces (a row of
    # model.modality_specs the model reads): anything else in a pair name is a typo
    known = list(MODALITY_SPECS) + sorted({m for name in available for m in embedding_modalities(name)} - set(MODALITY_SPECS))
    pairs = []
    for pair, weight in pair_weights.items():
        where = f"loss.contrastive.pair_weights[{pair!r}]"
        sides = pair.split("-")
        if len(sides) != 2 or not all(sides):
            raise ConfigError(f"{where}: expected 'a-b' with two joint-embedding names (e.g. 'text-video')")
        for side in sides:
            unknown = [m for m in embedding_modalities(side) if m not in known]
            if unknown:
                raise ConfigError(f"{where}: unknown modality {unknown[0]!r} in {side!r} (known: {', '.join(known)})")
        if weight < 0:
            raise ConfigError(f"{where}: weight must be >= 0, got {weight}")
        if weight == 0:
            continue
        missing = [side for side in sides if side not in available]
        if missing:
            raise ConfigError(
                f"{where}: the model does not produce the joint embedding {missing[0]!r} "
                f"(available: {', '.join(sorted(available)) or 'none'})"
            )
        pairs.append((pair, sides[0], sides[1], float(weight)))
    if not pairs:
        raise ConfigError("loss.contrastive.pair_weights: no pair with a nonzero weight")
    return pairs


class CombinatorialContrastiveLoss(nn.Module):
    """Weighted mean of a contrastive criterion over pairs of joint embeddings (docs/losses.md).

        L = Σ_p w_p L_p / Σ_p w_p,   L_p = criterion(cos(a_p, b_p)) over the rows where every modality
                                           of both sides is nonempty (rows and columns dropped).

    Under DDP (``process_group`` or the default group initialised) the keys are the global batch:
    embeddings are gathered with gradient, each rank's local rows are the queries, and the returned
    value is ``W · (local share)`` so that DDP's gradient average reproduces the single-process
    gradient on the concatenated batch (docs/losses.md). All of this is masking; nothing synchronises
    with the host.

    Args:
        cfg: ContrastiveConfig (kind, temperature, margin, pair_weights).
        available: names of the joint embeddings the model produces (keys of ``output["joint"]``).
    """

    def __init__(self, cfg: ContrastiveConfig, available: Iterable[str], process_group: ProcessGroup = None):
        super().__init__()
        self.criterion = build_criterion(cfg)
        self.pairs = parse_pairs(cfg.pair_weights, available)
        self.embedding_names = sorted({name for _, a, b, _ in self.pairs for name in (a, b)})
        self.weight_sum = sum(w for *_, w in self.pairs)
        self.process_group = process_group

    def gather_keys(self, output: Mapping) -> GlobalKeys:
        """The keys of the global batch: this loss's joint embeddings and the nonempty flags of their
        modalities, gathered from every rank in one collective each (the embeddings with gradient).
        In one process they are the local tensors. :class:`TrainingObjective` hands them to SSPC too,
        so the joint embeddings cross the network once per step."""
        normalized = output["joint_normalized"]
        local = {name: normalized[name] for name in self.embedding_names}
        device = local[self.embedding_names[0]].device
        modalities = sorted({m for name in self.embedding_names for m in embedding_modalities(name)})
        nonempty_local = torch.stack([output["nonempty"][m].to(device=device, dtype=torch.bool) for m in modalities], 1)
        if world_size(self.process_group) == 1:
            return GlobalKeys(local, dict(zip(modalities, nonempty_local.unbind(1))))
        # One collective for all embeddings (forward all_gather, backward reduce-scatter).
        widths = [local[name].shape[1] for name in self.embedding_names]
        concatenated = torch.cat([local[name] for name in self.embedding_names], 1)
        packed = all_gather_with_grad(concatenated, self.process_group)
        nonempty_global = all_gather_no_grad(nonempty_local.to(torch.uint8), self.process_group).bool()
        return GlobalKeys(dict(zip(self.embedding_names, packed.split(widths, dim=1))),
                          dict(zip(modalities, nonempty_global.unbind(1))))

    def forward(self, output: Mapping, keys: Optional[GlobalKeys] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """output: the model output dict (uses ``joint_normalized`` (b, E) and ``nonempty`` (b,) bool);
        keys: :meth:`gather_keys` of this output when the caller already gathered them.

        Returns (loss, per_pair) where loss is 0-dim with gradient and per_pair maps pair name -> the
        detached 0-dim loss of that pair (under DDP: this rank's share × W; mean over ranks = global).
        The similarity matrices and everything after them are float32 with autocast off (as in the reference: the
        reference computes its losses outside autocast).
        """
        if keys is None:
            keys = self.gather_keys(output)
        normalized = output["joint_normalized"]
        local = {name: at_least_float32(normalized[name]) for name in self.embedding_names}
        first = local[self.embedding_names[0]]
        b, device = first.shape[0], first.device
        world = world_size(self.process_group)
        offset = local_row_offset(b, self.process_group)
        positives = torch.arange(offset, offset + b, device=device)

        with autocast_disabled(device):
            total = first.new_zeros(())
            per_pair: Dict[str, torch.Tensor] = {}
            for pair, name_a, name_b, weight in self.pairs:
                parts = embedding_modalities(name_a) + embedding_modalities(name_b)
                valid_global = torch.stack([keys.nonempty[m] for m in parts], 1).all(dim=1)  # (N,)
                valid_local = valid_global.narrow(0, offset, b)  # (b,)
                a_to_b = local[name_a] @ at_least_float32(keys.joint[name_b]).t()  # (b, N): local a rows vs global b
                b_to_a = a_to_b.t() if world == 1 else local[name_b] @ at_least_float32(keys.joint[name_a]).t()
                rows = self.criterion.row_losses(a_to_b, positives, valid_global) + self.criterion.row_losses(
                    b_to_a, positives, valid_global
                )
                rows = torch.where(valid_local, rows, torch.zeros_like(rows))
                pair_loss = rows.sum() * world / valid_global.sum().clamp(min=1)
                per_pair[pair] = pair_loss.detach()
                total = total + weight * pair_loss
            return total / self.weight_sum, per_pair


__all__ = [
    "CRITERIA",
    "CombinatorialContrastiveLoss",
    "ContrastiveCriterion",
    "GlobalKeys",
    "MMS",
    "MaxMarginSoftmax",
    "NormSoftmax",
    "build_criterion",
    "embedding_modalities",
    "parse_pairs",
]
