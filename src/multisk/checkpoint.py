"""Checkpoint files: atomic writes, and reads that cannot run code.

A training checkpoint (written by ``multisk train``) is a dict of plain containers and tensors:

    "model", "objective", "optimizer", "scheduler", "scaler"   state dicts
    "ema"            {"module.<name>": tensor, ..., "n_averaged": int64 tensor} or None
    "rng"            list, one entry per rank: {"python": tuple, "numpy": {...}, "torch": uint8 tensor,
                     ["cuda": [uint8 tensor, ...]]} (see :func:`capture_rng_state`)
    "epoch", "batch_in_epoch", "global_step"   data position; ``batch_in_epoch`` counts GLOBAL batches
    "world_size", "global_batch_size", "samples_seen"   what a resume on another world size needs
    "config"         the run's configuration as a plain dict

Reading uses ``torch.load(weights_only=True)``: the unpickler only rebuilds tensors, numbers,
strings and containers, plus the few NumPy types listed in :data:`ALLOWED_GLOBALS` (older checkpoints
stored the NumPy RNG state as an ``ndarray``). A file that carries any other pickled object — which a
full unpickler would call, i.e. run — is refused with :class:`CheckpointError` naming the file.
Everything is mapped to the CPU: a checkpoint written on a GPU loads on any machine, and the caller
moves what it needs (``load_state_dict`` copies into the live tensors, the optimizer casts its state to
its parameters' device).

Writes go to ``NAME.tmp``, are fsynced and renamed (and the directory fsynced), so a crash or power loss
never leaves a truncated checkpoint, and ``latest.pt`` always names a complete file.
"""

from __future__ import annotations

import os
import pickle
import random
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from multisk.errors import DataFormatError


class CheckpointError(DataFormatError):
    """A checkpoint file is unreadable, unsafe to unpickle or lacks a field; the message names the file."""


