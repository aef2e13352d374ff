"""The training step as a library function: what ``multisk train``, the benchmarks and users all call.

    optimizer = build_optimizer(cfg.train, model)
    scaler = make_grad_scaler(device, cfg.train.precision)
    step = make_train_step(model, objective, optimizer, scaler, cfg.train.precision,
                           grad_clip=cfg.train.grad_clip)
    for batch in DevicePrefetcher(loader, device):
        out = step(batch)          # StepOutput: losses (device tensors), finite (device bool), applied

One step (:class:`TrainStep`):

    forward   losses = objective(model(batch), model.anchors)        under autocast (precision)
    backward  scaler.scale(losses["loss"]).backward()                 (DDP all-reduces the gradients)
    clip      g ← g · min(1, grad_clip / ‖g‖₂)  over all parameters   (after unscaling; grad_clip > 0)
    update    scaler.step(optimizer); scaler.update()                 (fp16: GradScaler skips inf steps)
    EMA       ema ← decay · ema + (1 − decay) · w                     (torch._foreach_lerp_, rank 0 only)

Host synchronisation: none in the default ``on_nonfinite="stop"`` mode — ``StepOutput.finite`` stays on
the device and :class:`NonFiniteWatch` remembers the first bad step without a sync, to be checked every
N steps by the caller. ``on_nonfinite="skip"`` must decide before the backward whether to apply the step,
so it reads the flag on the host (all-reduced under DDP so every rank takes the same branch): one sync
per step, the price of exact skipping. (fp16's GradScaler reads its inf flag on the host unless the
optimizer is fused, as it is on CUDA.)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from multisk.config import TrainConfig
from multisk.precision import AUTOCAST_DTYPES, autocast_context  # re-exported: part of the step API


@dataclass
class TrainState:
    """Where a run is. ``batch_in_epoch`` counts GLOBAL batches (the unit under any world size);
    ``global_step`` counts optimizer steps; ``skipped_batches`` those dropped by ``on_nonfinite=skip``."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    skipped_batches: int = 0


@dataclass
class StepOutput:
    """``losses``: the objective's dict (device tensors, ``"loss"`` with its graph released);
    ``finite``: 0-dim bool device tensor, all loss terms finite on this rank; ``applied``: whether the
    optimizer step was taken (False only in skip mode on a non-finite batch)."""

    losses: Dict[str, Tensor]
    finite: Tensor
    applied: bool


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active for fp16 only (bf16 and fp32 need no loss scaling)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def build_optimizer(train_cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam / AdamW (``train.optimizer``) over the parameters that require a gradient, with ``train.lr``
    and ``train.weight_decay``; the fused kernel when the parameters live on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("build_optimizer: the model has no parameter that requires a gradient")
    kwargs: Dict[str, Any] = {"lr": train_cfg.lr, "weight_decay": train_cfg.weight_decay}
    if params[0].is_cuda:
        kwargs["fused"] = True
    cls = torch.optim.AdamW if train_cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, **kwargs)


