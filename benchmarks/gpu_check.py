"""The prepared GPU check (issue 13): what the first CUDA device this project gets must run, in one go.

    python benchmarks/gpu_check.py --out gpu_report/            # one CUDA device, about 5-8 minutes
    python benchmarks/gpu_check.py --out /tmp/dry --dry-run     # every stage on the CPU at tiny sizes

Stages, in order (each is timed, and a failing stage is recorded and the next one still runs):

1. ``resume``     a resume round trip on a small config through the trainer (``multisk.train.trainer.train``):
                  4 steps straight vs 2 steps, then ``resume="latest"`` to step 4; the logged losses of
                  steps 3-4 must agree.
2. ``paper_step`` the paper-size training step through the trainer's step (``make_train_step``):
                  contrastive only vs + SSPC — ms per step, SSPC overhead, peak memory, TFLOP/s.
3. ``solver``     Multi-SK on 12 × 7660 × 64 inside and outside bf16 autocast against float64: error, ms
                  (goal ≤ 2 ms for the 12 problems), inside == outside.
4. ``sdpa``       scaled_dot_product_attention at the model's real layout (q, k, v views of one qkv
                  projection, key-padding mask) against the float32 math backend: error and ms.
5. ``trainer``    the trainer for a few steps in bf16 and fp16 with gradient clipping and EMA.
6. ``two_ranks``  two processes on one device over gloo, SSPC on and off: DDP through the step API,
                  losses of each step against one process on the global batch.

Writes ``report.json`` and ``report.md`` to ``--out``. Exit status 0 when every stage passed its check.
``--dry-run`` is run by the test suite (tests/cli/test_gpu_check.py), so the script cannot rot before a GPU
comes.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = ROOT / "configs" / "paper" / "howto100m_resnet_tva.yaml"
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
TEXT_DIM, VIDEO_DIM, N_MELS = 12, 16, 40
WORDS = ["cat", "dog", "car", "tree", "boat", "house", "a", "the", "small", "big"]
TINY_MODEL = ["model.embed_dim=64", "model.num_heads=4", "model.projection_dim=48", "model.num_anchors=8",
              "model.audio_width_divisor=32", "loss.sspc.queue_size=24", "loss.sspc.n_iters=5"]


# ------------------------------------------------------------------------------------------ helpers
class Timer:
    """Milliseconds of a callable: CUDA events on a GPU, perf_counter on the CPU; median of ``repeat``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, fn: Callable[[], Any], repeat: int, warmup: int = 1) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(self.device)
                times.append(start.elapsed_time(end))
            else:
                begin = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - begin))
        return statistics.median(times)


def write_store(root: Path, n_train: int = 48, n_test: int = 16, seed: int = 0) -> Path:
    """A small feature store with word-vector captions (some items without video or audio)."""
    from multisk.data.store.feature_store import FeatureStoreWriter
    from multisk.data.encoders.text import encode_text
    from multisk.data.encoders.word_vectors import load_word_vectors

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    vectors = root / "vectors.txt"
    lines = [f"{len(WORDS)} {TEXT_DIM}"] + [w + " " + " ".join(f"{x:.5f}" for x in rng.standard_normal(TEXT_DIM))
                                             for w in WORDS]
    vectors.write_text("\n".join(lines) + "\n", encoding="utf-8")
    kv = load_word_vectors(str(vectors), use_cache=False)
    encoder = {"name": str(vectors), "lowercase": False, "max_words": 20}
    for split, count in (("train", n_train), ("test", n_test)):
        with FeatureStoreWriter(root, split, {"text": TEXT_DIM, "video": VIDEO_DIM, "audio": N_MELS},
                                metadata={"text_encoder": encoder}) as writer:
            for i in range(count):
                c = int(rng.integers(6))
                caption = f"{WORDS[6 + int(rng.integers(4))]} {WORDS[c]}"
                video = None if i % 4 == 3 else rng.standard_normal((3, VIDEO_DIM)) + c
                audio = None if i % 3 == 2 else rng.standard_normal((int(rng.integers(40, 130)), N_MELS)) + c
                writer.add(f"{split}-{i}", {"text": encode_text(kv, caption), "video": video, "audio": audio},
                           caption=caption, category=WORDS[c])
    return root