def _numpy_globals() -> List[Any]:
    """The NumPy callables/classes a pickled ``ndarray`` of plain numbers needs (older checkpoints).

    ``_reconstruct`` only allocates an empty array; element data of non-object dtypes is raw bytes. An
    object-dtype array would need further globals for its elements, which stay refused.
    """
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    allowed: List[Any] = [_reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # NumPy >= 1.25 pickles dtypes through their classes
        allowed += [dtypes.UInt32DType, dtypes.Int64DType, dtypes.Float64DType]
    return allowed


ALLOWED_GLOBALS: List[Any] = _numpy_globals()


# ------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states as tensors / plain values (weights_only-safe)."""
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np.asarray(key, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; RNG tensors are brought to the CPU first (the generators
    only accept CPU byte tensors, whatever device the checkpoint was mapped to)."""
    random.setstate(_as_python_state(state["python"]))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        key = np.asarray(torch.as_tensor(numpy_state["key"]).cpu().numpy(), dtype=np.uint32)
        np.random.set_state(("MT19937", key, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["gauss"]))
    else:  # older checkpoints: NumPy's own tuple
        np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_python_state(value: Any) -> tuple:
    """``random.setstate`` wants nested tuples; a round trip may have turned them into lists."""
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


# ------------------------------------------------------------------------------------------- files
def save_checkpoint(state: Dict[str, Any], path: str | Path, *, also_latest: bool = True) -> Path:
    """Write ``state`` atomically to ``path`` (and make ``latest.pt`` beside it name the same content)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())  # the bytes are on disk before the name points at them
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
    _fsync_directory(path.parent)  # the renames themselves survive a power loss
    return path


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse fsync on directories
        pass
    finally:
        os.close(fd)


def snapshot_state(obj: Any) -> Any:
    """A copy of ``obj`` that later training cannot change: tensors copied to the CPU (detached), dicts /
    lists / tuples rebuilt, other values (numbers, strings, RNG tuples) shared (they are immutable)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [snapshot_state(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(snapshot_state(v) for v in obj)
    return obj


def _write_and_prune(state: Dict[str, Any], path: Path, keep_steps: int) -> None:
    save_checkpoint(state, path)
    if keep_steps > 0:
        prune_step_checkpoints(path.parent, keep_steps)


class CheckpointWriter:
    """``save(state, path)`` as :func:`save_checkpoint`; with ``background=True`` it only takes a snapshot
    (:func:`snapshot_state`: one copy of the tensors in host memory) and writes it in a thread, so training
    goes on while the file is written. The write is as atomic as ever (``NAME.tmp``, fsync, rename; then
    ``latest.pt``), so a crash mid-write leaves the previous checkpoint as ``latest.pt``. One write at a
    time: ``save`` and :meth:`wait` first finish the previous write and re-raise its error, if any."""

    def __init__(self, background: bool = False) -> None:
        self.background = background
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def save(self, state: Dict[str, Any], path: str | Path, keep_steps: int = 0) -> None:
        """Write ``state`` to ``path``; then, with ``keep_steps > 0``, :func:`prune_step_checkpoints`."""
        self.wait()
        if not self.background:
            _write_and_prune(state, Path(path), keep_steps)
            return
        snapshot = snapshot_state(state)
        self._thread = threading.Thread(target=self._write, args=(snapshot, Path(path), keep_steps),
                                        name="checkpoint-writer", daemon=False)
        self._thread.start()

    def _write(self, state: Dict[str, Any], path: Path, keep_steps: int) -> None:
        try:
            _write_and_prune(state, path, keep_steps)
        except BaseException as err:  # re-raised in the training thread by wait()
            self._error = err

    def join(self) -> None:
        """Block until the pending write (if any) ends, without raising (for clean-up paths)."""
        if self._thread is not None:
            self._thread.join()

    def wait(self) -> None:
        """Block until the pending write (if any) is on disk; raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(f"writing a checkpoint in the background failed: {error}") from error


def prune_step_checkpoints(directory: str | Path, keep: int) -> List[Path]:
    """Delete all but the ``keep`` newest ``step_N.pt`` of ``directory`` (by N); ``epoch_N.pt`` and
    ``latest.pt`` (a hard link: its content survives the deletion of the file it was linked from) stay.
    Returns the deleted paths."""
    steps = []
    for path in Path(directory).glob("step_*.pt"):
        number = path.stem[len("step_"):]
        if number.isdigit():
            steps.append((int(number), path))
    doomed = [path for _, path in sorted(steps)[:-keep]] if keep > 0 else []
    for path in doomed:
        path.unlink()
    return doomed


def resolve_checkpoint(spec: str, output_dir: str | Path) -> Optional[Path]:
    """``latest`` → ``OUTPUT_DIR/checkpoints/latest.pt`` if it exists (else None); otherwise a path."""
    if spec == "latest":
        candidate = Path(output_dir) / "checkpoints" / "latest.pt"
        return candidate if candidate.is_file() else None
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return path


def load_checkpoint(path: str | Path, *, require: tuple = ("model", "config")) -> Dict[str, Any]:
    """Read a checkpoint onto the CPU without running code; check that the ``require`` fields exist.

    Raises FileNotFoundError (no file) or :class:`CheckpointError` (corrupt, carrying a non-allow-listed
    pickled object, not a dict, or lacking a required field), each naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).split("\n")[0]
        for line in str(err).splitlines():  # torch names the refused global on one of its lines
            if "GLOBAL" in line or "Unsupported" in line:
                detail = line.strip()
                break
        raise CheckpointError(
            f"{path}: refused to load: the file contains a pickled Python object other than tensors, numbers, "
            f"strings and containers ({detail}). multisk reads checkpoints with torch.load(weights_only=True) so "
            f"that opening a file cannot run code; a checkpoint written by `multisk train` never needs more"
        ) from None
    except Exception as err:  # truncated / corrupt files raise many different exception types
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a multisk checkpoint (top level is {type(state).__name__}, not a dict)")
    for key in require:
        if key not in state:
            hint = (" (a bare state dict or a checkpoint written by other code: multisk needs the run's "
                    "configuration to rebuild the model)" if key == "config" else "")
            raise CheckpointError(f"{path}: checkpoint has no field {key!r}{hint}")
    return state


__all__ = [
    "ALLOWED_GLOBALS", "CheckpointError", "CheckpointWriter", "capture_rng_state", "load_checkpoint", "resolve_checkpoint",
    "prune_step_checkpoints", "restore_rng_state", "save_checkpoint", "snapshot_state",
]
