"""The multi-modal model: Everything-at-Once fusion transformer(s) with anchor heads (the paper's Sec. 3, docs/architecture.md).

Pipeline for each modality m present in ``ModelConfig.modalities``::

    features (B, L, d_m)  [audio: DAVEnet(spectrogram (B, n_mels, F)) → (B, ceil(F/stride), d_a)]
      → token projection  GatedEmbeddingUnit(d_m → D) → LayerNorm          (projected tokens)
      → empty sample? put the learned masking token of m at position 0 and mark it valid
      → input embedding  u_m = n(masked_mean(projected tokens))              (B, D)
      → (+ learned positional embedding, optional)
      → fusion transformer (its own per modality, or one shared) → masked mean (or CLS output)
      → projection  GatedEmbeddingUnit(D → E)                                joint embedding x̂_m (B, E)
      (+ W_m · LayerNorm(masked mean of the input features), token inputs, with model.input_residual)

``variant = "everything_at_once"`` shares one transformer and also encodes the concatenated token
sequences of each pair (a, b) of the model's modalities (every pair, in modality-table order): the pair embedding is ``(n(P_a(pool_a)) + n(P_b(pool_b))) / 2`` where
``pool_a``/``pool_b`` are the masked means of a's and b's output tokens in the joint pass (with a CLS
token both are the CLS output). ``variant = "per_modality"`` is the paper's released model
(``TransformerPerModalityModel2``): one transformer per modality, no pairs.

Anchor scores (docs/losses.md): ``input_anchor_scores[m] = u_m · n(Z_m)ᵀ`` and
``joint_anchor_scores[m][n] = n(x̂_n) · n(Ẑ_m)ᵀ`` for every joint embedding n (pairs included).
The output dict is documented in docs/architecture.md ("Model output dict").
"""

from __future__ import annotations

from itertools import combinations
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multisk.config import Config, ConfigError, ModelConfig, validate_model_config
from multisk.errors import DataFormatError
from multisk.models.anchors import AnchorHeads
from multisk.models.davenet import DAVEnet, build_audio_encoder
from multisk.models.fusion import FusionTransformer
from multisk.models.layers import LAYER_NORM_EPS, AutocastLayerNorm, GatedEmbeddingUnit, masked_mean
from multisk.modalities import MODALITIES, feature_dim, input_space_dims, modality_table

# the everything_at_once variant fuses every pair of the model's modalities, in table order (names "a_b");
# over the built-in rows these are:
MODALITY_PAIRS: Tuple[Tuple[str, str], ...] = tuple(combinations(MODALITIES, 2))  # tv, ta, va


class ModalityTokens(NamedTuple):
    """Projected tokens of one modality, ready for the fusion transformer.

    ``tokens`` (B, L, D); ``mask`` (B, L) bool (True = valid; an empty sample has its masking token
    at position 0 marked valid); ``nonempty`` (B,) bool: the sample had at least one valid token.
    """

    tokens: Tensor
    mask: Tensor
    nonempty: Tensor


def _normalize(x: Tensor) -> Tensor:
    """Row-wise L2 normalisation in float32: ``x / max(||x||, 1e-12)``."""
    return F.normalize(x.to(torch.float32), dim=-1)


