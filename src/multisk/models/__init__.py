"""multisk.models — the Everything-at-Once model family with anchor heads (the paper's Sec. 3, docs/architecture.md).

    from multisk.models import build_model
    model = build_model(cfg.model)
    out = model(batch)          # output dict of docs/architecture.md
"""

from multisk.models.anchors import AnchorHeads, anchor_scores
from multisk.models.davenet import DAVEnet, build_audio_encoder, davenet_v1, davenet_v2
from multisk.models.fusion import FusionOutput, FusionTransformer
from multisk.models.layers import FusionBlock, GatedEmbeddingUnit, MaskedSelfAttention, masked_mean
from multisk.models.multimodal import MODALITY_PAIRS, ModalityTokens, MultiModalModel, build_model, pair_names
from multisk.models.summary import count_parameters, parameter_table

__all__ = [
    "AnchorHeads", "DAVEnet", "FusionBlock", "FusionOutput", "FusionTransformer", "GatedEmbeddingUnit",
    "MODALITY_PAIRS", "MaskedSelfAttention", "ModalityTokens", "MultiModalModel", "anchor_scores",
    "build_audio_encoder", "build_model", "count_parameters", "davenet_v1", "davenet_v2", "masked_mean",
    "pair_names", "parameter_table",
]
