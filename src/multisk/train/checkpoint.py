"""Atomic, complete training checkpoints.

A checkpoint holds everything needed to continue exactly: model, EMA, objective (queues), optimizer,
LR scheduler, GradScaler, all RNG states, the data position (epoch, batch within the epoch), the global
step and the configuration. Files are written to ``NAME.tmp`` and renamed, so a crash never leaves a
truncated checkpoint; ``latest.pt`` always names a complete file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from multisk.errors import DataFormatError


def capture_rng_state() -> Dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: Dict[str, Any], path: str | Path, *, also_latest: bool = True) -> Path:
    """Write ``state`` atomically to ``path`` (and copy the name into ``latest.pt`` beside it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    if also_latest:
        latest = path.with_name("latest.pt")
        if latest != path:
            tmp_latest = latest.with_name("latest.pt.tmp")
            # a hard link is instant and atomic to swap in; fall back to a copy where links are refused
            try:
                if tmp_latest.exists():
                    tmp_latest.unlink()
                os.link(path, tmp_latest)
            except OSError:
                torch.save(state, tmp_latest)
            os.replace(tmp_latest, latest)
    return path


def resolve_checkpoint(spec: str, output_dir: str | Path) -> Optional[Path]:
    """``latest`` → ``OUTPUT_DIR/checkpoints/latest.pt`` if it exists (else None); otherwise a path."""
    if spec == "latest":
        candidate = Path(output_dir) / "checkpoints" / "latest.pt"
        return candidate if candidate.is_file() else None
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        # our checkpoints hold RNG states (numpy arrays, tuples), so the full unpickler is needed;
        # only load checkpoints you trust.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated / corrupt files raise many different exception types
        raise DataFormatError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from None
    for key in ("model", "config"):
        if key not in state:
            raise DataFormatError(f"{path}: checkpoint has no field {key!r}")
    return state


__all__ = ["capture_rng_state", "load_checkpoint", "resolve_checkpoint", "restore_rng_state", "save_checkpoint"]