class MultiModalModel(nn.Module):
    """Everything-at-Once family model with anchor heads; build it with :func:`build_model`.

    ``forward(batch)`` takes the batch dict of docs/architecture.md (keys ``text``/``text_mask``
    (B, Lt, text_dim)/(B, Lt), ``video``/``video_mask`` (B, Lv, video_dim)/(B, Lv), ``audio``/
    ``audio_mask`` (B, n_mels, F)/(B, F); only the modalities of ``cfg.modalities`` are read) and
    returns the output dict (``joint``, ``joint_normalized``, ``input_embedding``,
    ``input_anchor_scores``, ``joint_anchor_scores``, ``nonempty``).
    """

    def __init__(self, cfg: ModelConfig, train_anchor_scores: bool = True) -> None:
        """``train_anchor_scores=False`` (SSPC off: :func:`build_model` of a full config) skips the
        anchor scores in training mode, where only SSPC reads them; the anchors stay parameters, so
        state dicts are unchanged, and evaluation mode still scores them (anchor figures)."""
        super().__init__()
        validate_model_config(cfg)
        self.cfg = cfg
        self.variant = cfg.variant
        self.train_anchor_scores = train_anchor_scores
        self.modality_table = modality_table(cfg)  # built-in rows + model.modality_specs
        table = self.modality_table
        self.modalities: Tuple[str, ...] = tuple(m for m in table if m in cfg.modalities)
        spectrograms = [m for m in self.modalities if table[m].encoder == "spectrogram"]
        if spectrograms not in ([], ["audio"]):  # the DAVEnet reads model.audio_mels: audio's spectrogram only
            raise ConfigError(f"model.modalities: only 'audio' can be a spectrogram input, got {spectrograms}")
        self.pairs: Tuple[Tuple[str, str], ...] = (
            tuple(combinations(self.modalities, 2)) if cfg.variant == "everything_at_once" else ()
        )
        self.joint_names: Tuple[str, ...] = self.modalities + tuple(f"{a}_{b}" for a, b in self.pairs)
        dim = cfg.embed_dim

        self.audio_encoder = (
            build_audio_encoder(cfg.audio_encoder, cfg.audio_mels, cfg.audio_width_divisor,
                                recompute=cfg.recompute_audio_encoder)
            if "audio" in self.modalities else None
        )
        # the width each token projection reads, from the modality table (model.<dim_key> or the row's dim)
        feature_dims = {m: feature_dim(cfg, m, table) for m in self.modalities if table[m].encoder == "tokens"}
        self.feature_dims: Dict[str, int] = dict(feature_dims)  # what _check_batch expects of token inputs
        if self.audio_encoder is not None:
            feature_dims["audio"] = self.audio_encoder.out_dim
        self.token_projections = nn.ModuleDict({m: GatedEmbeddingUnit(feature_dims[m], dim) for m in self.modalities})
        self.token_norms = nn.ModuleDict({
            m: AutocastLayerNorm(dim, eps=LAYER_NORM_EPS, autocast_output=cfg.norm_outputs_in_autocast_dtype)
            for m in self.modalities
        })
        self.masking_tokens = nn.ParameterDict({m: nn.Parameter(torch.empty(dim)) for m in self.modalities})
        self.positional_embeddings = (
            nn.ParameterDict({m: nn.Parameter(torch.empty(cfg.max_positions, dim)) for m in self.modalities})
            if cfg.use_positional_embedding
            else None
        )

        def make_transformer() -> FusionTransformer:
            return FusionTransformer(
                dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                dropout=cfg.dropout, use_cls_token=cfg.use_cls_token,
                norm_autocast_output=cfg.norm_outputs_in_autocast_dtype,
            )

        self.fusion: nn.Module
        if cfg.variant == "per_modality":
            self.fusion = nn.ModuleDict({m: make_transformer() for m in self.modalities})
        else:
            self.fusion = make_transformer()
        self.projections = nn.ModuleDict(
            {m: GatedEmbeddingUnit(dim, cfg.projection_dim) for m in self.modalities}
        )
        # optional linear path from the frozen input features (text, video) straight to the joint space
        self.input_residuals = (
            nn.ModuleDict({
                m: nn.Sequential(nn.LayerNorm(feature_dims[m], eps=LAYER_NORM_EPS), nn.Linear(feature_dims[m], cfg.projection_dim))
                for m in self.modalities if table[m].encoder == "tokens"
            })
            if cfg.input_residual
            else None
        )
        if cfg.num_anchors < 0:
            raise ConfigError(f"model.num_anchors: must be >= 0, got {cfg.num_anchors}")
        # num_anchors = 0 builds no anchor sets (a contrastive-only model has no unused parameters,
        # which DDP would otherwise complain about); the score dicts of the output are then empty
        self.input_space = cfg.input_space
        self.anchors = AnchorHeads(self.modalities if cfg.num_anchors > 0 else (), input_space_dims(cfg, table),
                                   cfg.projection_dim, cfg.num_anchors)
        self.init_weights()

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_weights(self) -> None:
        """All weight initialisation of the model, in one place (follows the reference):

        * gated units (token and final projections): PyTorch's default ``nn.Linear`` init;
        * fusion transformers: Linear weights truncated normal (std 0.02), biases 0 (ViT init);
        * LayerNorm / BatchNorm: weight 1, bias 0;
        * DAVEnet: He normal with the fan-out of the reference's 2-D layers (:meth:`DAVEnet.init_weights`;
          ``N(0, 2 / (k · C_out))``, the stem ``N(0, 2 / (n_mels · C0))``), BatchNorm weight 1, bias 0;
        * masking tokens, CLS tokens, positional embeddings: truncated normal (std 0.02);
        * anchors: standard normal (they are used row-normalised, so only directions matter).
        """
        for unit in self.modules():
            if isinstance(unit, GatedEmbeddingUnit):
                unit.linear.reset_parameters()
                unit.gate.reset_parameters()
        transformers = self.fusion.values() if isinstance(self.fusion, nn.ModuleDict) else [self.fusion]
        for transformer in transformers:
            for layer in transformer.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.trunc_normal_(layer.weight, std=0.02)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)
            if transformer.cls_token is not None:
                nn.init.trunc_normal_(transformer.cls_token, std=0.02)
        if self.audio_encoder is not None:
            self.audio_encoder.init_weights()  # the reference's 2-D fans (the stem's is C0 · n_mels)
        for layer in self.modules():
            if isinstance(layer, nn.LayerNorm):
                nn.init.ones_(layer.weight)
                nn.init.zeros_(layer.bias)
        for token in self.masking_tokens.values():
            nn.init.trunc_normal_(token, std=0.02)
        if self.positional_embeddings is not None:
            for table in self.positional_embeddings.values():
                nn.init.trunc_normal_(table, std=0.02)
        for anchors in list(self.anchors.input_anchors.values()) + list(self.anchors.joint_anchors.values()):
            nn.init.normal_(anchors, 0.0, 1.0)

    # ------------------------------------------------------------------ inputs
    def _check_batch(self, batch: Mapping[str, object]) -> None:
        """Raise :class:`DataFormatError` naming the key for missing modalities or wrong shapes."""
        cfg = self.cfg
        batch_size = None
        for m in self.modalities:
            for key in (m, f"{m}_mask"):
                if key not in batch:
                    raise DataFormatError(
                        f"batch[{key!r}]: missing, but model.modalities includes {m!r} "
                        f"(batch keys: {', '.join(sorted(map(str, batch)))})"
                    )
                if not isinstance(batch[key], Tensor):
                    raise DataFormatError(f"batch[{key!r}]: expected a tensor, got {type(batch[key]).__name__}")
            x, mask = batch[m], batch[f"{m}_mask"]
            assert isinstance(x, Tensor) and isinstance(mask, Tensor)
            spec = self.modality_table[m]
            if spec.encoder == "spectrogram":
                if x.dim() != 3 or x.shape[1] != cfg.audio_mels:
                    raise DataFormatError(
                        f"batch['audio']: expected (B, {cfg.audio_mels}, F) log-mel frames "
                        f"({cfg.audio_mels} = model.audio_mels), got shape {tuple(x.shape)}"
                    )
                expected_mask = (x.shape[0], x.shape[2])
            else:
                expected_dim = self.feature_dims[m]
                if x.dim() != 3 or x.shape[2] != expected_dim:
                    where = f"model.{spec.dim_key}" if spec.dim_key else f"model.modality_specs.{m}.dim"
                    raise DataFormatError(
                        f"batch[{m!r}]: expected (B, L, {expected_dim}) features "
                        f"({expected_dim} = {where}), got shape {tuple(x.shape)}"
                    )
                expected_mask = (x.shape[0], x.shape[1])
            if tuple(mask.shape) != expected_mask:
                raise DataFormatError(f"batch['{m}_mask']: expected shape {expected_mask}, got {tuple(mask.shape)}")
            if batch_size is None:
                batch_size = x.shape[0]
            elif x.shape[0] != batch_size:
                raise DataFormatError(
                    f"batch[{m!r}]: batch size {x.shape[0]} differs from {batch_size} of {self.modalities[0]!r}"
                )

    def project_tokens(self, modality: str, features: Tensor, mask: Tensor) -> ModalityTokens:
        """Token projection + LayerNorm + masking token for one modality.

        ``features`` (B, L, d_m) (for audio: DAVEnet tokens), ``mask`` (B, L) bool or 0/1 float.
        Padded feature positions are zeroed before the projection. Samples without a valid token get
        the modality's learned masking token at position 0, marked valid, so no attention row is fully
        masked (a zero-length sequence gets one slot for it).
        """
        mask = mask > 0
        nonempty = mask.any(dim=1)
        # zero the padding first, so garbage or NaN there cannot leak through 0-weighted sums
        # (forward or backward)
        features = torch.where(mask[..., None], features, features.new_zeros(()))
        x = self.token_norms[modality](self.token_projections[modality](features))
        if x.shape[1] == 0:
            x = x.new_zeros(x.shape[0], 1, x.shape[2])
            mask = mask.new_zeros(x.shape[0], 1)
        first_slot = torch.arange(x.shape[1], device=x.device) == 0
        use_masking_token = (~nonempty)[:, None] & first_slot[None, :]  # (B, L)
        x = torch.where(use_masking_token[..., None], self.masking_tokens[modality].to(x.dtype), x)
        return ModalityTokens(x, mask | use_masking_token, nonempty)

    def encode_spectrogram(self, spectrogram: Tensor, frame_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """DAVEnet tokens ``(B, T', d_a)`` and token mask ``(B, T')`` of a ``(B, n_mels, F)`` batch.

        With ``model.audio_skip_empty`` only the samples with at least one valid frame go through the
        encoder; the others get zero tokens and an all-False mask, exactly what their masking token then
        replaces. Their outputs are discarded either way, so the only differences are the cost and that
        their zero padding no longer enters BatchNorm's batch statistics in training (the reference runs
        every sample; off by default). It reads the mask on the host: one synchronisation per step on CUDA.
        """
        assert isinstance(self.audio_encoder, DAVEnet)
        if not self.cfg.audio_skip_empty:
            return self.audio_encoder(spectrogram, frame_mask)
        has_frames = (frame_mask > 0).any(dim=1)
        rows = torch.nonzero(has_frames).squeeze(1)
        n_tokens = -(-spectrogram.shape[2] // self.audio_encoder.total_stride)
        if rows.numel() == spectrogram.shape[0]:
            return self.audio_encoder(spectrogram, frame_mask)
        tokens = spectrogram.new_zeros(spectrogram.shape[0], n_tokens, self.audio_encoder.out_dim)
        token_mask = torch.zeros(spectrogram.shape[0], n_tokens, dtype=torch.bool, device=spectrogram.device)
        if rows.numel() > 0:
            encoded, encoded_mask = self.audio_encoder(spectrogram[rows], frame_mask[rows])
            tokens = tokens.to(encoded.dtype).index_copy(0, rows, encoded)
            token_mask = token_mask.index_copy(0, rows, encoded_mask)
        return tokens, token_mask

    def embed_tokens(self, batch: Mapping[str, Tensor]) -> Dict[str, ModalityTokens]:
        """Validate the batch and return the projected tokens of every modality of the model."""
        self._check_batch(batch)
        out: Dict[str, ModalityTokens] = {}
        for m in self.modalities:
            features, mask = batch[m], batch[f"{m}_mask"]
            if self.modality_table[m].encoder == "spectrogram":
                features, mask = self.encode_spectrogram(features, mask)
            out[m] = self.project_tokens(m, features, mask)
        return out

    def _with_positions(self, modality: str, tokens: ModalityTokens) -> Tuple[Tensor, Tensor]:
        x = tokens.tokens
        if self.positional_embeddings is not None:
            length = x.shape[1]
            if length > self.cfg.max_positions:
                raise DataFormatError(
                    f"batch[{modality!r}]: {length} tokens exceed model.max_positions={self.cfg.max_positions}"
                )
            x = x + self.positional_embeddings[modality][:length].to(x.dtype)
        return x, tokens.mask

    # ------------------------------------------------------------------ forward
    def joint_embeddings(self, tokens: Mapping[str, ModalityTokens]) -> Dict[str, Tensor]:
        """Joint embeddings (B, E) for every name of ``self.joint_names`` from projected tokens."""
        segments = {m: self._with_positions(m, tokens[m]) for m in self.modalities}
        joint: Dict[str, Tensor] = {}
        for m in self.modalities:
            transformer = self.fusion[m] if isinstance(self.fusion, nn.ModuleDict) else self.fusion
            fused = transformer([segments[m]])
            pooled = fused.cls if fused.cls is not None else fused.pooled[0]
            joint[m] = self.projections[m](pooled.to(segments[m][0].dtype))
        for a, b in self.pairs:
            fused = self.fusion([segments[a], segments[b]])
            pooled_a, pooled_b = (fused.cls, fused.cls) if fused.cls is not None else fused.pooled
            dtype = segments[a][0].dtype
            embed_a = self.projections[a](pooled_a.to(dtype))
            embed_b = self.projections[b](pooled_b.to(dtype))
            joint[f"{a}_{b}"] = (_normalize(embed_a) + _normalize(embed_b)) / 2
        return joint

    def forward(self, batch: Mapping[str, Tensor], input_embedding: Optional[Mapping[str, Tensor]] = None) -> Dict[str, Dict]:
        """The output dict of docs/architecture.md for ``batch``.

        ``input_embedding``: ``{m: (B, d)}`` the input-space embeddings u_m, required with
        ``model.input_space: frozen`` (a frozen space of the pre-trained features that the caller computes,
        docs/architecture.md "Options that are not in the paper"); None: the learned ones,
        ``n(masked mean of the projected tokens)`` (the paper).
        """
        tokens = self.embed_tokens(batch)
        if self.input_space == "frozen":
            if input_embedding is None:
                raise ValueError("model.input_space: 'frozen' reads the frozen input space from the caller: "
                                 "forward(batch, input_embedding={modality: (B, d)})")
        else:
            input_embedding = {m: _normalize(masked_mean(tokens[m].tokens, tokens[m].mask)) for m in self.modalities}
        joint = self.joint_embeddings(tokens)
        if self.input_residuals is not None:
            for m, residual in self.input_residuals.items():
                # x̂_m += W_m · LN(masked mean of the input features); an empty item adds W_m · LN(0)
                feature_mask = batch[f"{m}_mask"] > 0
                features = torch.where(feature_mask[..., None], batch[m], batch[m].new_zeros(()))
                pooled = features.sum(dim=1) / feature_mask.sum(dim=1, keepdim=True).clamp_min(1).to(features.dtype)
                joint[m] = joint[m] + residual(pooled)
        joint_normalized = {name: _normalize(x) for name, x in joint.items()}
        # in training only SSPC reads the anchor scores: without it (train_anchor_scores=False) they are
        # not computed and the two score dicts are empty, as for a model without anchors
        scored = self.anchors.modalities if self.train_anchor_scores or not self.training else ()
        return {
            "joint": joint,
            "joint_normalized": joint_normalized,
            "input_embedding": input_embedding,
            "input_anchor_scores": {m: self.anchors.input_scores(m, input_embedding[m]) for m in scored},
            "joint_anchor_scores": {
                m: {n: self.anchors.joint_scores(m, joint_normalized[n]) for n in self.joint_names}
                for m in scored
            },
            "nonempty": {m: tokens[m].nonempty for m in self.modalities},
        }


def build_model(cfg: Union[ModelConfig, Config]) -> MultiModalModel:
    """Build the model described by ``cfg``: the ``model`` section, or a full :class:`Config`.

    A full config also tells the model what the objective needs: with ``loss.sspc.enabled = false``
    the anchors feed nothing, so the model skips their scores in training mode and the anchors are
    frozen (``requires_grad = False``: no gradient would reach them, which DDP rejects). Either way the
    parameters and state-dict keys are the same, so checkpoints load across both.

    With ``model.compile`` the module is compiled in place (``nn.Module.compile``), so its class,
    attributes and state-dict keys stay those of :class:`MultiModalModel`. To count parameters
    without allocating memory, build under ``with torch.device("meta"):``.
    """
    sspc_on = cfg.loss.sspc.enabled if isinstance(cfg, Config) else True
    model_cfg = cfg.model if isinstance(cfg, Config) else cfg
    model = MultiModalModel(model_cfg, train_anchor_scores=sspc_on)
    if not sspc_on:
        model.anchors.requires_grad_(False)
    if model_cfg.compile:
        model.compile()
    return model


def pair_names(model: MultiModalModel) -> List[str]:
    """Names of the fused-pair joint embeddings the model produces (empty for per_modality)."""
    return [f"{a}_{b}" for a, b in model.pairs]


__all__ = ["MODALITY_PAIRS", "ModalityTokens", "MultiModalModel", "build_model", "pair_names"]