def store_overrides(store: Path, out: Path, device: str, **extra: Any) -> List[str]:
    values = {
        "data.root": str(store), "data.modality_map.text": "text", "data.eval_splits": "[test]",
        "data.max_audio_frames": 128,
        "data.max_video_tokens": 3, "model.text_dim": TEXT_DIM, "model.video_dim": VIDEO_DIM,
        "model.embed_dim": 32, "model.num_heads": 4, "model.projection_dim": 24, "model.num_anchors": 8,
        "model.audio_width_divisor": 32, "loss.sspc.queue_size": 16, "train.batch_size": 8, "train.epochs": 2,
        "train.log_every": 1, "train.output_dir": str(out), "train.lr": 0.001, "train.device": device,
        # the demo's text-space prior needs a val split and Lite0 pictures for its concept head
        "model.prior.enabled": "false", "model.prior.concept_classes": 0, "data.val_split": "null",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def logged_losses(run_dir: Path) -> Dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and "step" in r}


def random_batch(cfg, batch_size: int, device: torch.device, seed: int = 0) -> Dict[str, torch.Tensor]:
    """A batch of the configured training shapes with random features and some padding."""
    gen = torch.Generator().manual_seed(seed)
    d, m = cfg.data, cfg.model
    shapes = {"text": (batch_size, d.max_text_tokens, m.text_dim), "video": (batch_size, d.max_video_tokens, m.video_dim),
              "audio": (batch_size, m.audio_mels, d.max_audio_frames)}
    batch = {}
    for name in m.modalities:
        batch[name] = torch.randn(shapes[name], generator=gen)
        length = shapes[name][2] if name == "audio" else shapes[name][1]
        valid = torch.randint(1, length + 1, (batch_size,), generator=gen)
        valid[0] = length
        batch[f"{name}_mask"] = (torch.arange(length)[None] < valid[:, None]).float()
    return {k: v.to(device) for k, v in batch.items()}


def build_step(cfg, device: torch.device):
    """Model, objective, optimizer and the trainer's step for ``cfg`` (anchors frozen without SSPC, as
    the trainer does)."""
    from multisk.losses import TrainingObjective
    from multisk.models import build_model
    from multisk.train.step import build_optimizer, make_grad_scaler, make_train_step

    model = build_model(cfg.model).to(device)
    if not cfg.loss.sspc.enabled:
        model.anchors.requires_grad_(False)
    objective = TrainingObjective(cfg.loss, cfg.model, model.joint_names).to(device)
    optimizer = build_optimizer(cfg.train, model)
    step = make_train_step(model, objective, optimizer, make_grad_scaler(device, cfg.train.precision),
                           cfg.train.precision)
    return model, objective, step


