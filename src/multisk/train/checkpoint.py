"""Moved to :mod:`multisk.checkpoint` (library-level checkpoint I/O that train and evaluate both use);
this re-export keeps old imports working."""

from multisk.checkpoint import (  # noqa: F401
    ALLOWED_GLOBALS,
    CheckpointError,
    CheckpointWriter,
    capture_rng_state,
    load_checkpoint,
    prune_step_checkpoints,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
    snapshot_state,
)

__all__ = [
    "ALLOWED_GLOBALS", "CheckpointError", "CheckpointWriter", "capture_rng_state", "load_checkpoint",
    "prune_step_checkpoints", "resolve_checkpoint", "restore_rng_state", "save_checkpoint", "snapshot_state",
]
