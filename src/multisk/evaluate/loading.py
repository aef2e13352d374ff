"""Rebuild a trained model from a checkpoint written by ``multisk train``."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch

from multisk.checkpoint import load_checkpoint
from multisk.config import Config, config_from_dict
from multisk.errors import DataFormatError
from multisk.prior import build_model_with_prior, prior_of


def load_model(path: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = False) -> Tuple[torch.nn.Module, Config]:
    """Returns ``(model in eval mode on device, config)``; ``use_ema`` loads the EMA weights."""
    state = load_checkpoint(path)  # onto the CPU, weights_only (a checkpoint cannot run code)
    cfg = config_from_dict(state["config"])
    model = build_model_with_prior(cfg.model)  # the paper's model, with model.prior wrapped with its prior
    weights = state["model"]
    if use_ema:
        if not state.get("ema"):
            raise DataFormatError(f"{path}: checkpoint has no field 'ema' (train with train.ema_decay > 0)")
        prefix = "module."
        weights = {k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        problem = f"missing {missing[:5]}, unexpected {unexpected[:5]}" if missing or unexpected else ""
    except RuntimeError as err:  # shape mismatches
        problem = str(err).splitlines()[-1].strip()
    if problem:
        raise DataFormatError(f"{path}: field 'model' does not match the configured model ({problem})")
    return model.to(device).eval(), cfg


def set_prior_weight(model: torch.nn.Module, weight: float, where: str = "prior weight") -> None:
    """Score ``model`` with weight ``weight`` of its text-space prior (:mod:`multisk.prior`):
    0 = the learned embeddings alone, 1 = the closed-form prior alone. Errors name ``where``."""
    prior = prior_of(model)
    if prior is None:
        raise DataFormatError(f"{where}: the model has no text-space prior (it was trained without model.prior)")
    if not 0.0 <= weight <= 1.0:
        raise DataFormatError(f"{where}: must be in [0, 1], got {weight}")
    if not bool(prior.fitted):
        raise DataFormatError(f"{where}: the model's prior was never fitted (a checkpoint written before training?)")
    prior.mix_weight.fill_(float(weight))
