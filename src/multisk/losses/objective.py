"""The training objective: contrastive + β · SSPC (docs/losses.md), with per-term logging tensors.

    loss = L_contrastive + β · L_SSPC        (β = loss.sspc.weight; SSPC absent when loss.sspc.enabled
                                               is false)

Keys of the returned dict:

    "loss"                             0-dim, with gradient (what the trainer backpropagates)
    "contrastive", "sspc"              detached 0-dim parts ("sspc" is the weighted, gated value
                                       before β; 0 when SSPC is disabled)
    "contrastive/<pair>"               e.g. "contrastive/text-video"
    "sspc/<term>"                      e.g. "sspc/input:text<-joint:video", "sspc/joint:audio<-input:video"
                                       (unweighted, ungated cost of that term)
    "sspc/active"                      1 once the SSPC warm-up is over, else 0

Every value is a device tensor; nothing here calls ``.item()`` (logging decides when to sync).
Under DDP every value is this rank's share × world size; the mean over ranks is the single-process value
on the concatenated batch, and the gradients DDP averages are the single-process gradients.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Mapping, Optional

import torch
import torch.nn as nn

from multisk.config import LossConfig, ModelConfig, validate_loss_config
from multisk.losses.contrastive import CombinatorialContrastiveLoss
from multisk.losses.collectives import ProcessGroup
from multisk.losses.structure_preserving import StructurePreservingLoss
from multisk.modalities import input_space_dims, modality_table


class TrainingObjective(nn.Module):
    """contrastive + β·SSPC as one module (holds the SSPC queues as buffers: checkpoint it).

    Args:
        loss_cfg: LossConfig.
        model_cfg: ModelConfig (modalities, embed_dim = D, projection_dim = E, num_anchors = K).
        available_embeddings: names of the joint embeddings the model produces.
        process_group: DDP group (None: default group when initialised).
        contrastive_embeddings: maps the model output to the unit-norm embeddings ``{name: (B, E')}`` the
            contrastive loss scores instead of ``output["joint_normalized"]`` (a run's option that scores
            extended embeddings, docs/architecture.md); SSPC always reads ``joint_normalized``. None: the
            paper's objective.
    """

    def __init__(
        self,
        loss_cfg: LossConfig,
        model_cfg: ModelConfig,
        available_embeddings: Iterable[str],
        process_group: ProcessGroup = None,
        contrastive_embeddings: Optional[Callable[[Mapping], Mapping[str, torch.Tensor]]] = None,
    ):
        super().__init__()
        validate_loss_config(loss_cfg)
        self.contrastive_embeddings = contrastive_embeddings
        self.contrastive = CombinatorialContrastiveLoss(loss_cfg.contrastive, available_embeddings, process_group)
        self.sspc_weight = float(loss_cfg.sspc.weight)
        self.sspc = (
            StructurePreservingLoss(
                loss_cfg.sspc,
                model_cfg.modalities,
                input_dim=input_space_dims(model_cfg),
                joint_dim=model_cfg.projection_dim,
                num_anchors=model_cfg.num_anchors,
                process_group=process_group,
                table=modality_table(model_cfg),  # the run's rows, model.modality_specs included
            )
            if loss_cfg.sspc.enabled
            else None
        )

    def forward(self, output: Mapping, anchors=None) -> Dict[str, torch.Tensor]:
        """output: model output dict; anchors: the model's anchor heads (required when SSPC is on)."""
        scored = output
        if self.contrastive_embeddings is not None:
            scored = {**output, "joint_normalized": self.contrastive_embeddings(output)}
        keys = self.contrastive.gather_keys(scored)  # one gather of the joint embeddings, shared
        contrastive, per_pair = self.contrastive(scored, keys)
        result: Dict[str, torch.Tensor] = {}
        if self.sspc is not None:
            if anchors is None:
                raise ValueError("TrainingObjective: SSPC is enabled, pass the model's anchor heads (model.anchors)")
            # SSPC reads the model's joint embeddings; the gathered keys are those only when the
            # contrastive loss scores them too (no contrastive_embeddings transform)
            sspc, terms = self.sspc(output, anchors, keys if scored is output else None)
            loss = contrastive + self.sspc_weight * sspc
            result.update({f"sspc/{name}": value for name, value in terms.items()})
        else:
            sspc = torch.zeros((), device=contrastive.device)
            loss = contrastive
        result["loss"] = loss
        result["contrastive"] = contrastive.detach()
        result["sspc"] = sspc.detach()
        result.update({f"contrastive/{pair}": value for pair, value in per_pair.items()})
        return result


__all__ = ["TrainingObjective"]
