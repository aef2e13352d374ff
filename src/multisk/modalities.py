"""The modalities as data: one row per input the model can read.

Everything that used to list ``("text", "video", "audio")`` iterates over :data:`MODALITY_SPECS`
instead: config validation (``model.modalities``), the feature widths and token budgets a dataset is
built with (:mod:`multisk.data.store_for_config`), the crop of the feature-store dataset, the model's
token projections and batch checks, and the letters of the retrieval directions (``t2v``).

Columns:

=========  ======  ==================  ====================  ======  ===========
name       letter  feature dim key     token budget key      crop    encoder
=========  ======  ==================  ====================  ======  ===========
text       t       model.text_dim      data.max_text_tokens  start   tokens
video      v       model.video_dim     data.max_video_tokens center  tokens
audio      a       model.audio_mels    data.max_audio_frames center  spectrogram
=========  ======  ==================  ====================  ======  ===========

``encoder``: ``"tokens"`` — the batch holds (B, L, dim) features that the token projection reads
directly; ``"spectrogram"`` — the batch holds (B, dim, F) log-mel frames (dim = mel bins) that the
audio CNN (DAVEnet) turns into tokens first. ``crop``: which part of a sequence longer than its budget
a training item keeps (``start``: the first tokens, as the reference keeps the first 20 words;
``center``: the middle window). Evaluation may override the crop (:mod:`multisk.evaluate.inputs`).

This module is a leaf (it imports only :mod:`multisk.errors`), so ``multisk.config`` can build on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

from multisk.errors import ConfigError

ENCODER_KINDS = ("tokens", "spectrogram")
CROP_RULES = ("start", "center")


@dataclass(frozen=True)
class ModalitySpec:
    """One input modality (see the module docstring for the columns)."""

    name: str  # batch key, joint-embedding name and model.modalities entry
    letter: str  # its letter in retrieval direction names (t2v, v+a2t)
    dim_key: str  # ModelConfig field holding the feature width (spectrogram: mel bins)
    budget_key: str  # DataConfig field holding the most tokens (spectrogram: frames) an item feeds
    crop: str  # training crop of a longer sequence: "start" | "center"
    encoder: str  # "tokens" | "spectrogram"

    def __post_init__(self) -> None:
        if self.encoder not in ENCODER_KINDS:
            raise ConfigError(f"modality {self.name!r}: encoder must be one of {ENCODER_KINDS}, got {self.encoder!r}")
        if self.crop not in CROP_RULES:
            raise ConfigError(f"modality {self.name!r}: crop must be one of {CROP_RULES}, got {self.crop!r}")


MODALITY_SPECS: Dict[str, ModalitySpec] = {
    spec.name: spec
    for spec in (
        ModalitySpec("text", "t", "text_dim", "max_text_tokens", crop="start", encoder="tokens"),
        ModalitySpec("video", "v", "video_dim", "max_video_tokens", crop="center", encoder="tokens"),
        ModalitySpec("audio", "a", "audio_mels", "max_audio_frames", crop="center", encoder="spectrogram"),
    )
}

# the built-in names in table order (the order of batch keys, joint names and report rows)
MODALITIES: Tuple[str, ...] = tuple(MODALITY_SPECS)


def modality_spec(name: str, field: str = "model.modalities") -> ModalitySpec:
    """The row of ``name``; :class:`ConfigError` naming ``field`` for a modality without one."""
    spec = MODALITY_SPECS.get(name)
    if spec is None:
        raise ConfigError(f"{field}: unknown modality {name!r} (known: {', '.join(MODALITY_SPECS)}; a new "
                          "modality is a row of multisk.modalities.MODALITY_SPECS)")
    return spec


def in_table_order(names) -> Tuple[str, ...]:
    """``names`` sorted by the table (unknown names raise :class:`ConfigError`)."""
    for name in names:
        modality_spec(name)
    order = list(MODALITY_SPECS)
    return tuple(sorted(set(names), key=order.index))


def feature_dim(model_cfg: Any, name: str) -> int:
    """Feature width of ``name`` in a ``ModelConfig`` (``model.<dim_key>``)."""
    spec = modality_spec(name)
    if not hasattr(model_cfg, spec.dim_key):
        raise ConfigError(f"model.{spec.dim_key}: missing; modality {name!r} reads its feature width there")
    return int(getattr(model_cfg, spec.dim_key))


def token_budget(data_cfg: Any, name: str) -> int:
    """Token budget of ``name`` in a ``DataConfig`` (``data.<budget_key>``)."""
    spec = modality_spec(name)
    if not hasattr(data_cfg, spec.budget_key):
        raise ConfigError(f"data.{spec.budget_key}: missing; modality {name!r} reads its token budget there")
    return int(getattr(data_cfg, spec.budget_key))


__all__ = [
    "CROP_RULES", "ENCODER_KINDS", "MODALITIES", "MODALITY_SPECS", "ModalitySpec", "feature_dim",
    "in_table_order", "modality_spec", "token_budget",
]