class ExponentialMovingAverage:
    """An exponential moving average of a model's state (parameters and floating buffers).

    After each optimizer step :meth:`update` does ``e ← decay · e + (1 − decay) · w`` for every floating
    tensor of ``model.state_dict()`` in one ``torch._foreach_lerp_`` (no host sync, no module copy);
    integer buffers (BatchNorm's ``num_batches_tracked``) are copied. The first update copies ``w``
    (as ``torch.optim.swa_utils.AveragedModel`` does). :meth:`state_dict` uses AveragedModel's layout,
    ``{"module.<name>": tensor, "n_averaged": int64}``, which ``multisk eval --ema`` reads.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ExponentialMovingAverage: decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        sources = model.state_dict(keep_vars=True)
        self.names: List[str] = list(sources)
        self._sources: List[Tensor] = [t.detach() for t in sources.values()]
        self.tensors: List[Tensor] = [t.clone() for t in self._sources]
        self._floating = [i for i, t in enumerate(self.tensors) if t.is_floating_point()]
        self._other = [i for i, t in enumerate(self.tensors) if not t.is_floating_point()]
        self.n_averaged = 0

    @torch.no_grad()
    def update(self) -> None:
        ema_f = [self.tensors[i] for i in self._floating]
        src_f = [self._sources[i] for i in self._floating]
        if self.n_averaged == 0:
            torch._foreach_copy_(ema_f, src_f)
        else:
            torch._foreach_lerp_(ema_f, src_f, 1.0 - self.decay)
        for i in self._other:
            self.tensors[i].copy_(self._sources[i])
        self.n_averaged += 1

    def state_dict(self) -> Dict[str, Tensor]:
        state = {f"module.{name}": t for name, t in zip(self.names, self.tensors)}
        state["n_averaged"] = torch.tensor(self.n_averaged, dtype=torch.long)
        return state

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        missing = [n for n in self.names if f"module.{n}" not in state]
        if missing:
            raise KeyError(f"EMA state lacks {missing[:5]}")
        for name, tensor in zip(self.names, self.tensors):
            tensor.copy_(state[f"module.{name}"])
        self.n_averaged = int(state.get("n_averaged", torch.tensor(1)))


class TrainStep:
    """One optimizer step on one batch (module docstring). Build with :func:`make_train_step`."""

    def __init__(self, model: nn.Module, objective: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, precision: str, *, forward_module: Optional[nn.Module] = None,
                 grad_clip: float = 0.0, on_nonfinite: str = "stop",
                 ema: Optional[ExponentialMovingAverage] = None) -> None:
        if precision not in AUTOCAST_DTYPES:
            raise ValueError(f"precision: expected one of {sorted(AUTOCAST_DTYPES)}, got {precision!r}")
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite: expected 'stop' or 'skip', got {on_nonfinite!r}")
        self.model = model
        self.forward_module = forward_module if forward_module is not None else model
        self.objective = objective
        self.optimizer = optimizer
        self.scaler = scaler
        self.precision = precision
        self.grad_clip = float(grad_clip)
        self.on_nonfinite = on_nonfinite
        self.ema = ema
        self.device = next(model.parameters()).device
        self._params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, batch: Mapping[str, Any]) -> StepOutput:
        with autocast_context(self.device, self.precision):
            output = self.forward_module(batch)
            losses = self.objective(output, self.model.anchors)
        loss = losses["loss"]
        finite = torch.isfinite(loss.detach())
        if self.on_nonfinite == "skip" and not _all_ranks_true(finite):
            self.optimizer.zero_grad(set_to_none=True)
            return StepOutput(_detached(losses), finite, applied=False)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        return StepOutput(_detached(losses), finite, applied=True)


def make_train_step(model: nn.Module, objective: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, precision: str, *, forward_module: Optional[nn.Module] = None,
                    grad_clip: float = 0.0, on_nonfinite: str = "stop",
                    ema: Optional[ExponentialMovingAverage] = None) -> TrainStep:
    """The step the trainer runs. ``forward_module``: what to call for the forward (the DDP wrapper
    under torchrun; default ``model``); ``model`` provides ``anchors`` and the parameters to clip."""
    return TrainStep(model, objective, optimizer, scaler, precision, forward_module=forward_module,
                     grad_clip=grad_clip, on_nonfinite=on_nonfinite, ema=ema)


def _detached(losses: Dict[str, Tensor]) -> Dict[str, Tensor]:
    return {k: v.detach() for k, v in losses.items()}


def _all_ranks_true(flag: Tensor) -> bool:
    """Host-side AND of a 0-dim bool over all ranks (one sync; an all-reduce under DDP)."""
    value = flag.to(torch.float32)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)


def losses_to_floats(losses: Mapping[str, Tensor], world_size: int = 1) -> Dict[str, float]:
    """All loss terms as floats in one host transfer; under DDP the mean over ranks, which is the
    single-process value on the global batch (each rank's terms are its share times world size).
    Keys: ``loss`` and ``loss/<term>``."""
    keys = list(losses)
    stacked = torch.stack([losses[k].detach().float().reshape(()) for k in keys])
    if world_size > 1:
        dist.all_reduce(stacked)
        stacked = stacked / world_size
    values = stacked.cpu().tolist()
    return {f"loss/{k}" if k != "loss" else "loss": v for k, v in zip(keys, values)}


class NonFiniteWatch:
    """Remembers, on the device, the first step whose loss terms were not all finite (no host sync);
    :meth:`check` reads it (one sync, an all-reduce under DDP) and returns a diagnostic or None.

    The ids of the last ``history`` batches are kept on the host, so the diagnostic names the batch when
    the check interval is at most ``history`` steps.
    """

    def __init__(self, device: torch.device, history: int) -> None:
        self.device = device
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.keys: Optional[List[str]] = None
        self.bad_terms: Optional[Tensor] = None
        self.recent: Deque[Tuple[int, int, int, List[Any]]] = deque(maxlen=max(1, history))

    def record(self, step: int, losses: Mapping[str, Tensor], epoch: int, batch_in_epoch: int,
               ids: Iterable[Any]) -> None:
        """Note step ``step`` (1-based) with its loss terms and the ids of its batch."""
        if self.keys is None:
            self.keys = list(losses)
            self.bad_terms = torch.zeros(len(self.keys), dtype=torch.bool, device=self.device)
        terms = torch.stack([losses[k].detach().float().reshape(()) for k in self.keys])
        bad = ~torch.isfinite(terms)
        first = (self.first_bad_step < 0) & bad.any()
        self.first_bad_step = torch.where(first, torch.full_like(self.first_bad_step, step), self.first_bad_step)
        self.bad_terms = torch.where(first, bad, self.bad_terms)
        self.recent.append((step, epoch, batch_in_epoch, list(ids)))

    def check(self, world_size: int = 1) -> Optional[str]:
        """None when every recorded step was finite on every rank; otherwise the diagnostic."""
        flag = (self.first_bad_step >= 0).to(torch.float32).reshape(1)
        if world_size > 1:
            flag = flag.clone()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() == 0:
            return None
        step = int(self.first_bad_step.item())
        if step < 0:
            return "non-finite loss on another rank (this rank's terms stayed finite)"
        assert self.keys is not None and self.bad_terms is not None
        terms = [k for k, b in zip(self.keys, self.bad_terms.tolist()) if b]
        where = next(((e, b, ids) for s, e, b, ids in self.recent if s == step), None)
        if where is None:
            return f"non-finite loss at step {step}: terms {terms}; batch ids unknown (checked too late)"
        epoch, batch, ids = where
        more = " ..." if len(ids) > 8 else ""
        return (f"non-finite loss at step {step} (epoch {epoch}, batch {batch}): terms {terms}; "
                f"batch ids {ids[:8]}{more}")


# ------------------------------------------------------------------------------ feeding the step
def move_batch(batch: Mapping[str, Any], device: torch.device) -> Dict[str, Any]:
    """Tensors to ``device`` (asynchronously from pinned memory); other values as they are. float16
    tensors (video features sent in half precision, ``data.video_transfer_dtype``) are widened to
    float32 on the device, after the transfer."""
    return {k: (_to_device(v, device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _to_device(tensor: Tensor, device: torch.device) -> Tensor:
    moved = tensor.to(device, non_blocking=True)
    return moved.float() if moved.dtype == torch.float16 else moved


class DevicePrefetcher:
    """Iterate a DataLoader's batches already on ``device``.

    On CUDA the copy of batch i+1 is issued on a side stream while batch i is being trained on, from
    the loader's pinned memory with ``non_blocking``, so the host→device transfer overlaps compute;
    the compute stream waits for the copy only when it uses the batch. Elsewhere the batches are moved
    as they come.
    """

    def __init__(self, loader: Iterable[Mapping[str, Any]], device: torch.device) -> None:
        self.loader = loader
        self.device = device

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        if self.device.type != "cuda":
            for batch in self.loader:
                yield move_batch(batch, self.device)
            return
        copy_stream = torch.cuda.Stream(self.device)
        source = iter(self.loader)
        pending = self._issue(source, copy_stream)
        while pending is not None:
            compute_stream = torch.cuda.current_stream(self.device)
            compute_stream.wait_stream(copy_stream)
            for value in pending.values():
                if torch.is_tensor(value):  # allocated on the copy stream, used on the compute stream
                    value.record_stream(compute_stream)
            batch, pending = pending, self._issue(source, copy_stream)
            yield batch

    def _issue(self, source: Iterator[Mapping[str, Any]], stream) -> Optional[Dict[str, Any]]:
        try:
            host_batch = next(source)
        except StopIteration:
            return None
        with torch.cuda.stream(stream):
            return move_batch(host_batch, self.device)


__all__ = [
    "AUTOCAST_DTYPES", "DevicePrefetcher", "ExponentialMovingAverage", "NonFiniteWatch", "StepOutput",
    "TrainState", "TrainStep", "autocast_context", "build_optimizer", "losses_to_floats", "make_grad_scaler",
    "make_train_step", "move_batch",
]
