"""Semantic-structure-preserving consistency (SSPC) loss — docs/losses.md, docs/sinkhorn.md (Swetha et al., ICCV 2023).

Notation: modalities M (text, video, audio), anchor sets Z_m (input space, K × D) and Ẑ_m (joint space,
K × E), input embeddings x_m (B × D, unit rows), normalised joint embeddings x̂_n (B × E). Scores are
cosine similarities to the row-normalised anchors:

    input-space  s_m      = x_m  · n(Z_m)ᵀ          (one matrix per m:        |M| of them)
    joint-space  ŝ_{m,n}  = x̂_n · n(Ẑ_m)ᵀ          (one per anchor m, joint n: |M|² of them)

Targets (no gradient) come from Multi-SK (or classic SK) over the rows [queue; global batch] of each
score matrix, keeping the batch rows: q_m = MSK([s_m(queue); s_m(batch)])[batch], likewise q̂_{m,n}.
For every anchor modality m and joint modality n there are two swapped-prediction terms:

    (i)  "input:m<-joint:n"   predict s_m       from q̂_{m,n}
    (ii) "joint:n<-input:m"   predict ŝ_{m,n}   from q_m

with weight w = min(modality_weights[m], modality_weights[n]); 2·|M|² = 18 terms for three modalities.
Per-term cost on scores s (B × K) and target q (B × K), averaged over the rows where modalities m and n
are both nonempty:

    reference:  mean_k BCEWithLogits(logit = exp(s_k / τ), label = q_k)      (the authors' code)
    soft_ce:    -Σ_k (q_k / Σ_j q_j) · log softmax(s / τ)_k

    SSPC = gate · Σ_terms w_t · cost_t,

where gate ∈ {0, 1} is 0 while warm-up ``queue_full`` is on and the queues have not yet held
``queue_size`` real rows (state before this step's enqueue), without any host synchronisation.

All 3 + 9 target problems share N = queue + global batch rows and K, so they are solved in ONE batched
solver call on a (12, N, K) stack. The queues (6: input and joint space per modality) are updated after
the targets are computed, with the global batch, so they are identical on every rank.

Distributed (DDP): the batch scores, input embeddings and nonempty flags of all ranks are gathered once,
without gradient (the joint embeddings and flags the contrastive loss has gathered already are reused,
and embeddings travel only when there are queues to fill); targets are computed on [queue; global batch] exactly as a single process on the concatenated
batch would, and this rank's rows are sliced out. The predicted scores are local and need no gather;
each term is returned as W · (Σ_local valid rows cost) / (global valid rows), so DDP's gradient average
equals the single-process gradient (see docs/losses.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from multisk import sinkhorn as sinkhorn_solvers
from multisk.config import (
    SSPC_COSTS, SSPC_SOLVERS, ConfigError, SSPCConfig, check_registry, validate_sspc_config,
)
from multisk.losses.contrastive import GlobalKeys, at_least_float32
from multisk.losses.collectives import ProcessGroup, all_gather_no_grad, local_row_offset, world_size
from multisk.losses.queue import EmbeddingQueue
from multisk.modalities import MODALITY_SPECS, ModalityTable
from multisk.precision import exact_float32

INPUT_FROM_JOINT = "input<-joint"  # (i): predict input-space scores s_m from the joint-space target q̂_{m,n}
JOINT_FROM_INPUT = "joint<-input"  # (ii): predict joint-space scores ŝ_{m,n} from the input-space target q_m


@dataclass(frozen=True)
class SSPCTerm:
    """One row of the SSPC term table."""

    anchor_modality: str  # m: the anchor set (Z_m in input space, Ẑ_m in joint space)
    joint_modality: str  # n: the joint embedding x̂_n scored on Ẑ_m
    direction: str  # INPUT_FROM_JOINT | JOINT_FROM_INPUT
    weight: float

    @property
    def name(self) -> str:
        m, n = self.anchor_modality, self.joint_modality
        return f"input:{m}<-joint:{n}" if self.direction == INPUT_FROM_JOINT else f"joint:{n}<-input:{m}"


def build_term_table(modalities: Sequence[str], modality_weights: Mapping[str, float]) -> List[SSPCTerm]:
    """All 2·|M|² terms, weight = min(modality_weights[m], modality_weights[n]) (docs/losses.md)."""
    for m in modalities:
        if m not in modality_weights:
            raise ConfigError(f"loss.sspc.modality_weights: no weight for modality {m!r}")
        if modality_weights[m] < 0:
            raise ConfigError(f"loss.sspc.modality_weights[{m!r}]: must be >= 0, got {modality_weights[m]}")
    return [
        SSPCTerm(m, n, direction, float(min(modality_weights[m], modality_weights[n])))
        for m in modalities
        for n in modalities
        for direction in (INPUT_FROM_JOINT, JOINT_FROM_INPUT)
    ]


def reference_cost(scores: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row mean over K of BCE-with-logits(exp(s/τ), q): (..., K), (..., K) -> (...).

    Reproduces the authors' cost; exp(.) > 0 means the implied probability is always > 1/2.
    """
    logits = torch.exp(scores / temperature)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)


