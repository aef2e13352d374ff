"""The frozen maps of the text-space prior: a closed-form embedding of every modality in the text
encoder's sentence space (not in the paper; docs/prior.md).

What the pre-trained encoders already know — Lite0's picture features, the caption encoder's sentence
space, and (optionally) Lite0's ImageNet classifier read through the text embeddings of its class names —
is the structure the paper wants a multi-modal model to keep. :class:`TextSpacePrior` keeps it
literally: next to the learned joint embedding x̂_m of the Everything-at-Once model, each modality m
gets a prior embedding p_m in the caption encoder's space (dimension T = ``model.text_dim``)::

    text        p_t = n(masked mean of the caption's tokens)                 (MiniLM: its sentence embedding)
    tokens m    p_m = n(((pool_m − μ_m) / σ_m) W_m + b_m)                      ridge map, fitted in closed form
    spectrogram pool_m = [mean_t(frames) ; std_t(frames)]  (2 · n_mels), then the same ridge map
    video with a concept head (C classes, weights A (C, d), c (C,), class-name embeddings E (C, T)):
                p_v = n((1 − α) n(ridge_v) + α n(softmax(pool_v Aᵀ + c) E))

where ``pool_m`` is the masked mean of m's input tokens (B, d_m) and n(·) is L2 normalisation. The
ridge maps W_m, b_m = argmin Σ_i ||x̃_i W + b − p_t,i||² + λ||W||² are fitted on the training split before
training (:func:`multisk.prior.fit.fit_text_space_prior`: λ and α chosen on the validation split);
nothing here is trained by gradient descent (buffers only).

In evaluation mode, with a mixing weight w > 0, the embeddings the model returns for retrieval are::

    e_m = [ √(1 − w) · n(x̂_m) ; √w · p_m ]         (B, E + T),  so  e_a · e_b = (1 − w) cos(x̂_a, x̂_b) + w cos(p_a, p_b)

(a fused pair "a_b" uses p = n(p_a + p_b)); :class:`multisk.prior.mixed.PriorMixedModel` returns them
around the paper's model. w is chosen on the validation split (:func:`multisk.prior.fit.choose_prior_weight`).
w = 1 is the closed-form prior alone (what val says when the trained model adds nothing), w = 0 the
trained model alone. By default training never sees the prior; with ``model.prior.train_weight`` w_t > 0
the contrastive loss scores the same mix at w_t (:func:`multisk.prior.mixed.training_mix`), SSPC and
the anchors still read the learned embeddings.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multisk.modalities import ModalityTable


class RidgeMap:
    """Standardise, then the ridge solution for every λ of a grid from one eigendecomposition.

    ``fit(X (n, d), Y (n, e))``: with ``X̃ = (X − μ) / σ`` and ``Ỹ = Y − ȳ``, ``X̃ᵀX̃ = V diag(s) Vᵀ``
    gives ``W_λ = V diag(1 / (s + λ)) Vᵀ X̃ᵀỸ`` for each λ at the cost of one (d, d) eigensolve.
    ``predict(X, λ) = X̃ W_λ + ȳ``. Constant features (σ = 0) are left at zero. Float64 throughout.
    """

    def __init__(self) -> None:
        self.mean: Optional[np.ndarray] = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> "RidgeMap":
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"RidgeMap.fit: expected X (n, d) and Y (n, e) with equal n, got {x.shape} and {y.shape}")
        if x.shape[0] < 2:
            raise ValueError(f"RidgeMap.fit: need at least 2 training pairs, got {x.shape[0]}")
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.scale = np.where(std > 0, std, 1.0)
        self.target_mean = y.mean(axis=0)
        xs = (x - self.mean) / self.scale
        eigenvalues, eigenvectors = np.linalg.eigh(xs.T @ xs)
        self.eigenvalues = np.clip(eigenvalues, 0.0, None)
        self.eigenvectors = eigenvectors
        self.projected_target = eigenvectors.T @ (xs.T @ (y - self.target_mean))  # Vᵀ X̃ᵀỸ
        return self

    def weights(self, lam: float) -> np.ndarray:
        """(d, e) ridge weights for penalty ``lam`` > 0."""
        if self.mean is None:
            raise RuntimeError("RidgeMap: call fit() first")
        if not lam > 0:
            raise ValueError(f"lam: must be > 0, got {lam}")
        return self.eigenvectors @ (self.projected_target / (self.eigenvalues + lam)[:, None])

    def predict(self, x: np.ndarray, lam: float) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.weights(lam) + self.target_mean


def pooled_width(spec, dim: int) -> int:
    """Width of ``pool_m``: ``2 · n_mels`` for a spectrogram modality (mean ; std), else ``dim``."""
    return 2 * dim if spec.encoder == "spectrogram" else dim


def pool_inputs(features: Tensor, mask: Tensor, encoder: str) -> Tuple[Tensor, Tensor]:
    """One frozen vector per sample of one modality's batch input.

    Args:
        features: ``(B, L, d)`` tokens, or ``(B, n_mels, F)`` log-mel frames for ``encoder="spectrogram"``.
        mask: ``(B, L)`` / ``(B, F)`` bool, True = valid.
        encoder: the modality's encoder kind (``"tokens"`` / ``"spectrogram"``).

    Returns:
        ``(pool (B, d') float32, nonempty (B,) bool)``: the masked mean of the tokens (d' = d), or the
        masked mean and standard deviation over time of the frames (d' = 2 · n_mels); rows of samples
        without a valid token are 0.
    """
    weights = mask.to(torch.float32)
    count = weights.sum(dim=1, keepdim=True)
    nonempty = count.squeeze(1) > 0
    denominator = count.clamp_min(1.0)
    if encoder == "spectrogram":
        frames = features.to(torch.float32)  # (B, n_mels, F)
        mean = (frames * weights[:, None, :]).sum(dim=2) / denominator
        var = (((frames - mean[:, :, None]) ** 2) * weights[:, None, :]).sum(dim=2) / denominator
        pool = torch.cat([mean, var.clamp_min(0.0).sqrt()], dim=1)
    else:
        pool = (features.to(torch.float32) * weights[:, :, None]).sum(dim=1) / denominator
    return pool * nonempty[:, None].to(pool.dtype), nonempty


class TextSpacePrior(nn.Module):
    """The closed-form prior embeddings p_m of the module docstring; buffers only.

    Args:
        table: the run's modality table (``name -> ModalitySpec``).
        dims: ``name -> feature width`` (mel bins for a spectrogram) of every modality of the model.
        text_dim: T, the caption encoder's width (``dims["text"]``).
        concept_classes: C > 0 adds the concept head to ``video`` (its buffers are filled by the fit).
    """

    def __init__(self, table: ModalityTable, dims: Mapping[str, int], concept_classes: int = 0) -> None:
        super().__init__()
        if "text" not in dims:
            raise ValueError("TextSpacePrior: the model has no text modality (the prior lives in its space)")
        self.text_dim = int(dims["text"])
        self.encoders = {m: table[m].encoder for m in dims}
        self.mapped = tuple(m for m in dims if m != "text")
        for m in self.mapped:
            width = pooled_width(table[m], int(dims[m]))
            self.register_buffer(f"{m}_mean", torch.zeros(width))
            self.register_buffer(f"{m}_scale", torch.ones(width))
            self.register_buffer(f"{m}_weight", torch.zeros(width, self.text_dim))
            self.register_buffer(f"{m}_bias", torch.zeros(self.text_dim))
        self.concept_classes = int(concept_classes)
        if self.concept_classes > 0:
            if "video" not in dims:
                raise ValueError("TextSpacePrior: a concept head needs the video modality")
            self.register_buffer("concept_weight", torch.zeros(self.concept_classes, int(dims["video"])))
            self.register_buffer("concept_bias", torch.zeros(self.concept_classes))
            self.register_buffer("concept_embeddings", torch.zeros(self.concept_classes, self.text_dim))
            self.register_buffer("concept_mix", torch.zeros(()))  # α
        # w of the retrieval embeddings; 0 until chosen (the fit and the trainer's selection set it)
        self.register_buffer("mix_weight", torch.zeros(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    # ---------------------------------------------------------------------------------------- pieces
    def set_ridge(self, modality: str, mean: np.ndarray, scale: np.ndarray, weight: np.ndarray,
                  bias: np.ndarray) -> None:
        """Install one modality's fitted map (float64 arrays are stored as float32)."""
        for suffix, value in (("mean", mean), ("scale", scale), ("weight", weight), ("bias", bias)):
            buffer = getattr(self, f"{modality}_{suffix}")
            value = torch.as_tensor(np.asarray(value), dtype=buffer.dtype)
            if value.shape != buffer.shape:
                raise ValueError(f"TextSpacePrior.{modality}_{suffix}: expected {tuple(buffer.shape)}, "
                                 f"got {tuple(value.shape)}")
            buffer.copy_(value)

    def set_concepts(self, weight: np.ndarray, bias: np.ndarray, embeddings: np.ndarray) -> None:
        """Install the concept head: classifier (C, d_v), (C,) and class-name embeddings (C, T)."""
        if self.concept_classes == 0:
            raise ValueError("TextSpacePrior: built without a concept head (model.prior.concept_classes = 0)")
        for name, value in (("concept_weight", weight), ("concept_bias", bias), ("concept_embeddings", embeddings)):
            buffer = getattr(self, name)
            value = torch.as_tensor(np.asarray(value), dtype=buffer.dtype)
            if value.shape != buffer.shape:
                raise ValueError(f"TextSpacePrior.{name}: expected {tuple(buffer.shape)}, got {tuple(value.shape)}")
            buffer.copy_(value)

    def ridge_embedding(self, modality: str, pool: Tensor) -> Tensor:
        """(B, d') pooled inputs → (B, T) un-normalised ridge prediction x̃ W + b."""
        mean, scale = getattr(self, f"{modality}_mean"), getattr(self, f"{modality}_scale")
        return ((pool - mean) / scale) @ getattr(self, f"{modality}_weight") + getattr(self, f"{modality}_bias")

    def concept_embedding(self, pool: Tensor) -> Tensor:
        """(B, d_v) pooled picture features → (B, T): softmax(pool Aᵀ + c) E (un-normalised)."""
        probabilities = torch.softmax(pool @ self.concept_weight.T + self.concept_bias, dim=1)
        return probabilities @ self.concept_embeddings

    @torch.no_grad()
    def input_space(self, batch: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """``{m: (B, d'_m)}`` the frozen input space of ``model.input_space: frozen``: the unit pooled
        inputs, standardised with the fitted ridge statistics for non-text modalities
        (``n((pool_m − μ_m) / σ_m)``), the caption's p_t for text; zero rows for samples lacking m."""
        out: Dict[str, Tensor] = {}
        for m, encoder in self.encoders.items():
            if m not in batch:
                continue
            pool, nonempty = pool_inputs(batch[m], batch[f"{m}_mask"], encoder)
            if m != "text":
                pool = (pool - getattr(self, f"{m}_mean")) / getattr(self, f"{m}_scale")
            out[m] = F.normalize(pool, dim=-1) * nonempty[:, None].to(pool.dtype)
        return out

    # ---------------------------------------------------------------------------------------- forward
    def forward(self, batch: Mapping[str, Tensor], concept_mix: Optional[float] = None) -> Dict[str, Tensor]:
        """``{m: (B, T)}`` L2-normalised prior embeddings of every modality present in ``batch``
    (zero rows for samples lacking the modality).

        ``concept_mix`` overrides α (the fit scores candidate values with it).
        """
        out: Dict[str, Tensor] = {}
        for m, encoder in self.encoders.items():
            if m not in batch:
                continue
            pool, nonempty = pool_inputs(batch[m], batch[f"{m}_mask"], encoder)
            keep = nonempty[:, None].to(pool.dtype)  # a sample lacking m gets p = 0: no prior vote
            if m == "text":
                out[m] = F.normalize(pool, dim=-1) * keep
                continue
            prior = F.normalize(self.ridge_embedding(m, pool), dim=-1)
            if m == "video" and self.concept_classes > 0:
                alpha = self.concept_mix if concept_mix is None else torch.as_tensor(concept_mix, dtype=prior.dtype)
                concepts = F.normalize(self.concept_embedding(pool), dim=-1)
                prior = F.normalize((1 - alpha) * prior + alpha * concepts, dim=-1)
            out[m] = prior * keep
        return out


def combine_with_prior(joint_normalized: Mapping[str, Tensor], prior: Mapping[str, Tensor],
                       weight: float | Tensor) -> Dict[str, Tensor]:
    """The retrieval embeddings ``[√(1 − w) x̂ ; √w p]`` of the module docstring.

    Args:
        joint_normalized: ``{name: (B, E)}`` unit-norm learned embeddings (fused pairs as ``"a_b"``).
        prior: ``{modality: (B, T)}`` unit-norm prior embeddings.
        weight: w in [0, 1].

    Returns ``{name: (B, E + T)}`` of unit norm (float32, float64 for float64 inputs); a pair "a_b" takes
    p = n(p_a + p_b).
    """
    out: Dict[str, Tensor] = {}
    for name, learned in joint_normalized.items():
        parts: Sequence[str] = name.split("_") if name not in prior else (name,)
        p = F.normalize(sum(prior[part] for part in parts), dim=-1)
        dtype = torch.promote_types(torch.promote_types(learned.dtype, p.dtype), torch.float32)  # fp32, or fp64
        w = torch.as_tensor(weight, dtype=dtype, device=learned.device)
        out[name] = torch.cat([(1 - w).sqrt() * learned.to(dtype), w.sqrt() * p.to(dtype)], dim=-1)
    return out


__all__ = ["RidgeMap", "TextSpacePrior", "combine_with_prior", "pool_inputs", "pooled_width"]
