"""The training application: ``multisk train --config FILE [key=value ...] [--resume auto|latest|PATH]``.

One process by default; under ``torchrun`` ``train.batch_size`` is still the GLOBAL batch: each of the
W processes takes ``batch_size / W`` items of every global batch (:mod:`multisk.train.sampling`), the
model is wrapped in DDP and the losses use the global batch, so a W-process run follows the
single-process run on the same batches. The step itself is :mod:`multisk.train.step`; this module is
the loop around it: data position, logging, checkpoints, evaluation, resume (docs/training.md).

Outputs in ``train.output_dir``: ``config.yaml``, ``metrics.jsonl`` (one JSON object per logged step or
evaluation; the first record of a run gives world size and batch sizes), ``tensorboard/``,
``checkpoints/epoch_N.pt`` + ``latest.pt`` (+ ``step_N.pt`` when ``train.checkpoint_every`` is set),
``results.json`` (final evaluation) and ``plots/``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from multisk.checkpoint import (
    CheckpointWriter,
    capture_rng_state,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng_state,
)
from multisk.config import Config, ConfigError, config_to_dict, config_to_yaml
from multisk.evaluate.pipeline import evaluate_model
from multisk.losses import TrainingObjective
from multisk.precision import configure_model_math
from multisk.evaluate.inputs import eval_store_dataset
from multisk.prior import build_model_with_prior, prior_of, training_mix
from multisk.prior.fit import choose_prior_weight, fit_text_space_prior
from multisk.train.datasets_for_config import build_eval_datasets, build_train_dataset, collate_fn_for, loader_options
from multisk.train.process_group import (
    DistributedContext,
    cleanup_distributed,
    gather_objects,
    host_barrier,
    init_distributed,
    watch_collectives,
)
from multisk.train.sampling import ResumableBatchSampler
from multisk.train.step import (
    DevicePrefetcher,
    ExponentialMovingAverage,
    NonFiniteWatch,
    StepOutput,
    TrainState,
    build_optimizer,
    losses_to_floats,
    make_grad_scaler,
    make_train_step,
)

# Evaluation runs in float32 whatever the training precision, as `multisk eval` does by default (the
# reference evaluates outside autocast), so results.json equals `multisk eval` on the final checkpoint.
EVAL_PRECISION = "fp32"
EVAL_BATCH_SIZE = 256


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the loss terms and the batch."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


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
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        from torch.utils.tensorboard import SummaryWriter  # heavy optional dependency

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


@dataclass
class Run:
    """Everything one training run holds; built by :func:`_build_run`."""

    cfg: Config
    ctx: DistributedContext
    out: Path
    dataset: Dataset
    model: torch.nn.Module
    objective: TrainingObjective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: Optional[ExponentialMovingAverage]
    step: Any  # multisk.train.step.TrainStep
    state: TrainState
    batches_per_epoch: int
    total_steps: int
    eval_sets: Dict[str, Any]
    watch: NonFiniteWatch
    log: Optional[MetricsLog] = None
    val_set: Any = None  # data.val_split, fed like an evaluation split (rank 0); model.prior's choices
    prior_report: Dict[str, Any] = field(default_factory=dict)
    resumed_from: Optional[Path] = None
    saved_at_step: int = -1  # decided from values every rank shares, never from files (multi-node safe)
    rate_origin: Dict[str, float] = field(default_factory=dict)
    writer: CheckpointWriter = field(default_factory=CheckpointWriter)


def train(cfg: Config, *, resume: Optional[str] = None, progress: bool = True,
          make_plots: bool = True) -> Dict[str, Any]:
    """Train (and finally evaluate) according to ``cfg``; returns the final results dict (rank 0)."""
    ctx = init_distributed(cfg.train.device, cfg.train.barrier_timeout_s, cfg.train.collective_timeout_s)
    run = None
    try:
        run = _build_run(cfg, ctx, resolve_resume(resume))
        _run_epochs(run, progress)
        run.writer.wait()  # the last checkpoint is on disk before evaluation and return
        return _finish(run, make_plots)
    finally:
        if run is not None:
            run.writer.join()  # a failing run still finishes the checkpoint it is writing
        cleanup_distributed()


def resolve_resume(resume: Optional[str]) -> Optional[str]:
    """``--resume auto`` (the CLI's default): ``latest`` when torchrun restarted this process after a failure
    (``TORCHELASTIC_RESTART_COUNT`` > 0), a fresh start otherwise; any other value is returned as given."""
    if resume != "auto":
        return resume
    return "latest" if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0 else None


# ------------------------------------------------------------------------------------ building a run
def _build_run(cfg: Config, ctx: DistributedContext, resume: Optional[str]) -> Run:
    device = ctx.device
    # identical initialisation on every rank (DDP also broadcasts, but the objective's state is not DDP's)
    seed_everything(cfg.train.seed)
    dataset = build_train_dataset(cfg)
    per_rank = _per_rank_batch_size(cfg, ctx)
    if device.type == "cuda":  # cudnn.benchmark; TF32 for the model only in fp32 runs (never the losses)
        configure_model_math(cfg.train.precision)
    # the full config: with SSPC off the model skips the anchor scores in training and freezes the anchors
    # (no gradient would reach them, which DDP rejects at the second step); with model.prior, the paper's
    # model wrapped with its text-space prior (multisk.prior)
    model = build_model_with_prior(cfg).to(device)
    if cfg.train.sync_batchnorm and ctx.enabled:
        if device.type != "cuda":
            raise ConfigError("train.sync_batchnorm: SyncBatchNorm needs CUDA devices; set it to false on CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    objective = TrainingObjective(cfg.loss, cfg.model, model.joint_names, process_group=ctx.loss_group,
                                  contrastive_embeddings=training_mix(cfg.model)).to(device)
    optimizer = build_optimizer(cfg.train, model)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.train.lr_gamma)
    scaler = make_grad_scaler(device, cfg.train.precision)
    state = TrainState()
    ckpt_path = resolve_checkpoint(resume, cfg.train.output_dir) if resume else None
    ema_state = None
    if ckpt_path is not None:
        ema_state = _restore(ckpt_path, cfg, ctx, model, objective, optimizer, scheduler, scaler, state)
    elif cfg.train.init_checkpoint:
        _load_initial_weights(cfg, model)
    val_set = eval_store_dataset(cfg, cfg.data.root, cfg.data.val_split) if cfg.data.val_split else None
    prior_report: Dict[str, Any] = {}
    prior = prior_of(model)
    if prior is not None and not bool(prior.fitted):
        # closed form on the training split, identically on every rank (no collective needed)
        prior_report = fit_text_space_prior(model, cfg, dataset, val_set)
    # the EMA lives on rank 0 only: it is read only by rank 0's checkpoints and evaluations
    ema = None
    if cfg.train.ema_decay > 0 and ctx.is_main:
        ema = ExponentialMovingAverage(model, cfg.train.ema_decay)  # starts from the (loaded) weights
        if ema_state is not None:
            ema.load_state_dict(ema_state)
    forward_module: torch.nn.Module = model
    if ctx.enabled:
        # model.audio_skip_empty: a rank whose share of the batch has no sound skips the audio encoder, so
        # its parameters get no gradient there; DDP must then look for unused parameters every step (they
        # count as zero in the all-reduce, and stay None only when no rank used them, as in one process)
        forward_module = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True,
            find_unused_parameters=bool(cfg.model.audio_skip_empty), **_no_forward_buffer_sync())
    step = make_train_step(model, objective, optimizer, scaler, cfg.train.precision, forward_module=forward_module,
                           grad_clip=cfg.train.grad_clip, on_nonfinite=cfg.train.on_nonfinite, ema=ema)
    sampler = ResumableBatchSampler(len(dataset), cfg.train.batch_size, seed=cfg.train.seed,
                                    rank=ctx.rank, world_size=ctx.world_size)
    total_steps = cfg.train.epochs * sampler.batches_per_epoch
    if cfg.train.steps > 0:
        total_steps = min(total_steps, cfg.train.steps)
    run = Run(cfg=cfg, ctx=ctx, out=Path(cfg.train.output_dir), dataset=dataset, model=model, objective=objective,
              optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema, step=step, state=state,
              batches_per_epoch=sampler.batches_per_epoch, total_steps=total_steps,
              eval_sets=build_eval_datasets(cfg) if ctx.is_main else {},
              watch=NonFiniteWatch(device, history=cfg.train.nonfinite_check_every), resumed_from=ckpt_path,
              val_set=val_set if ctx.is_main else None, prior_report=prior_report,
              writer=CheckpointWriter(background=cfg.train.async_checkpoint))
    _open_outputs(run, per_rank)
    return run


def _no_forward_buffer_sync() -> Dict[str, bool]:
    """DDP keyword that stops broadcasting rank 0's buffers before every forward: only rank 0's buffers
    (BatchNorm statistics) are ever read — by its checkpoints, evaluation and EMA — and rank 0's own
    buffers evolve identically either way. (Buffers are still made equal once, when DDP is built, where
    the newer keyword ``forward_sync_buffers`` exists; ``broadcast_buffers`` is its older name.)"""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _per_rank_batch_size(cfg: Config, ctx: DistributedContext) -> int:
    if cfg.train.batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is the global batch and must divide into the "
                          f"{ctx.world_size} torchrun processes (choose a multiple of {ctx.world_size})")
    return cfg.train.batch_size // ctx.world_size


def _restore(path: Path, cfg: Config, ctx: DistributedContext, model, objective, optimizer, scheduler, scaler,
             state: TrainState) -> Optional[Dict[str, torch.Tensor]]:
    """Load a checkpoint (onto the CPU: the live tensors receive copies, the optimizer casts its state
    to the parameters' device) into the run's objects and ``state``; returns the EMA state, if any.
    The loaded dict is dropped on return, so no second copy of the weights stays resident."""
    saved = load_checkpoint(path)
    if "global_batch_size" not in saved and isinstance(saved["rng"], list) and len(saved["rng"]) > 1:
        raise ConfigError(f"{path}: written by {len(saved['rng'])} processes of an older multisk, whose "
                          f"train.batch_size was per process; its data position cannot be carried over. Start "
                          f"from its weights with train.init_checkpoint={path} instead")
    saved_batch = saved.get("global_batch_size", cfg.train.batch_size)
    if saved_batch != cfg.train.batch_size:
        raise ConfigError(f"train.batch_size: {path} was trained with a global batch of {saved_batch}, this run "
                          f"asks for {cfg.train.batch_size}; its data position (epoch {saved['epoch']}, global "
                          f"batch {saved['batch_in_epoch']}) would mean other data. Resume with "
                          f"train.batch_size={saved_batch} (any number of processes that divides it)")
    model.load_state_dict(saved["model"])
    objective.load_state_dict(saved["objective"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    state.epoch, state.batch_in_epoch = saved["epoch"], saved["batch_in_epoch"]
    state.global_step, state.skipped_batches = saved["global_step"], saved.get("skipped_batches", 0)
    rng = saved["rng"] if isinstance(saved["rng"], list) else [saved["rng"]]
    saved_world = saved.get("world_size", len(rng))
    if saved_world == ctx.world_size and len(rng) == ctx.world_size:
        restore_rng_state(rng[ctx.rank])
    else:
        # the data order continues exactly (it is a function of seed, epoch and global batch); the random
        # streams (dropout, clip sampling in workers) of a different set of ranks cannot, so each rank
        # draws fresh ones determined by (seed, step, rank)
        seed_everything(cfg.train.seed * 1_000_003 + state.global_step * 1_009 + ctx.rank)
        if ctx.is_main:
            tqdm.write(f"note: {path} was written by {saved_world} processes, resuming on {ctx.world_size}: the "
                       f"data continues exactly at epoch {state.epoch}, global batch {state.batch_in_epoch}; "
                       f"random streams are re-seeded per rank")
    return saved.get("ema")


def _load_initial_weights(cfg: Config, model: torch.nn.Module) -> None:
    """``train.init_checkpoint``: model weights only (fine-tuning); everything else starts fresh."""
    init = load_checkpoint(cfg.train.init_checkpoint, require=("model",))
    try:
        missing, unexpected = model.load_state_dict(init["model"], strict=False)
        problem = f"missing {missing[:5]}, unexpected {unexpected[:5]}" if missing or unexpected else ""
    except RuntimeError as err:  # shape mismatches
        problem = str(err).splitlines()[-1].strip()
    if problem:
        raise ConfigError(f"train.init_checkpoint: {cfg.train.init_checkpoint} does not match the configured "
                          f"model ({problem})")


def _open_outputs(run: Run, per_rank: int) -> None:
    ctx, state = run.ctx, run.state
    if ctx.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "config.yaml").write_text(config_to_yaml(run.cfg), encoding="utf-8")
        stale = run.out / "checkpoints" / "latest.pt"
        if run.resumed_from is None and stale.exists():
            # a fresh run: latest.pt must never name an earlier run's checkpoint, or a restart of this run
            # before its first checkpoint (--resume auto) would continue that one. Only the link goes.
            stale.unlink()
    run.log = MetricsLog(run.out, ctx.is_main, state.global_step if run.resumed_from is not None else None)
    run.log.write({"step": state.global_step, "world_size": ctx.world_size,
                   "global_batch_size": run.cfg.train.batch_size, "per_rank_batch_size": per_rank})
    if ctx.is_main:
        tqdm.write(f"training: {ctx.world_size} process(es) on {ctx.device}, global batch {run.cfg.train.batch_size} "
                   f"= {ctx.world_size} x {per_rank} per process; {run.batches_per_epoch} global batches per epoch")


# -------------------------------------------------------------------------------------------- loop
def _run_epochs(run: Run, progress: bool) -> None:
    cfg, state = run.cfg, run.state
    bar = tqdm(total=run.total_steps, initial=state.global_step, disable=not (progress and run.ctx.is_main),
               desc="train", dynamic_ncols=True, unit="step")
    run.rate_origin = {"step": state.global_step, "time": time.perf_counter()}
    run.model.train()
    done = state.global_step >= run.total_steps
    while not done and state.epoch < cfg.train.epochs:
        for batch in DevicePrefetcher(_epoch_loader(run), run.ctx.device):
            with watch_collectives(run.ctx, f"training step {state.global_step + 1}"):
                done = _train_on(run, batch, bar)
            if done:
                break
        if state.batch_in_epoch >= run.batches_per_epoch:
            run.scheduler.step()
            state.epoch += 1
            state.batch_in_epoch = 0
            with watch_collectives(run.ctx, f"checkpoint epoch_{state.epoch}.pt"):
                _save(run, f"epoch_{state.epoch}.pt")
    bar.close()
    if run.saved_at_step != state.global_step:  # ended off an epoch boundary (or resumed with nothing to do)
        with watch_collectives(run.ctx, f"final checkpoint step_{state.global_step}.pt"):
            _save(run, f"step_{state.global_step}.pt")


def _train_on(run: Run, batch: Dict[str, Any], bar: tqdm) -> bool:
    """One step on ``batch`` and what follows it (logging, checkpoints, evaluation); True when the run is done."""
    state = run.state
    out = run.step(batch)
    if not out.applied:
        _note_skipped(run, out, batch)
        return False
    state.global_step += 1
    state.batch_in_epoch += 1
    run.watch.record(state.global_step, out.losses, state.epoch, state.batch_in_epoch - 1, batch.get("id", []))
    bar.update(1)
    _after_step(run, out, bar)
    return state.global_step >= run.total_steps


def _epoch_loader(run: Run) -> DataLoader:
    """This rank's share of the current epoch from the current global batch on."""
    cfg, ctx, state = run.cfg, run.ctx, run.state
    if hasattr(run.dataset, "set_epoch"):  # HowTo100M draws new clips every epoch, reproducibly
        run.dataset.set_epoch(state.epoch)
    sampler = ResumableBatchSampler(len(run.dataset), cfg.train.batch_size, seed=cfg.train.seed, epoch=state.epoch,
                                    start_batch=state.batch_in_epoch, rank=ctx.rank, world_size=ctx.world_size)
    # the loader draws its workers' base seed from this generator, not from the global torch RNG: a run
    # resumed mid-epoch creates one loader more than an uninterrupted run, and must not draw once more
    # from the stream dropout uses (nor give its workers other seeds)
    seeds = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + state.epoch)
    return DataLoader(run.dataset, batch_sampler=sampler, collate_fn=collate_fn_for(run.dataset), generator=seeds,
                      **loader_options(cfg, ctx.device.type))


def _after_step(run: Run, out: StepOutput, bar: tqdm) -> None:
    cfg, state = run.cfg, run.state
    step = state.global_step
    if step % cfg.train.nonfinite_check_every == 0:
        _stop_if_nonfinite(run)
    if step % cfg.train.log_every == 0 or step == run.total_steps:
        values = losses_to_floats(out.losses, run.ctx.world_size)
        elapsed = time.perf_counter() - run.rate_origin["time"]
        rate = (step - run.rate_origin["step"]) * cfg.train.batch_size / max(elapsed, 1e-9)
        run.log.write({"step": step, "epoch": state.epoch, "lr": run.optimizer.param_groups[0]["lr"],
                       "samples_per_s": rate, **values})
        bar.set_postfix(loss=f"{values['loss']:.4f}", samples_s=f"{rate:.0f}")
    if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
        _save(run, f"step_{step}.pt")
    if cfg.train.eval_every and step % cfg.train.eval_every == 0 and cfg.data.eval_splits:
        evaluation = _evaluate(run)
        run.log.write({"step": step, **_flatten_eval(evaluation)})


def _note_skipped(run: Run, out: StepOutput, batch: Dict[str, Any]) -> None:
    """``on_nonfinite=skip``: the step was not applied; the batch still counts as consumed."""
    state = run.state
    values = losses_to_floats(out.losses)
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    ids = batch.get("id", [])
    tqdm.write(f"warning: non-finite loss at step {state.global_step + 1} (epoch {state.epoch}, batch "
               f"{state.batch_in_epoch}): {len(bad)} terms {bad[:4]}{' ...' if len(bad) > 4 else ''}; batch ids "
               f"{ids[:8]}{' ...' if len(ids) > 8 else ''}; skipping this batch")
    state.skipped_batches += 1
    state.batch_in_epoch += 1


def _stop_if_nonfinite(run: Run) -> None:
    """One host sync (all ranks take the same branch): raise if any step since the start was non-finite."""
    message = run.watch.check(run.ctx.world_size)
    if message is not None and run.cfg.train.on_nonfinite == "stop":
        raise NonFiniteLossError(message)


# ------------------------------------------------------------------------- checkpoints, evaluation
def _save(run: Run, name: str) -> None:
    """Collective: every rank contributes its RNG state; rank 0 writes; all meet at a host barrier."""
    _stop_if_nonfinite(run)  # never write a checkpoint of NaN weights
    ctx, state = run.ctx, run.state
    _choose_prior_weight(run)
    rng = gather_objects(ctx, capture_rng_state())
    if ctx.is_main:
        run.writer.save({
            "model": run.model.state_dict(),
            "objective": run.objective.state_dict(),
            "ema": run.ema.state_dict() if run.ema is not None else None,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "rng": rng,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "global_step": state.global_step,
            "skipped_batches": state.skipped_batches,
            "world_size": ctx.world_size,
            "global_batch_size": run.cfg.train.batch_size,
            "config": config_to_dict(run.cfg),
        }, run.out / "checkpoints" / name, keep_steps=run.cfg.train.keep_step_checkpoints)
    host_barrier(ctx, f"rank 0 writing checkpoint {name}")
    run.saved_at_step = state.global_step


def _choose_prior_weight(run: Run) -> None:
    """Rank 0: the prior's retrieval weight w for the current weights, on data.val_split, before every
    checkpoint (so each checkpoint carries the w chosen for it). Only rank 0 evaluates and saves."""
    prior = prior_of(run.model)
    if prior is None or run.cfg.model.prior.weight is not None or not run.ctx.is_main:
        return
    choice = choose_prior_weight(run.model, run.val_set, device=run.ctx.device, batch_size=EVAL_BATCH_SIZE)
    run.prior_report["weight_choice"] = choice
    run.log.write({"step": run.state.global_step, "prior/weight": choice["weight"],
                   "prior/val_rsum": max(c["rsum"] for c in choice["curve"])})


def _evaluate(run: Run, keep_embeddings: bool = False) -> Dict[str, Any]:
    """Rank 0 evaluates while the others wait at a host barrier (no NCCL collective pending)."""
    results: Dict[str, Any] = {}
    if run.ctx.is_main:
        run.model.eval()
        results = evaluate_model(run.model, run.eval_sets, device=run.ctx.device, precision=EVAL_PRECISION,
                                 batch_size=EVAL_BATCH_SIZE, keep_embeddings=keep_embeddings)
        run.model.train()
    host_barrier(run.ctx, "rank 0 evaluating")
    return results


def _finish(run: Run, make_plots: bool) -> Dict[str, Any]:
    results: Dict[str, Any] = {"steps": run.state.global_step, "skipped_batches": run.state.skipped_batches}
    prior = prior_of(run.model)
    if prior is not None:
        results["prior"] = {"weight": round(float(prior.mix_weight), 6), **run.prior_report}  # a float32 buffer
    if run.cfg.data.eval_splits:
        evaluation = _evaluate(run, keep_embeddings=True)
        if run.ctx.is_main:
            run.log.write({"step": run.state.global_step, **_flatten_eval(evaluation)})
            if make_plots:
                run.log.close()  # flush TensorBoard before the figures read the run
                from multisk.evaluate.run_figures import write_run_figures  # matplotlib: heavy, optional

                results["plots"] = [str(p) for p in write_run_figures(run.out, evaluation, run.eval_sets)]
            for entry in evaluation.values():
                entry.pop("embeddings", None)
            results["evaluation"] = evaluation
            (run.out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    run.log.close()
    return results


def _flatten_eval(evaluation: Dict[str, Any]) -> Dict[str, float]:
    flat: Dict[str, float] = {}
    for split, directions in evaluation.items():
        for direction, metrics in directions.get("retrieval", {}).items():
            for key in ("R1", "R5", "R10", "MedR"):
                if key in metrics:
                    flat[f"eval/{split}/{direction}/{key}"] = float(metrics[key])
    return flat


__all__ = ["NonFiniteLossError", "Run", "resolve_resume", "train"]