def _close_enough(a: float, b: float, tol: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= tol * max(1.0, abs(b))


# ------------------------------------------------------------------------------------------ stages
def stage_resume(ctx: Dict[str, Any]) -> Dict[str, Any]:
    from multisk.config import load_config
    from multisk.train.trainer import train

    work, device = ctx["work"], ctx["device_spec"]
    store = ctx.setdefault("store", write_store(work / "store"))
    straight, split = work / "resume_straight", work / "resume_split"
    half = 1 if ctx["dry_run"] else 2
    common = {"train.steps": 2 * half, "train.checkpoint_every": half, "data.eval_splits": "[]"}
    train(load_config(DEMO_CONFIG, store_overrides(store, straight, device, **common)), progress=False, make_plots=False)
    train(load_config(DEMO_CONFIG, store_overrides(store, split, device, **{**common, "train.steps": half})),
          progress=False, make_plots=False)
    train(load_config(DEMO_CONFIG, store_overrides(store, split, device, **common)), resume="latest",
          progress=False, make_plots=False)
    want, got = logged_losses(straight), logged_losses(split)
    resumed_steps = range(half + 1, 2 * half + 1)
    diffs = {step: abs(got[step] - want[step]) for step in resumed_steps if step in got and step in want}
    ok = len(diffs) == half and max(diffs.values()) <= 1e-4 * max(1.0, abs(want[2 * half]))
    return {"ok": ok, "steps_after_resume": list(resumed_steps), "final_loss_straight": want.get(2 * half),
            "final_loss_resumed": got.get(2 * half),
            "max_abs_loss_difference_after_resume": max(diffs.values()) if diffs else None}


def stage_paper_step(ctx: Dict[str, Any]) -> Dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    from multisk.config import load_config
    from multisk.precision import configure_model_math

    device, timer = ctx["device"], ctx["timer"]
    dry = ctx["dry_run"]
    batch_size = 8 if dry else 2160
    repeat = 1 if dry else 5
    result: Dict[str, Any] = {"batch": batch_size}
    for name, sspc in (("contrastive", False), ("sspc", True)):
        tiny = TINY_MODEL + ["data.max_audio_frames=128", "data.max_video_tokens=4", "data.max_text_tokens=6"]
        cfg = load_config(PAPER_CONFIG, (tiny if dry else []) + [f"loss.sspc.enabled={str(sspc).lower()}"])
        configure_model_math(cfg.train.precision)
        model, objective, step = build_step(cfg, device)
        batch = random_batch(cfg, batch_size, device)
        for _ in range(1 if dry else 2):  # the first step primes the queues and cuDNN's algorithm choice
            step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        ms = timer(lambda: step(batch), repeat=repeat, warmup=0)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        with FlopCounterMode(display=False) as counter:
            out = step(batch)
        flops = counter.get_total_flops()
        result[name] = {"ms": ms, "peak_memory_gib": None if peak is None else peak / 2**30,
                        "tflop_per_step": flops / 1e12, "tflop_per_s": flops / 1e12 / (ms / 1e3),
                        "loss": float(out.losses["loss"]), "finite": bool(out.finite)}
        del model, objective, step, batch
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["sspc_overhead"] = result["sspc"]["ms"] / result["contrastive"]["ms"] - 1.0
    result["ok"] = result["sspc"]["finite"] and result["contrastive"]["finite"]
    return result


def stage_solver(ctx: Dict[str, Any]) -> Dict[str, Any]:
    from multisk.sinkhorn import multi_sinkhorn

    device, timer = ctx["device"], ctx["timer"]
    problems, rows, anchors = (12, 300, 16) if ctx["dry_run"] else (12, 7660, 64)
    gen = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(problems, rows, 32, generator=gen), dim=-1)
    z = F.normalize(torch.randn(problems, anchors, 32, generator=gen), dim=-1)
    scores = (x @ z.transpose(1, 2)).to(device)
    n_assign = anchors // 2
    reference = multi_sinkhorn(scores.double(), n_assign)
    outside = multi_sinkhorn(scores, n_assign)
    autocast_dtype = torch.bfloat16
    with torch.autocast(device.type, dtype=autocast_dtype):
        inside = multi_sinkhorn(scores, n_assign)
    ms_outside = timer(lambda: multi_sinkhorn(scores, n_assign), repeat=20 if not ctx["dry_run"] else 3)

    def in_autocast():
        with torch.autocast(device.type, dtype=autocast_dtype):
            multi_sinkhorn(scores, n_assign)

    ms_inside = timer(in_autocast, repeat=20 if not ctx["dry_run"] else 3)
    error_outside = (outside.double() - reference).abs().max().item()
    error_inside = (inside.double() - reference).abs().max().item()
    inside_vs_outside = (inside - outside).abs().max().item()
    return {"shape": [problems, rows, anchors], "max_error_vs_float64": error_outside,
            "max_error_inside_autocast_vs_float64": error_inside, "inside_vs_outside_autocast": inside_vs_outside,
            "ms_outside_autocast": ms_outside, "ms_inside_autocast": ms_inside, "goal_ms": 2.0,
            "goal_met": ms_outside <= 2.0, "ok": error_outside <= 1e-4 and inside_vs_outside <= 1e-6}


