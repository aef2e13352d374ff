"""FIFO memory of past embeddings (the paper's configuration: 5500 rows per space and modality; docs/losses.md) as module buffers.

Unlike the reference (queues as parameters pinned to ``cuda:0``, not checkpointed, initialised with
random non-unit rows, a defect of the reference not repeated here) an :class:`EmbeddingQueue` keeps everything in registered buffers, so it
follows ``.to(device)``, is saved in ``state_dict`` and restored on resume.

Semantics
---------
* ``rows`` (size, dim) is a ring buffer; ``write_position`` (0-dim int64) is the slot of the next row.
  The order of rows does not matter to the consumers (Sinkhorn targets are permutation-equivariant in
  the sample axis), so no ``torch.roll`` is ever needed: :meth:`enqueue` scatters a batch of B rows
  into slots ``(write_position + arange(B)) % size`` with ``index_copy_``.
* Initialisation ("so that early targets are meaningful"): :meth:`prime` — called by the SSPC loss
  with the first global batch *before* the first targets are computed, and by :meth:`enqueue` if
  nobody primed — fills the *whole* ring with repetitions of that batch (slot i = batch row i mod B).
  Until real rows have replaced them, the queue therefore holds actual embeddings of the model
  (unit-norm, in the right region of the sphere) instead of zeros or random vectors.
  ``initialized`` (0-dim bool) records that this happened.
* ``num_real`` (0-dim int64) counts the real rows written, saturating at ``size``; ``is_full`` (a
  0-dim bool tensor) says the ring has been filled with real rows once — the SSPC warm-up gate.
* Identical across ranks: the caller enqueues the *global* batch (gathered) on every rank.
* No host synchronisation: every update is index arithmetic on device tensors; the first-use fill is a
  branch-free ``torch.where`` on the ``initialized`` buffer (skipped, via a Python-side cache, once the
  module knows it has been initialised).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class EmbeddingQueue(nn.Module):
    """Ring buffer of the last ``size`` embeddings of width ``dim``.

    Buffers: ``rows`` (size, dim) ``dtype``; ``write_position``, ``num_real`` (0-dim int64);
    ``initialized`` (0-dim bool).
    """

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"EmbeddingQueue: size and dim must be positive, got size={size}, dim={dim}")
        self.size = int(size)
        self.dim = int(dim)
        self.register_buffer("rows", torch.zeros(self.size, self.dim, dtype=dtype))
        self.register_buffer("write_position", torch.zeros((), dtype=torch.int64))
        self.register_buffer("num_real", torch.zeros((), dtype=torch.int64))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # Python-side cache of `initialized`; False means "not known to be initialised" (always safe).
        self._known_initialized = False

    @property
    def is_full(self) -> torch.Tensor:
        """0-dim bool tensor: the ring has held ``size`` real rows at least once."""
        return self.num_real >= self.size

    @torch.no_grad()
    def prime(self, batch: torch.Tensor) -> None:
        """If the queue has never been written, fill every slot with repetitions of ``batch`` (B, dim):
        slot i <- batch[i mod B]. No-op afterwards (``num_real``/``write_position`` are untouched).

        Branch-free on the ``initialized`` buffer (no host sync); the Python-side cache only skips the
        work once the module knows the flag is set."""
        if self._known_initialized or batch.shape[0] == 0:
            return
        batch = batch.detach().to(device=self.rows.device, dtype=self.rows.dtype)
        repeated = batch.index_select(0, torch.arange(self.size, device=batch.device) % batch.shape[0])
        self.rows.copy_(torch.where(self.initialized, self.rows, repeated))
        self.initialized.fill_(True)
        self._known_initialized = True

    @torch.no_grad()
    def enqueue(self, batch: torch.Tensor) -> None:
        """Append ``batch`` (B, dim), overwriting the oldest rows. If B > size only the last size rows
        are kept (they are the newest). Gradient-free; no host synchronisation."""
        if batch.dim() != 2 or batch.shape[1] != self.dim:
            raise ValueError(f"EmbeddingQueue.enqueue: expected (B, {self.dim}), got {tuple(batch.shape)}")
        batch = batch.detach().to(device=self.rows.device, dtype=self.rows.dtype)
        if batch.shape[0] > self.size:
            batch = batch[-self.size :]
        count = batch.shape[0]
        if count == 0:
            return
        self.prime(batch)
        slots = (self.write_position + torch.arange(count, device=batch.device)) % self.size
        self.rows.index_copy_(0, slots, batch)
        self.write_position.copy_((self.write_position + count) % self.size)
        self.num_real.copy_(torch.clamp(self.num_real + count, max=self.size))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # The loaded `initialized` flag is authoritative; forget the cache so the next enqueue consults it.
        self._known_initialized = False

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, dtype={self.rows.dtype}"


__all__ = ["EmbeddingQueue"]
