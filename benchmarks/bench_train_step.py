"""Benchmark: one full training step of the real multisk model — contrastive only vs contrastive + SSPC.

A training step here is the trainer's own step, ``multisk.train.step.make_train_step`` with
``build_optimizer``: forward of the model (``multisk.models.build_model(cfg.model)``) and of the objective
(``multisk.losses.TrainingObjective(cfg.loss, cfg.model, model.joint_names)``) under autocast, backward
(through ``torch.amp.GradScaler`` for fp16) and an Adam step (fused on CUDA). The solver row times the
SSPC loss's own ``_solve``. Two objectives are timed in
ONE process on the SAME model, batch and optimizer, their steps interleaved (contrastive, SSPC, solver,
contrastive, ...) so that load changes hit both alike:

    contrastive   loss.sspc.enabled=false: combinatorial NormSoftmax over the modality pairs
    sspc          the configured objective: contrastive + β·SSPC (queues, 12 Multi-SK problems of
                  N = queue + batch rows, 18 consistency terms)
    Multi-SK      the solver call alone on a (12, N, K) stack of cosine scores (the SSPC step's
                  solver work, timed by itself)

Reported: ms per step (median and minimum of the timed rounds), samples/s, the SSPC overhead
(sspc / contrastive − 1), the Multi-SK share of the SSPC step (solver / sspc step), FLOPs of one step
(forward + backward, counted with ``torch.utils.flop_counter.FlopCounterMode`` on the eager model) and
the achieved FLOP rate (on CUDA also as % of an assumed bf16 dense peak: 800 TFLOP/s, measured on H100,
``--peak-tflops`` to change), and peak memory of one step per variant (CUDA:
``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set size, see benchmarks/common.py).

Inputs are synthetic batches with the paper's shapes (docs/architecture.md batch dict): text (B, 20, 300)
word vectors, video (B, 12, 4096) with each 2048-d half L2-normalised, audio (B, 40, 768) log-mel frames,
0/1 masks with random padding, and a few clips with an empty modality (2% text, 1% video, 5% audio).
Sequence lengths come from ``data.max_text_tokens`` / ``max_video_tokens`` / ``max_audio_frames``.

Sizes: by default a CPU-sized model (embed 512, projection 768, 8 heads, K 64, DAVEnet widths / 8) on a
batch of 128 clips with queues of 1024 rows — a few minutes on 2 cores; ``--paper`` keeps the
configuration's own sizes (configs/paper/howto100m_resnet_tva.yaml: 892.8M parameters, batch 216 × 10 =
2160 clips, queue 5500: a GPU job); ``--quick`` is a seconds-long CI smoke run.

    python benchmarks/bench_train_step.py                                   # CPU-sized default
    python benchmarks/bench_train_step.py --batch 64 --queue 512 model.num_anchors=32
    python benchmarks/bench_train_step.py --paper --device cuda --precision bf16 [--compile]
    python benchmarks/bench_train_step.py --paper --device cuda --precision fp16   # the reference's AMP
    python benchmarks/bench_train_step.py --quick --json /tmp/step.json      # CI

Prints the machine, a table and one JSON line (also written to ``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from common import (
    GIB,
    MIB,
    format_machine,
    load_average,
    machine_description,
    measure_peak_cuda,
    measure_peak_rss,
    peak_rss_bytes,
    return_freed_memory_to_os,
    summarize_times,
    synchronize,
    time_round_robin,
)
from multisk.config import Config, ConfigError, load_config
from multisk.losses import TrainingObjective
from multisk.models import build_model, count_parameters
from multisk.train.step import build_optimizer, make_grad_scaler, make_train_step

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = REPO_ROOT / "configs" / "paper" / "howto100m_resnet_tva.yaml"

# bf16 dense matrix throughput measured on the project's H100s (docs: /work/shared/PERFORMANCE.md)
DEFAULT_CUDA_PEAK_TFLOPS = 800.0

# Fraction of clips with an empty modality (all-zero mask) in the synthetic batches: HowTo100M clips
# occasionally lack audio, rarely text or video. The sets of clips are disjoint, so no clip is empty in
# two modalities and the contrastive pairs always keep most rows.
EMPTY_FRACTION = {"text": 0.02, "video": 0.01, "audio": 0.05}

# Size presets: model overrides applied before the user's key=value overrides, batch (clips), queue
# rows, timed rounds and warm-up rounds. None means "from the configuration".
PRESETS: Dict[str, Dict[str, object]] = {
    "cpu": {
        "overrides": ["model.embed_dim=512", "model.projection_dim=768", "model.num_heads=8",
                      "model.num_anchors=64", "model.audio_width_divisor=8"],
        "batch": 128, "queue": 1024, "steps": 10, "warmup": 1,
        "label": "CPU-sized default (embed 512, projection 768, 8 heads, K 64, DAVEnet widths / 8; "
                 "batch 128, queue 1024) - NOT the paper configuration (use --paper on a GPU)",
    },
    "quick": {
        "overrides": ["model.embed_dim=64", "model.projection_dim=96", "model.num_heads=4",
                      "model.num_anchors=16", "model.audio_width_divisor=32", "data.max_audio_frames=384"],
        "batch": 16, "queue": 64, "steps": 2, "warmup": 0,  # the FLOP-count steps run each variant once first
        "label": "--quick CI smoke sizes (embed 64, projection 96, 4 heads, K 16, DAVEnet widths / 32, "
                 "384 audio frames; batch 16, queue 64) - timings are meaningless at this size",
    },
    "paper": {
        "overrides": [], "batch": None, "queue": None, "steps": 20, "warmup": 5,
        "label": "the configuration's own sizes (--paper)",
    },
}


# ------------------------------------------------------------------------------------------ inputs
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides applied after the size preset, e.g. model.num_anchors=32")
    parser.add_argument("--config", default=str(PAPER_CONFIG), help="YAML config (default: the paper's)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--paper", action="store_true",
                       help="keep the config's model sizes; batch = train.batch_size × data.clips_per_video "
                            "(2160), queue = loss.sspc.queue_size (5500)")
    sizes.add_argument("--quick", action="store_true", help="tiny sizes and 2 rounds: a CI smoke run")
    parser.add_argument("--batch", type=int, default=None, help="clips per step (overrides the preset)")
    parser.add_argument("--queue", type=int, default=None, help="rows per SSPC queue (overrides the preset)")
    parser.add_argument("--steps", type=int, default=None, help="timed rounds per variant")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (compilation, caches)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                        help="autocast dtype (default: fp32 on CPU, train.precision of the config on CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (nn.Module.compile)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help=f"assumed dense peak for '%% of peak' (default on CUDA: {DEFAULT_CUDA_PEAK_TFLOPS:g}, "
                             "bf16 on H100; no percentage on CPU unless given)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one eager step per variant)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the JSON result here")
    return parser.parse_args(argv)


def resolve_sizes(args: argparse.Namespace) -> Dict[str, object]:
    """Pick the preset and return {"preset", "label", "config" (Config, SSPC as configured), "batch",
    "queue", "steps", "warmup", "precision", "overrides"}."""
    preset_name = "paper" if args.paper else "quick" if args.quick else "cpu"
    preset = PRESETS[preset_name]
    overrides: List[str] = list(preset["overrides"]) + list(args.overrides)  # type: ignore[arg-type]
    cfg = load_config(args.config, overrides)
    if args.batch is not None:
        batch = args.batch
    elif preset["batch"] is not None:
        batch = int(preset["batch"])  # type: ignore[arg-type]
    else:  # the paper counts videos per step, each giving clips_per_video clips
        clips = cfg.data.clips_per_video if cfg.data.train_format == "howto100m" else 1
        batch = cfg.train.batch_size * clips
    queue = args.queue if args.queue is not None else preset["queue"]
    if queue is not None:
        overrides.append(f"loss.sspc.queue_size={int(queue)}")  # type: ignore[arg-type]
        cfg = load_config(args.config, overrides)
    if batch < 2:
        raise ConfigError(f"--batch: a contrastive step needs at least 2 clips, got {batch}")
    steps = args.steps if args.steps is not None else int(preset["steps"])  # type: ignore[arg-type]
    warmup = args.warmup if args.warmup is not None else int(preset["warmup"])  # type: ignore[arg-type]
    if steps < 1 or warmup < 0:
        raise ConfigError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    precision = args.precision or ("fp32" if args.device == "cpu" else cfg.train.precision)
    return {"preset": preset_name, "label": preset["label"], "config": cfg, "batch": batch,
            "queue": cfg.loss.sspc.queue_size, "steps": steps, "warmup": warmup, "precision": precision,
            "overrides": overrides}


def random_lengths(generator: torch.Generator, batch: int, length: int, shortest: int,
                   full_fraction: float) -> torch.Tensor:
    """(batch,) int64 valid lengths: ``full_fraction`` of the rows full, the rest uniform in
    [shortest, length − 1] (padding at the end of the sequence)."""
    lengths = torch.randint(min(shortest, length), max(length, shortest + 1), (batch,), generator=generator)
    full = torch.rand(batch, generator=generator) < full_fraction
    return torch.where(full, torch.full_like(lengths, length), lengths.clamp(max=length))


def synthetic_batch(cfg: Config, batch: int, seed: int = 0,
                    empty_fraction: Optional[Dict[str, float]] = None) -> Dict[str, torch.Tensor]:
    """A training batch of the paper's shapes (docs/architecture.md), built on the CPU.

    text (B, Lt, text_dim) word-vector-like N(0, 0.15²) values; video (B, Lv, video_dim) with each half
    (2D | 3D features) L2-normalised per time step; audio (B, n_mels, F) log-mel-like N(−4, 2²) values;
    masks (B, Lt) / (B, Lv) / (B, F) float 0/1 with trailing padding (text 4..Lt words; video 70% full,
    else Lv/2..Lv; audio 70% full, else F/4..F frames); padded positions hold zeros. A disjoint few
    clips per modality (``empty_fraction``, default :data:`EMPTY_FRACTION`, at least one clip each
    when B ≥ 20) have an all-zero mask in that modality. Lt, Lv, F = data.max_text_tokens,
    data.max_video_tokens, data.max_audio_frames.
    """
    generator = torch.Generator().manual_seed(seed)
    model, data = cfg.model, cfg.data
    text_len, video_len, frames = data.max_text_tokens, data.max_video_tokens, data.max_audio_frames
    lengths = {
        "text": random_lengths(generator, batch, text_len, 4, 0.0),
        "video": random_lengths(generator, batch, video_len, max(1, video_len // 2), 0.7),
        "audio": random_lengths(generator, batch, frames, max(1, frames // 4), 0.7),
    }
    fractions = EMPTY_FRACTION if empty_fraction is None else empty_fraction
    order = torch.randperm(batch, generator=generator)
    start = 0
    for modality in ("text", "video", "audio"):
        count = int(round(fractions.get(modality, 0.0) * batch))
        if fractions.get(modality, 0.0) > 0 and batch >= 20:
            count = max(count, 1)
        lengths[modality][order[start:start + count]] = 0
        start += count
    masks = {m: (torch.arange(n)[None, :] < lengths[m][:, None]).float()
             for m, n in (("text", text_len), ("video", video_len), ("audio", frames))}

    text = torch.randn(batch, text_len, model.text_dim, generator=generator) * 0.15
    video = torch.randn(batch, video_len, model.video_dim, generator=generator)
    half = model.video_dim // 2
    if half > 0 and model.video_dim % 2 == 0:
        video = torch.cat([F.normalize(video[..., :half], dim=-1), F.normalize(video[..., half:], dim=-1)], -1)
    else:
        video = F.normalize(video, dim=-1)
    audio = torch.randn(batch, model.audio_mels, frames, generator=generator) * 2.0 - 4.0
    return {
        "text": text * masks["text"][..., None],
        "text_mask": masks["text"],
        "video": video * masks["video"][..., None],
        "video_mask": masks["video"],
        "audio": audio * masks["audio"][:, None, :],
        "audio_mask": masks["audio"],
        "index": torch.arange(batch, dtype=torch.int64),
    }


# ------------------------------------------------------------------------------------------- steps
def solver_problem(cfg: Config, rows: int, problems: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """(problems, rows, K) float32 cosine similarities of random unit vectors with random unit anchors
    (the solver's cost does not depend on the values: it always runs loss.sspc.n_iters iterations)."""
    generator = torch.Generator().manual_seed(seed)
    k = cfg.model.num_anchors
    vectors = F.normalize(torch.randn(problems, rows, 64, generator=generator), dim=-1)
    anchors = F.normalize(torch.randn(problems, k, 64, generator=generator), dim=-1)
    return (vectors @ anchors.transpose(1, 2)).to(device)


def make_solver_call(objective: TrainingObjective, scores: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The SSPC target solver of ``objective`` on ``scores`` (P, N, K): the loss's own solve (its
    ``n_assign`` rounding, solver choice and arguments), not a copy of it."""
    return partial(objective.sspc._solve, scores)


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call of ``step`` (matrix products, convolutions, attention; forward + backward)
    counted by ``torch.utils.flop_counter.FlopCounterMode``; elementwise work (Adam, norms) is not
    counted. Must run eagerly: compiled graphs bypass the dispatcher the counter listens to."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


# -------------------------------------------------------------------------------------------- main
def format_bytes(value: Optional[int]) -> str:
    if value is None:
        return "n/a"
    if value >= GIB:
        return f"{value / GIB:.2f} GiB"
    return f"{value / MIB:.0f} MiB" if value >= 10 * MIB else f"{value / MIB:.2f} MiB"


def run(args: argparse.Namespace) -> Dict[str, object]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch reports no CUDA device (torch.cuda.is_available() is False)")
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = resolve_sizes(args)
    cfg: Config = sizes["config"]  # type: ignore[assignment]
    batch_size, steps, warmup = int(sizes["batch"]), int(sizes["steps"]), int(sizes["warmup"])  # type: ignore[arg-type]
    precision = str(sizes["precision"])
    compile_model = args.compile or cfg.model.compile
    peak_tflops = args.peak_tflops if args.peak_tflops is not None else (
        DEFAULT_CUDA_PEAK_TFLOPS if device.type == "cuda" else None)
    contrastive_cfg = replace(cfg, loss=replace(cfg.loss, sspc=replace(cfg.loss.sspc, enabled=False)))
    sspc_cfg = cfg.loss.sspc

    load_before = load_average()
    machine = machine_description(device)
    print(format_machine(machine))
    print(f"load average before: {load_before}")
    print(f"sizes: {sizes['label']}")

    torch.manual_seed(args.seed)
    # Built eagerly; compiled (if asked) after the FLOP count, which needs the eager model.
    model = build_model(replace(cfg.model, compile=False)).to(device).train()
    objectives = {
        "contrastive": TrainingObjective(contrastive_cfg.loss, cfg.model, model.joint_names).to(device),
        "sspc": TrainingObjective(cfg.loss, cfg.model, model.joint_names).to(device),
    }
    # the trainer's own optimizer factory and step (multisk.train.step): the timed step is the product's
    optimizer = build_optimizer(cfg.train, model)
    scaler = make_grad_scaler(device, precision)
    batch = {k: v.to(device) for k, v in synthetic_batch(cfg, batch_size, seed=args.seed).items()}
    steps_by_name = {name: partial(make_train_step(model, objective, optimizer, scaler, precision), batch)
                     for name, objective in objectives.items()}
    problems = objectives["sspc"].sspc.num_problems if objectives["sspc"].sspc is not None else 0
    solver_rows = sspc_cfg.queue_size + batch_size
    parameters = count_parameters(model)
    empty = {m: int((batch[f"{m}_mask"].sum(1) == 0).sum()) for m in cfg.model.modalities}
    print(f"model: {cfg.model.variant}, embed {cfg.model.embed_dim}, {cfg.model.num_heads} heads, depth "
          f"{cfg.model.depth}, projection {cfg.model.projection_dim}, K {cfg.model.num_anchors}, audio "
          f"{cfg.model.audio_encoder} widths / {cfg.model.audio_width_divisor}; {parameters:,} parameters")
    print(f"batch: {batch_size} clips (text {cfg.data.max_text_tokens}x{cfg.model.text_dim}, video "
          f"{cfg.data.max_video_tokens}x{cfg.model.video_dim}, audio {cfg.model.audio_mels}x"
          f"{cfg.data.max_audio_frames} frames; empty: {empty}); SSPC: queue {sspc_cfg.queue_size}, solver "
          f"{sspc_cfg.solver} (r/K {sspc_cfg.assign_fraction}, eps {sspc_cfg.epsilon}, {sspc_cfg.n_iters} iters) "
          f"on {problems} problems of N = {solver_rows} rows, cost {sspc_cfg.cost}")
    autocast_text = "fp32, no autocast" if precision == "fp32" else f"{precision} autocast"
    print(f"step: {autocast_text}{' + GradScaler' if precision == 'fp16' else ''}, "
          f"{type(optimizer).__name__}{' (fused)' if device.type == 'cuda' else ''}, compile "
          f"{'on' if compile_model else 'off'}; {steps} timed rounds after {warmup} warm-up rounds, "
          f"variants interleaved")

    flops: Dict[str, Optional[int]] = {name: None for name in steps_by_name}
    if not args.no_flops:
        for name, step in steps_by_name.items():
            flops[name] = count_flops(step)
    if compile_model:
        model.compile()

    scores = solver_problem(cfg, solver_rows, max(problems, 1), device, seed=args.seed)
    timed: Dict[str, Callable[[], object]] = dict(steps_by_name)
    if problems:
        timed["solver"] = make_solver_call(objectives["sspc"], scores)
    started, cpu_started = time.perf_counter(), time.process_time()
    times = time_round_robin(timed, steps, warmup, device)
    timing_seconds = time.perf_counter() - started
    # CPU seconds this process got per wall second (all threads): ≈ torch threads on an idle machine,
    # lower when other processes take the cores — a direct measure of the load the timings saw
    cpus_obtained = (time.process_time() - cpu_started) / timing_seconds
    del scores, timed
    summary = {name: summarize_times(values) for name, values in times.items()}

    # Memory: one extra step per variant, measured alone.
    memory: Dict[str, Dict[str, object]] = {}
    process_peak_rss: Optional[int] = None
    if device.type == "cuda":
        # the SSPC queues would sit in the contrastive step's memory: park them on the host meanwhile
        objectives["sspc"].to("cpu")
        memory["contrastive"] = measure_peak_cuda(steps_by_name["contrastive"], device)
        objectives["sspc"].to(device)
        memory["sspc"] = measure_peak_cuda(steps_by_name["sspc"], device)
    else:
        process_peak_rss = peak_rss_bytes()  # before any reset: the peak through the timing rounds
        for name, step in steps_by_name.items():
            return_freed_memory_to_os()
            memory[name] = measure_peak_rss(step)
    queue_bytes = sum(b.numel() * b.element_size() for b in objectives["sspc"].buffers())
    active = objectives["sspc"].sspc is not None and bool(steps_by_name["sspc"]().losses["sspc/active"].item())
    load_after = load_average()

    variants: Dict[str, Dict[str, object]] = {}
    for name in steps_by_name:
        median_s = summary[name]["median_ms"] / 1e3
        entry: Dict[str, object] = dict(summary[name])
        entry["samples_per_s"] = batch_size / median_s
        entry["flops_per_step"] = flops[name]
        if flops[name] is not None:
            entry["tflops_per_s"] = flops[name] / median_s / 1e12
            entry["percent_of_peak"] = (100.0 * flops[name] / median_s / (peak_tflops * 1e12)
                                        if peak_tflops else None)
        entry["memory"] = memory[name]
        variants[name] = entry
    contrastive_ms, sspc_ms = summary["contrastive"]["median_ms"], summary["sspc"]["median_ms"]
    result: Dict[str, object] = {
        "benchmark": "train_step",
        "machine": machine,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "preset": sizes["preset"],
        "config": str(args.config),
        "overrides": sizes["overrides"],
        "model": {"variant": cfg.model.variant, "embed_dim": cfg.model.embed_dim, "num_heads": cfg.model.num_heads,
                  "depth": cfg.model.depth, "projection_dim": cfg.model.projection_dim,
                  "num_anchors": cfg.model.num_anchors, "audio_width_divisor": cfg.model.audio_width_divisor,
                  "parameters": parameters},
        "batch": batch_size,
        "empty_modalities": empty,
        "queue": sspc_cfg.queue_size,
        "solver": {"kind": sspc_cfg.solver, "problems": problems, "rows": solver_rows, "anchors": cfg.model.num_anchors,
                   "n_iters": sspc_cfg.n_iters, "epsilon": sspc_cfg.epsilon, **summary.get("solver", {})},
        "precision": precision,
        "compile": compile_model,
        "steps": steps,
        "warmup": warmup,
        "timing_seconds": timing_seconds,
        "cpus_obtained_during_timing": cpus_obtained,
        "peak_tflops_assumed": peak_tflops,
        "variants": variants,
        "sspc_overhead_percent": 100.0 * (sspc_ms / contrastive_ms - 1.0),
        "sspc_overhead_percent_from_min": 100.0 * (summary["sspc"]["min_ms"] / summary["contrastive"]["min_ms"] - 1.0),
        "multisk_share_of_sspc_step_percent": (100.0 * summary["solver"]["median_ms"] / sspc_ms
                                               if "solver" in summary else None),
        "multisk_share_of_sspc_step_percent_from_min": (100.0 * summary["solver"]["min_ms"] / summary["sspc"]["min_ms"]
                                                        if "solver" in summary else None),
        "sspc_gate_active_after_run": active,
        "sspc_queue_buffer_bytes": queue_bytes,
    }
    if process_peak_rss is not None:
        result["process_peak_rss_through_timing_bytes"] = process_peak_rss
    return result


def print_report(result: Dict[str, object]) -> None:
    """The human-readable table and ratios (markdown table, so it can be pasted into docs)."""
    variants: Dict[str, Dict[str, object]] = result["variants"]  # type: ignore[assignment]
    solver: Dict[str, object] = result["solver"]  # type: ignore[assignment]
    cuda = str(result["machine"]["device"]).startswith("cuda")  # type: ignore[index]
    peak = result["peak_tflops_assumed"]
    memory_label = "peak GPU memory (allocated)" if cuda else "peak RSS (step's increase)"
    print()
    print(f"| step | median ms | min ms | samples/s | GFLOP/step | TFLOP/s | % of peak | {memory_label} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    titles = {"contrastive": "contrastive only", "sspc": "contrastive + SSPC"}
    for name, entry in variants.items():
        flops = entry.get("flops_per_step")
        gflops = f"{flops / 1e9:.1f}" if flops is not None else "n/a"  # type: ignore[operator]
        rate = f"{entry['tflops_per_s']:.3f}" if flops is not None else "n/a"
        percent = entry.get("percent_of_peak")
        percent_text = f"{percent:.1f}%" if percent is not None else "-"
        mem: Dict[str, object] = entry["memory"]  # type: ignore[assignment]
        memory_text = format_bytes(mem["peak_bytes"])  # type: ignore[arg-type]
        if not cuda and mem.get("increase_bytes") is not None:
            memory_text += f" (+{format_bytes(mem['increase_bytes'])})"  # type: ignore[arg-type]
        print(f"| {titles[name]} | {entry['median_ms']:.1f} | {entry['min_ms']:.1f} | "
              f"{entry['samples_per_s']:.1f} | {gflops} | {rate} | {percent_text} | {memory_text} |")
    if "median_ms" in solver:
        print(f"| {solver['kind']} Sinkhorn call alone ({solver['problems']} x {solver['rows']} x "
              f"{solver['anchors']}) | {solver['median_ms']:.1f} | {solver['min_ms']:.1f} | | | | | |")
    print()
    print(f"SSPC overhead over the contrastive-only step: {result['sspc_overhead_percent']:+.1f}% "
          f"(medians; {result['sspc_overhead_percent_from_min']:+.1f}% from the minima)")
    if result["multisk_share_of_sspc_step_percent"] is not None:
        print(f"{solver['kind']} Sinkhorn share of the SSPC step: "
              f"{result['multisk_share_of_sspc_step_percent']:.1f}% (solver call alone / SSPC step, medians; "
              f"{result['multisk_share_of_sspc_step_percent_from_min']:.1f}% from the minima)")
    method = next(iter(variants.values()))["memory"]["method"]  # type: ignore[index]
    print(f"memory: {method}; the SSPC queue buffers take {format_bytes(result['sspc_queue_buffer_bytes'])}"  # type: ignore[arg-type]
          + ("" if cuda else " and are resident in both CPU variants; the increase is the peak minus the "
             "resident size just before the step"))
    if result.get("process_peak_rss_through_timing_bytes"):
        print("process peak RSS through the timing rounds (getrusage ru_maxrss / VmHWM): "
              f"{format_bytes(result['process_peak_rss_through_timing_bytes'])}")  # type: ignore[arg-type]
    if peak:
        print(f"% of peak assumes {peak:g} TFLOP/s (bf16 dense, measured on H100; --peak-tflops to change)")
    print("FLOPs: forward + backward matmul / convolution / attention work of one step "
          "(torch.utils.flop_counter.FlopCounterMode, eager); Adam and elementwise work are not counted")
    if solver["problems"] and not result["sspc_gate_active_after_run"]:
        print("note: the SSPC warm-up gate was still closed (the queues had not yet held queue_size real "
              "rows); the SSPC step computes every term either way, so its cost is the same")
    load = f"load average (1, 5, 15 min) before {result['load_average_before']}, after {result['load_average_after']}"
    if not cuda:  # on CUDA the host thread mostly waits, so its CPU time says nothing about load
        load += (f"; this process got {result['cpus_obtained_during_timing']:.2f} CPU-seconds per second during "
                 f"the timed rounds ({result['machine']['torch_threads']} torch threads; "  # type: ignore[index]
                 "less means other processes shared the cores)")
    print(load)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_report(result)
    line = json.dumps(result, default=lambda x: None if isinstance(x, float) and not math.isfinite(x) else str(x))
    print(line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(line + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