def stage_sdpa(ctx: Dict[str, Any]) -> Dict[str, Any]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device, timer = ctx["device"], ctx["timer"]
    batch, heads, length, head_dim = (8, 4, 20, 16) if ctx["dry_run"] else (2160, 64, 20, 64)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    dim = heads * head_dim
    # the model's layout: one qkv projection (B, L, 3·D) viewed as (3, B, H, L, Dh) -- non-contiguous q, k, v
    qkv = torch.randn(batch, length, 3 * dim, generator=gen).to(device=device, dtype=dtype)
    q, k, v = qkv.reshape(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    valid = torch.randint(1, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None] < valid[:, None]).to(device)[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with sdpa_kernel(SDPBackend.MATH):
        reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        math_same_dtype = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ms_default = timer(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), repeat=10)

    def math_backend():
        with sdpa_kernel(SDPBackend.MATH):
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    ms_math = timer(math_backend, repeat=10)
    error = (out.float() - reference).abs().max().item()
    error_math = (math_same_dtype.float() - reference).abs().max().item()
    backends = {}
    if device.type == "cuda":
        backends = {"flash": torch.backends.cuda.flash_sdp_enabled(),
                    "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                    "cudnn": torch.backends.cuda.cudnn_sdp_enabled()}
    # the fused kernel may not be worse than the math backend in the same dtype (plus bf16 rounding)
    tolerance = 2 * error_math + (1e-2 if dtype == torch.bfloat16 else 1e-5)
    return {"shape": [batch, heads, length, head_dim], "dtype": str(dtype), "max_error_vs_float32_math": error,
            "max_error_math_same_dtype": error_math, "ms_default": ms_default, "ms_math": ms_math,
            "backends_enabled": backends, "ok": error <= tolerance}


def stage_trainer(ctx: Dict[str, Any]) -> Dict[str, Any]:
    from multisk.config import load_config
    from multisk.train.trainer import train

    work, device = ctx["work"], ctx["device_spec"]
    store = ctx.setdefault("store", write_store(work / "store"))
    result: Dict[str, Any] = {}
    steps = 2 if ctx["dry_run"] else 3
    for precision in ("bf16", "fp16"):
        out = work / f"trainer_{precision}"
        cfg = load_config(DEMO_CONFIG, store_overrides(store, out, device, **{
            "train.steps": steps, "train.precision": precision, "train.grad_clip": 1.0, "train.ema_decay": 0.9}))
        train(cfg, progress=False, make_plots=False)
        losses = logged_losses(out)
        result[precision] = {"steps_logged": sorted(losses), "final_loss": losses.get(max(losses)) if losses else None,
                             "finite": bool(losses) and all(math.isfinite(v) for v in losses.values()),
                             "results_written": (out / "results.json").exists()}
    result["ok"] = all(result[p]["finite"] and len(result[p]["steps_logged"]) == steps for p in ("bf16", "fp16"))
    return result


def _two_rank_losses(rank: int, world: int, cfg, device: torch.device, steps: int,
                     loss_group=None) -> List[Dict[str, float]]:
    """Losses of ``steps`` steps on the fixed global batch: this rank's half under DDP (world 2) or all
    of it (world 1). Values averaged over ranks equal the single-process values (docs/losses.md)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from multisk.losses import TrainingObjective
    from multisk.models import build_model
    from multisk.train.step import build_optimizer, make_grad_scaler, make_train_step

    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    # DAVEnet's BatchNorms on running statistics: with batch statistics each rank would normalise its own
    # half (as the reference's DataParallel replicas did) and the two runs would compute different functions
    model.audio_encoder.eval()
    if not cfg.loss.sspc.enabled:
        model.anchors.requires_grad_(False)
    # the losses' gathers on their own group, as the trainer does: never interleaved with DDP's buckets
    objective = TrainingObjective(cfg.loss, cfg.model, model.joint_names, process_group=loss_group).to(device)
    optimizer = build_optimizer(cfg.train, model)
    forward_module = model
    if world > 1:
        forward_module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                 gradient_as_bucket_view=True, broadcast_buffers=False)
    step = make_train_step(model, objective, optimizer, make_grad_scaler(device, "fp32"), "fp32",
                           forward_module=forward_module)
    global_batch = random_batch(cfg, 8, device, seed=3)
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    batch = {k: v[rows] for k, v in global_batch.items()}
    history = []
    for _ in range(steps):
        losses = step(batch).losses
        values = torch.stack([losses["loss"], losses["contrastive"], losses["sspc"]]).double()
        if world > 1:
            dist.all_reduce(values)
            values /= world
        history.append(dict(zip(("loss", "contrastive", "sspc"), values.tolist())))
    return history


def _two_rank_worker(rank: int, world: int, port: int, device_spec: str, overrides: List[str], out: str) -> None:
    import torch.distributed as dist

    from multisk.config import load_config

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        device = torch.device(device_spec)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        loss_group = dist.new_group(backend="gloo")
        histories = {}
        for sspc in (True, False):
            cfg = load_config(PAPER_CONFIG, overrides + [f"loss.sspc.enabled={str(sspc).lower()}"])
            histories["sspc_on" if sspc else "sspc_off"] = _two_rank_losses(rank, world, cfg, device, steps=3,
                                                                             loss_group=loss_group)
        if rank == 0:
            Path(out).write_text(json.dumps(histories))
        dist.barrier()
    finally:
        # free the DDP wrappers (and their reducers' hooks on the group) before the group goes: a reducer
        # collected after destroy_process_group aborted the process now and then (SIGABRT, "terminate
        # called without an active exception")
        gc.collect()
        dist.destroy_process_group()


def stage_two_ranks(ctx: Dict[str, Any]) -> Dict[str, Any]:
    import torch.multiprocessing as mp

    from multisk.config import load_config

    device = ctx["device"]
    device_spec = "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"
    overrides = TINY_MODEL + ["data.max_audio_frames=128", "data.max_video_tokens=4", "data.max_text_tokens=6",
                              "loss.sspc.queue_size=16", "loss.sspc.warmup=none", "train.precision=fp32"]
    out = ctx["work"] / "two_ranks.json"
    # the spawned processes import this file by its module name to find the worker
    here = str(Path(__file__).resolve().parent)
    if _two_rank_worker.__module__ != "__main__" and here not in sys.path:
        sys.path.insert(0, here)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_rank_worker, args=(2, port, device_spec, overrides, str(out)), nprocs=2, join=True)
    distributed = json.loads(out.read_text())
    result: Dict[str, Any] = {"device": device_spec, "backend": "gloo"}
    ok = True
    for key, sspc in (("sspc_on", True), ("sspc_off", False)):
        cfg = load_config(PAPER_CONFIG, overrides + [f"loss.sspc.enabled={str(sspc).lower()}"])
        single = _two_rank_losses(0, 1, cfg, device, steps=3)
        diff = max(abs(a[name] - b[name]) for a, b in zip(distributed[key], single) for name in a)
        result[key] = {"two_ranks": distributed[key], "one_process": single, "max_abs_difference": diff}
        ok = ok and _close_enough(diff, 0.0, 1e-4) and len(distributed[key]) == 3
    result["ok"] = ok
    return result


STAGES = [("resume", stage_resume), ("paper_step", stage_paper_step), ("solver", stage_solver),
          ("sdpa", stage_sdpa), ("trainer", stage_trainer), ("two_ranks", stage_two_ranks)]


# ------------------------------------------------------------------------------------------ report
def environment(device: torch.device) -> Dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "cuda": torch.version.cuda, "host": platform.node()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({"device_name": props.name, "device_memory_gib": props.total_memory / 2**30,
                    "capability": f"{props.major}.{props.minor}"})
    else:
        env["device_name"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)"
    return env


def markdown(report: Dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# GPU check — {env['device_name']}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, dry run: {report['dry_run']}, "
             f"total {report['total_s']:.0f} s", "", "| stage | ok | s | figures |", "|---|---|---:|---|"]
    for name, stage in report["stages"].items():
        figures = {k: v for k, v in stage.items() if k not in ("ok", "seconds", "error", "two_ranks", "one_process")
                   and not isinstance(v, dict)}
        text = stage.get("error") or ", ".join(f"{k} {_fmt(v)}" for k, v in figures.items())
        lines.append(f"| {name} | {'yes' if stage.get('ok') else 'NO'} | {stage.get('seconds', 0):.1f} | {text} |")
    step = report["stages"].get("paper_step", {})
    if "sspc" in step:
        lines += ["", "| paper step | ms | peak GiB | TFLOP/s |", "|---|---:|---:|---:|"]
        for name in ("contrastive", "sspc"):
            s = step[name]
            lines.append(f"| {name} | {s['ms']:.1f} | {_fmt(s['peak_memory_gib'])} | {s['tflop_per_s']:.1f} |")
        lines.append(f"\nSSPC overhead: {100 * step['sspc_overhead']:+.1f}%")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "n/a" if value is None else str(value)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for report.json / report.md (and scratch)")
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU at tiny sizes")
    parser.add_argument("--stages", default=",".join(name for name, _ in STAGES),
                        help="comma-separated subset of: " + ", ".join(name for name, _ in STAGES))
    args = parser.parse_args(argv)
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda:0")
    else:
        print("gpu_check: no CUDA device; use --dry-run to exercise the stages on the CPU", file=sys.stderr)
        return 2
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(wanted) - {name for name, _ in STAGES})
    if unknown:
        parser.error(f"--stages: unknown {unknown}")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    ctx: Dict[str, Any] = {"device": device, "device_spec": "cpu" if device.type == "cpu" else "cuda",
                           "dry_run": args.dry_run, "work": work, "timer": Timer(device)}
    report: Dict[str, Any] = {"environment": environment(device), "dry_run": args.dry_run, "stages": {}}
    began = time.perf_counter()
    for name, stage in STAGES:
        if name not in wanted:
            continue
        start = time.perf_counter()
        try:
            result = stage(ctx)
        except Exception as error:  # a failing stage is a finding: record it and run the next one
            result = {"ok": False, "error": f"{type(error).__name__}: {error}".splitlines()[0][:300],
                      "traceback": traceback.format_exc()[-4000:]}
        result["seconds"] = time.perf_counter() - start
        report["stages"][name] = result
        print(f"gpu_check: {name}: {'ok' if result.get('ok') else 'FAILED'} ({result['seconds']:.1f} s)", flush=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["total_s"] = time.perf_counter() - began
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    return 0 if all(stage.get("ok") for stage in report["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
