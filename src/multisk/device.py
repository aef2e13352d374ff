"""The device a process runs on, from a ``train.device`` / ``--device`` value; used by training (one GPU per
torchrun process) and by the evaluation and search commands."""

from __future__ import annotations

import torch

from multisk.errors import ConfigError


def pick_device(spec: str, local_rank: int = 0, local_world_size: int = 1) -> torch.device:
    """``auto`` / ``cuda`` → ``cuda:{local_rank}`` (one GPU per process under torchrun), ``cpu`` → CPU.

    An explicit ``cuda:N`` is kept in a single process; under torchrun with several processes per node
    it would put them all on GPU N, which is refused.
    """
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"train.device: {spec!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={spec!r} but CUDA is not available on this machine")
        if device.index is None:
            return torch.device(f"cuda:{local_rank}")
        if local_world_size > 1:
            raise ConfigError(f"train.device={spec!r}: under torchrun with {local_world_size} processes per node "
                              f"every process would use GPU {device.index}; use train.device=cuda (each process "
                              f"takes cuda:LOCAL_RANK)")
    return device


__all__ = ["pick_device"]
