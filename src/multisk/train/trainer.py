"""The training application: ``multisk train --config FILE [key=value ...] [--resume latest]``.

One process by default; under ``torchrun`` each process takes a shard of every global batch
(:mod:`multisk.train.sampling`), the model is wrapped in DDP and the losses use the global batch.

Outputs in ``train.output_dir``: ``config.yaml``, ``metrics.jsonl`` (one JSON object per logged step or
evaluation), ``tensorboard/``, ``checkpoints/epoch_N.pt`` + ``latest.pt`` (+ ``step_N.pt`` when
``train.checkpoint_every`` is set), ``results.json`` (final evaluation) and ``plots/``.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from multisk.config import Config, ConfigError, config_to_dict, config_to_yaml
from multisk.losses import TrainingObjective
from multisk.models import build_model
from multisk.train.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from multisk.train.data import build_eval_datasets, build_train_dataset, collate_fn_for
from multisk.train.distributed import DistributedContext, cleanup_distributed, init_distributed


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the loss terms and the batch."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def move_batch(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


class MetricsLog:
    """Append-only ``metrics.jsonl`` + TensorBoard, written by rank 0 only."""

    def __init__(self, output_dir: Path, enabled: bool, resume_step: Optional[int]) -> None:
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # drop what a killed run logged after the checkpoint we resume from, so the log reads as
            # one uninterrupted run
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
            self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=resume_step)

    def write(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _losses_to_floats(losses: Dict[str, torch.Tensor], world_size: int = 1) -> Dict[str, float]:
    """All loss terms as floats in one host transfer; under DDP the mean over ranks, which is the
    single-process value on the global batch (each rank's terms are its share times world size)."""
    keys = list(losses)
    stacked = torch.stack([losses[k].detach().float().reshape(()) for k in keys])
    if world_size > 1:
        torch.distributed.all_reduce(stacked)
        stacked = stacked / world_size
    values = stacked.cpu().tolist()
    return {f"loss/{k}" if k != "loss" else "loss": v for k, v in zip(keys, values)}


def _build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs: Dict[str, Any] = {"lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay}
    if next(iter(params)).is_cuda:
        kwargs["fused"] = True
    cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    return cls(params, **kwargs)


def train(cfg: Config, *, resume: Optional[str] = None, progress: bool = True,
          make_plots: bool = True) -> Dict[str, Any]:
    """Train (and finally evaluate) according to ``cfg``; returns the final results dict (rank 0)."""
    ctx = init_distributed(cfg.train.device)
    try:
        return _train(cfg, ctx, resume=resume, progress=progress, make_plots=make_plots)
    finally:
        cleanup_distributed()


def _train(cfg: Config, ctx: DistributedContext, *, resume: Optional[str], progress: bool,
           make_plots: bool) -> Dict[str, Any]:
    out = Path(cfg.train.output_dir)
    device = ctx.device
    # identical initialisation on every rank (DDP also broadcasts, but the objective's state is not DDP's)
    seed_everything(cfg.train.seed)
    dataset = build_train_dataset(cfg)
    collate = collate_fn_for(dataset)
    model = build_model(cfg.model).to(device)
    if cfg.train.sync_batchnorm and ctx.enabled:
        if device.type != "cuda":
            raise ConfigError("train.sync_batchnorm: SyncBatchNorm needs CUDA devices; set it to false on CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    objective = TrainingObjective(cfg.loss, cfg.model, model.joint_names).to(device)
    optimizer = _build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.train.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    ema = None
    if cfg.train.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay), use_buffers=True)

    epoch, batch_in_epoch, global_step = 0, 0, 0
    ckpt_path = resolve_checkpoint(resume, out) if resume else None
    if ckpt_path is not None:
        state = load_checkpoint(ckpt_path, map_location=device)
        model.load_state_dict(state["model"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            if state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            else:  # resuming a run saved without EMA: start the average from the resumed weights
                ema = type(ema)(model, multi_avg_fn=ema.multi_avg_fn, use_buffers=True)
        epoch, batch_in_epoch, global_step = state["epoch"], state["batch_in_epoch"], state["global_step"]
        restore_rng_state(state["rng"][ctx.rank] if isinstance(state["rng"], list) else state["rng"])
    elif resume and resume != "latest":
        raise FileNotFoundError(f"{resume}: checkpoint not found")
    elif cfg.train.init_checkpoint:
        init = load_checkpoint(cfg.train.init_checkpoint, map_location=device)
        try:
            missing, unexpected = model.load_state_dict(init["model"], strict=False)
            problem = f"missing {missing[:5]}, unexpected {unexpected[:5]}" if missing or unexpected else ""
        except RuntimeError as err:  # shape mismatches
            problem = str(err).splitlines()[-1].strip()
        if problem:
            raise ConfigError(f"train.init_checkpoint: {cfg.train.init_checkpoint} does not match the configured "
                              f"model ({problem})")
        if ema is not None:  # the average starts from the loaded weights, not the random ones
            ema = type(ema)(model, multi_avg_fn=ema.multi_avg_fn, use_buffers=True)

    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
    log = MetricsLog(out, ctx.is_main, global_step if ckpt_path is not None else None)

    train_model: torch.nn.Module = model
    if ctx.enabled:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    from multisk.train.sampling import ResumableBatchSampler

    def sampler_for(ep: int, start: int) -> ResumableBatchSampler:
        return ResumableBatchSampler(
            len(dataset), cfg.train.batch_size, seed=cfg.train.seed, epoch=ep, start_batch=start,
            rank=ctx.rank, world_size=ctx.world_size,
        )

    batches_per_epoch = sampler_for(0, 0).batches_per_epoch
    total_steps = cfg.train.epochs * batches_per_epoch
    if cfg.train.steps > 0:
        total_steps = min(total_steps, cfg.train.steps)
    eval_sets = build_eval_datasets(cfg) if ctx.is_main else {}

    def checkpoint_state() -> Dict[str, Any]:
        rng = capture_rng_state()
        if ctx.enabled:
            gathered: List[Any] = [None] * ctx.world_size
            torch.distributed.all_gather_object(gathered, rng)
            rng = gathered
        return {
            "model": model.state_dict(),
            "objective": objective.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "global_step": global_step,
            "config": config_to_dict(cfg),
        }

    saved_at_step = [-1]  # decided from values every rank shares, never from files (multi-node safe)

    def save(name: str) -> None:
        state = checkpoint_state()  # collective under DDP: every rank calls it
        if ctx.is_main:
            save_checkpoint(state, out / "checkpoints" / name)
        saved_at_step[0] = global_step

    def run_eval(keep_embeddings: bool = False) -> Dict[str, Any]:
        from multisk.evaluate.pipeline import evaluate_model

        model.eval()
        results = evaluate_model(model, eval_sets, device=device, precision=cfg.train.precision,
                                 batch_size=max(cfg.train.batch_size, 64), keep_embeddings=keep_embeddings)
        model.train()
        return results

    bar = tqdm(total=total_steps, initial=global_step, disable=not (progress and ctx.is_main),
               desc="train", dynamic_ncols=True, unit="step")
    model.train()
    samples_seen_t0, t0 = global_step, time.perf_counter()
    skipped = 0
    done = global_step >= total_steps
    while not done and epoch < cfg.train.epochs:
        if hasattr(dataset, "set_epoch"):  # HowTo100M draws new clips every epoch, reproducibly
            dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_sampler=sampler_for(epoch, batch_in_epoch), collate_fn=collate,
                            num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
        for batch in loader:
            batch = move_batch(batch, device)
            with autocast_context(device, cfg.train.precision):
                output = train_model(batch)
                losses = objective(output, model.anchors)
            loss = losses["loss"]
            finite = torch.isfinite(loss.detach()).float()
            if ctx.enabled:  # every rank must take the same branch, or DDP would hang
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            if not bool(finite):
                values = _losses_to_floats(losses)
                bad = [k for k, v in values.items() if not math.isfinite(v)]
                ids = batch.get("id", [])
                message = (f"non-finite loss at step {global_step} (epoch {epoch}, batch {batch_in_epoch}): "
                           f"terms {bad}; batch ids {ids[:8]}{' ...' if len(ids) > 8 else ''}")
                if cfg.train.on_nonfinite == "stop":
                    raise NonFiniteLossError(message)
                tqdm.write(f"warning: {message}; skipping this batch")
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                batch_in_epoch += 1
                continue
            scaler.scale(loss).backward()
            if cfg.train.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(model)
            global_step += 1
            batch_in_epoch += 1
            bar.update(1)

            if global_step % cfg.train.log_every == 0 or global_step == total_steps:
                values = _losses_to_floats(losses, ctx.world_size)
                elapsed = time.perf_counter() - t0
                rate = (global_step - samples_seen_t0) * cfg.train.batch_size * ctx.world_size / max(elapsed, 1e-9)
                record = {"step": global_step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                          "samples_per_s": rate, **values}
                log.write(record)
                bar.set_postfix(loss=f"{values['loss']:.4f}", samples_s=f"{rate:.0f}")
            if cfg.train.checkpoint_every and global_step % cfg.train.checkpoint_every == 0:
                save(f"step_{global_step}.pt")
            if cfg.train.eval_every and global_step % cfg.train.eval_every == 0 and ctx.is_main and eval_sets:
                log.write({"step": global_step, **_flatten_eval(run_eval())})
            if global_step >= total_steps:
                done = True
                break
        if batch_in_epoch >= batches_per_epoch:
            scheduler.step()
            epoch += 1
            batch_in_epoch = 0
            save(f"epoch_{epoch}.pt")
    bar.close()
    if saved_at_step[0] != global_step:  # the run ended off an epoch boundary (or resumed with nothing to do)
        save(f"step_{global_step}.pt")

    results: Dict[str, Any] = {"steps": global_step, "skipped_batches": skipped}
    if ctx.is_main and eval_sets:
        evaluation = run_eval(keep_embeddings=True)
        log.write({"step": global_step, **_flatten_eval(evaluation)})
        log.close()
        if make_plots:
            from multisk.evaluate.figures import write_run_figures

            results["plots"] = [str(p) for p in write_run_figures(out, evaluation, eval_sets)]
        for entry in evaluation.values():
            entry.pop("embeddings", None)
        results["evaluation"] = evaluation
        (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    log.close()
    return results


def _flatten_eval(evaluation: Dict[str, Any]) -> Dict[str, float]:
    flat: Dict[str, float] = {}
    for split, directions in evaluation.items():
        for direction, metrics in directions.get("retrieval", {}).items():
            for key in ("R1", "R5", "R10", "MedR"):
                if key in metrics:
                    flat[f"eval/{split}/{direction}/{key}"] = float(metrics[key])
    return flat


__all__ = ["NonFiniteLossError", "train"]