def soft_cross_entropy_cost(scores: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row -Σ_k (q_k/Σ_j q_j) log softmax(s/τ)_k: (..., K), (..., K) -> (...)."""
    distribution = target / target.sum(-1, keepdim=True).clamp_min(torch.finfo(target.dtype).tiny)
    return -(distribution * F.log_softmax(scores / temperature, dim=-1)).sum(-1)


COSTS = {"reference": reference_cost, "soft_ce": soft_cross_entropy_cost}  # loss.sspc.cost
check_registry("loss.sspc.cost", COSTS, SSPC_COSTS)


def _multi_assignment_targets(scores: torch.Tensor, n_assign: int, cfg: SSPCConfig) -> torch.Tensor:
    return sinkhorn_solvers.multi_sinkhorn(scores, n_assign, eps=cfg.epsilon, n_iters=cfg.n_iters,
                                           low_scale=cfg.low_scale, check_finite=False)


def _classic_targets(scores: torch.Tensor, n_assign: int, cfg: SSPCConfig) -> torch.Tensor:
    return sinkhorn_solvers.sinkhorn(scores, eps=cfg.epsilon, n_iters=cfg.n_iters, check_finite=False)


# loss.sspc.solver: (P, N, K) scores, r, config -> (P, N, K) float32 targets. No finiteness check inside
# the solvers: it would cost a host sync every step; NaN scores give NaN targets and so a NaN loss,
# which the training loop reports.
SOLVERS = {"multi": _multi_assignment_targets, "classic": _classic_targets}
check_registry("loss.sspc.solver", SOLVERS, SSPC_SOLVERS)


class StructurePreservingLoss(nn.Module):
    """SSPC over ``modalities`` (module docstring for the equations).

    Args:
        cfg: SSPCConfig (solver, assign_fraction, epsilon, n_iters, low_scale, queue_size, cost,
            temperature, warmup, modality_weights).
        modalities: the model's modalities, e.g. ["text", "video", "audio"].
        input_dim: D, width of ``output["input_embedding"][m]``; or ``{m: D_m}`` when the widths differ
            (``model.input_space: frozen``; :func:`multisk.modalities.input_space_dims`).
        joint_dim: E, width of ``output["joint_normalized"][n]``.
        num_anchors: K of every anchor set.
        process_group: DDP group (None: the default group when initialised, else a single process).
        table: the run's modality table (``multisk.modalities.modality_table(model_cfg)``); every
            modality must have a row. None: the built-in rows plus the modalities given a weight in
            ``cfg.modality_weights`` (how a row of ``model.modality_specs`` reaches a loss built without
            the table; the model has already checked it against the table).

    Buffers: ``input_queues.<m>.*`` and ``joint_queues.<n>.*`` (:class:`EmbeddingQueue`, float32).
    """

    def __init__(
        self,
        cfg: SSPCConfig,
        modalities: Sequence[str],
        input_dim: Union[int, Mapping[str, int]],
        joint_dim: int,
        num_anchors: int,
        process_group: ProcessGroup = None,
        table: Optional[ModalityTable] = None,
    ):
        super().__init__()
        modalities = list(modalities)
        if not modalities:
            raise ConfigError("model.modalities: SSPC needs at least one modality")
        known = list(MODALITY_SPECS if table is None else table)
        if table is None:
            known += [m for m in cfg.modality_weights if m not in known]
        unknown = [m for m in modalities if m not in known]
        if unknown:  # ConfigError naming the field for a modality outside the table
            raise ConfigError(f"model.modalities: unknown modality {unknown[0]!r} (known: {', '.join(known)}; a new "
                              "modality is an entry of model.modality_specs with a weight in loss.sspc.modality_weights)")
        validate_sspc_config(cfg)
        if num_anchors < 1:
            raise ConfigError(f"model.num_anchors: must be >= 1, got {num_anchors}")

        self.cfg = cfg
        self.modalities = modalities
        self.num_anchors = int(num_anchors)
        self.n_assign = max(1, int(round(cfg.assign_fraction * num_anchors)))
        self.process_group = process_group
        self.terms = build_term_table(modalities, cfg.modality_weights)
        self.cost = COSTS[cfg.cost]

        # Problem stack layout: [input m for m in M] + [joint (m, n) for m in M for n in M].
        index = {m: i for i, m in enumerate(modalities)}
        count = len(modalities)
        self._input_problem = {m: index[m] for m in modalities}
        self._joint_problem = {(m, n): count + index[m] * count + index[n] for m in modalities for n in modalities}
        predicted, target = [], []
        for term in self.terms:
            input_p = self._input_problem[term.anchor_modality]
            joint_p = self._joint_problem[(term.anchor_modality, term.joint_modality)]
            predicted.append(input_p if term.direction == INPUT_FROM_JOINT else joint_p)
            target.append(joint_p if term.direction == INPUT_FROM_JOINT else input_p)
        self.register_buffer("_predicted_problem", torch.tensor(predicted, dtype=torch.int64), persistent=False)
        self.register_buffer("_target_problem", torch.tensor(target, dtype=torch.int64), persistent=False)
        self.register_buffer(
            "_term_modalities",
            torch.tensor([[index[t.anchor_modality], index[t.joint_modality]] for t in self.terms], dtype=torch.int64),
            persistent=False,
        )
        self.register_buffer("_term_weights", torch.tensor([t.weight for t in self.terms]), persistent=False)

        self.input_queues = nn.ModuleDict()
        self.joint_queues = nn.ModuleDict()
        if cfg.queue_size > 0:
            for m in modalities:
                width = input_dim[m] if isinstance(input_dim, Mapping) else input_dim
                self.input_queues[m] = EmbeddingQueue(cfg.queue_size, int(width))
                self.joint_queues[m] = EmbeddingQueue(cfg.queue_size, joint_dim)
        self.input_dim = dict(input_dim) if isinstance(input_dim, Mapping) else int(input_dim)
        self.joint_dim = int(joint_dim)

    @property
    def term_names(self) -> List[str]:
        return [t.name for t in self.terms]

    @property
    def num_problems(self) -> int:
        return len(self.modalities) + len(self.modalities) ** 2

    def _solve(self, scores: torch.Tensor) -> torch.Tensor:
        """(P, N, K) scores -> (P, N, K) float32 targets in one batched solver call."""
        return SOLVERS[self.cfg.solver](scores, self.n_assign, self.cfg)

    def warmup_gate(self) -> torch.Tensor:
        """0-dim float32: 1 when SSPC is active (queues filled once, or warm-up off), else 0."""
        device = self._term_weights.device
        if self.cfg.warmup == "none" or len(self.input_queues) == 0:
            return torch.ones((), device=device)
        full = [q.is_full for q in self.input_queues.values()] + [q.is_full for q in self.joint_queues.values()]
        return torch.stack(full).all().float()

    @torch.no_grad()
    def _queue_scores(self, anchors, input_dtype: torch.dtype, joint_dtype: torch.dtype) -> torch.Tensor:
        """(P, Q, K) scores of the queued rows against the current anchors (rows cast to the dtype of
        the batch embeddings, so the anchor heads see what they see in the model's forward)."""
        mods = self.modalities
        input_scores = [anchors.input_scores(m, self.input_queues[m].rows.to(input_dtype)) for m in mods]
        joint_scores = [anchors.joint_scores(m, self.joint_queues[n].rows.to(joint_dtype)) for m in mods for n in mods]
        return torch.stack([s.float() for s in input_scores + joint_scores])

    def forward(self, output: Mapping, anchors, keys: Optional[GlobalKeys] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Compute SSPC for one step and update the queues.

        output: model output dict — ``input_anchor_scores[m]`` (b, K), ``joint_anchor_scores[m][n]``
            (b, K) (with gradient), ``input_embedding[m]`` (b, D), ``joint_normalized[n]`` (b, E),
            ``nonempty[m]`` (b,) bool.
        anchors: the anchor heads (``input_scores(m, x)``, ``joint_scores(m, x)``) to score queue rows.
        keys: the contrastive loss's gathered global batch (:meth:`CombinatorialContrastiveLoss.gather_keys`),
            whose joint embeddings and nonempty flags are reused instead of being gathered again.

        Returns (loss, terms): loss is 0-dim float32 with gradient (gate · Σ w_t cost_t, ×W under DDP);
        terms maps each term name to its detached, unweighted, ungated cost, plus "active" (the gate).
        Everything from the scores on runs in IEEE float32 (autocast and TF32 off), so the targets and
        costs inside the trainer's autocast equal those outside.
        """
        with exact_float32(output["input_anchor_scores"][self.modalities[0]].device):
            return self._forward(output, anchors, keys)

    def _global_batch(self, batch_scores: torch.Tensor, output: Mapping, keys: Optional[GlobalKeys]):
        """The global batch's scores (P, N, K), input and joint embeddings (N, D) / (N, E) per modality
        (only when there are queues to fill) and nonempty flags (N, |M|) bool, all without gradient.

        Under DDP one all-gather carries what ``keys`` does not already hold: the scores, the input
        embeddings, the joint embeddings and flags of modalities missing from ``keys``.
        """
        mods = self.modalities
        problems, b, k = batch_scores.shape
        device = batch_scores.device
        with_queues = len(self.input_queues) > 0
        keys_joint = {} if keys is None else keys.joint
        keys_nonempty = {} if keys is None else keys.nonempty
        # (name, local rows (b, width)) of everything that must travel; reused pieces are looked up later
        pieces: List[Tuple[str, torch.Tensor]] = [("scores", batch_scores.permute(1, 0, 2).reshape(b, problems * k))]
        if with_queues:
            pieces += [(f"input:{m}", output["input_embedding"][m].detach().float()) for m in mods]
            pieces += [(f"joint:{n}", output["joint_normalized"][n].detach().float()) for n in mods
                       if n not in keys_joint]
        pieces += [(f"nonempty:{m}", output["nonempty"][m].to(device=device, dtype=torch.float32).unsqueeze(1))
                   for m in mods if m not in keys_nonempty]
        names = [name for name, _ in pieces]
        if world_size(self.process_group) > 1:
            packed = all_gather_no_grad(torch.cat([rows for _, rows in pieces], dim=1), self.process_group)
            gathered = dict(zip(names, packed.split([rows.shape[1] for _, rows in pieces], dim=1)))
        else:
            gathered = dict(pieces)
        total_rows = gathered["scores"].shape[0]
        scores = gathered["scores"].reshape(total_rows, problems, k).permute(1, 0, 2)
        input_embeddings = [gathered[f"input:{m}"] for m in mods] if with_queues else []
        joint_embeddings = [gathered[f"joint:{n}"] if f"joint:{n}" in gathered else keys_joint[n].detach().float()
                            for n in mods] if with_queues else []
        nonempty = torch.stack([gathered[f"nonempty:{m}"].squeeze(1) > 0.5 if f"nonempty:{m}" in gathered
                                else keys_nonempty[m].to(device=device, dtype=torch.bool) for m in mods], 1)
        return scores, input_embeddings, joint_embeddings, nonempty

    def _forward(self, output: Mapping, anchors, keys: Optional[GlobalKeys]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        mods = self.modalities
        predicted_scores = torch.stack(
            [output["input_anchor_scores"][m] for m in mods]
            + [output["joint_anchor_scores"][m][n] for m in mods for n in mods]
        )  # (P, b, K), with gradient
        predicted_scores = at_least_float32(predicted_scores)
        problems, b, k = predicted_scores.shape
        if k != self.num_anchors:
            raise ValueError(f"anchor scores have K={k}, StructurePreservingLoss was built for K={self.num_anchors}")
        world = world_size(self.process_group)
        offset = local_row_offset(b, self.process_group)

        with torch.no_grad():
            batch_scores, input_embeddings, joint_embeddings, nonempty_global = self._global_batch(
                predicted_scores.detach().float(), output, keys)
            if len(self.input_queues):
                # First step: fill the queues with repetitions of the global batch before scoring them.
                for m, rows in zip(mods, input_embeddings):
                    self.input_queues[m].prime(rows)
                for n, rows in zip(mods, joint_embeddings):
                    self.joint_queues[n].prime(rows)
                all_scores = torch.cat([self._queue_scores(
                    anchors, output["input_embedding"][mods[0]].dtype, output["joint_normalized"][mods[0]].dtype
                ), batch_scores], dim=1)  # (P, Q + N, K)
                queue_rows = self.cfg.queue_size
            else:
                all_scores, queue_rows = batch_scores, 0
            targets = self._solve(all_scores).narrow(1, queue_rows + offset, b).float()  # (P, b, K)
            gate = self.warmup_gate()
            for m, rows in zip(mods, input_embeddings):
                self.input_queues[m].enqueue(rows)
            for n, rows in zip(mods, joint_embeddings):
                self.joint_queues[n].enqueue(rows)

            # Rows where both modalities of a term are nonempty: (T, N) global, (T, b) local.
            anchor_side = nonempty_global[:, self._term_modalities[:, 0]]
            valid_global = (anchor_side & nonempty_global[:, self._term_modalities[:, 1]]).t()
            valid_local = valid_global.narrow(1, offset, b)
            valid_count = valid_global.sum(1).clamp(min=1)  # (T,)

        per_row = self.cost(
            predicted_scores.index_select(0, self._predicted_problem),
            targets.index_select(0, self._target_problem).to(predicted_scores.dtype),
            self.cfg.temperature,
        )  # (T, b)
        per_row = torch.where(valid_local, per_row, torch.zeros_like(per_row))
        term_costs = per_row.sum(1) * world / valid_count  # (T,)
        loss = gate * (self._term_weights * term_costs).sum()
        detached = term_costs.detach()
        terms = {term.name: detached[i] for i, term in enumerate(self.terms)}
        terms["active"] = gate
        return loss, terms


__all__ = [
    "COSTS",
    "INPUT_FROM_JOINT",
    "JOINT_FROM_INPUT",
    "SOLVERS",
    "SSPCTerm",
    "StructurePreservingLoss",
    "build_term_table",
    "reference_cost",
    "soft_cross_entropy_cost",
]
