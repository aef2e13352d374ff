"""Forward + backward time of the multisk model (SPEC §1–§2) on random training-shaped inputs.

CPU default: a small model (embed 256, 8 heads, projection 256, K 16, DAVEnet widths / 16) on a batch
of 32 clips. With ``--device cuda`` the default is the paper configuration
(configs/paper/howto100m_resnet_tva.yaml: 892.7M parameters) on the paper batch of 2160 clips.

    python benchmarks/bench_model.py                         # CPU-sized
    python benchmarks/bench_model.py --device cuda --precision bf16 [--compile]
    python benchmarks/bench_model.py --device cuda --component audio   # DAVEnet alone

Prints the device, the model size, ms/step and samples/s (and peak memory on CUDA). The loss is a
symmetric InfoNCE over text-video plus a small term on every other output, so every output is
differentiated, as in training.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from multisk.config import ModelConfig, load_config
from multisk.models import build_model, count_parameters


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--config", default=None, help="YAML config (default: paper config on cuda, small model on cpu)")
    p.add_argument("--variant", default=None, choices=["per_modality", "everything_at_once"])
    p.add_argument("--batch", type=int, default=None, help="clips per step (default: 2160 cuda, 32 cpu)")
    p.add_argument("--embed-dim", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--projection-dim", type=int, default=None)
    p.add_argument("--anchors", type=int, default=None)
    p.add_argument("--audio-width-divisor", type=int, default=None)
    p.add_argument("--text-len", type=int, default=20)
    p.add_argument("--video-len", type=int, default=12)
    p.add_argument("--frames", type=int, default=768)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow to start)")
    p.add_argument("--component", default="model", choices=["model", "audio"], help="time the whole model or DAVEnet")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 cuda, 5 cpu)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 cuda, 2 cpu)")
    return p.parse_args()


def model_config(args: argparse.Namespace) -> ModelConfig:
    on_cuda = args.device.startswith("cuda")
    if args.config or on_cuda:
        cfg = load_config(args.config or "configs/paper/howto100m_resnet_tva.yaml").model
    else:
        cfg = ModelConfig(embed_dim=256, num_heads=8, projection_dim=256, num_anchors=16, audio_width_divisor=16)
    changes = {
        "variant": args.variant, "embed_dim": args.embed_dim, "num_heads": args.heads,
        "projection_dim": args.projection_dim, "num_anchors": args.anchors,
        "audio_width_divisor": args.audio_width_divisor,
    }
    cfg = replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    return replace(cfg, compile=args.compile)


def random_batch(cfg: ModelConfig, args: argparse.Namespace, batch: int, device: torch.device) -> dict:
    def mask(length: int) -> torch.Tensor:
        valid = torch.randint(max(1, length // 2), length + 1, (batch,), device=device)
        return (torch.arange(length, device=device)[None] < valid[:, None]).float()

    return {
        "text": torch.randn(batch, args.text_len, cfg.text_dim, device=device),
        "text_mask": mask(args.text_len),
        "video": F.normalize(torch.randn(batch, args.video_len, cfg.video_dim, device=device), dim=-1),
        "video_mask": mask(args.video_len),
        "audio": torch.randn(batch, cfg.audio_mels, args.frames, device=device),
        "audio_mask": mask(args.frames),
    }


def benchmark_loss(out: dict) -> torch.Tensor:
    t, v = out["joint_normalized"]["text"], out["joint_normalized"]["video"]
    logits = t @ v.T / 0.05
    labels = torch.arange(t.shape[0], device=t.device)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    extra = sum(s.mean() for s in out["input_anchor_scores"].values())
    extra = extra + sum(s.mean() for per_m in out["joint_anchor_scores"].values() for s in per_m.values())
    return loss + 1e-3 * extra


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    batch_size = args.batch or (2160 if on_cuda else 32)
    steps = args.steps or (20 if on_cuda else 5)
    warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 2)
    cfg = model_config(args)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    batch = random_batch(cfg, args, batch_size, device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    if args.component == "audio":
        module = model.audio_encoder
        assert module is not None, "the configuration has no audio modality"

        def step() -> None:
            with autocast:
                tokens, _ = module(batch["audio"], batch["audio_mask"])
            tokens.float().square().mean().backward()
    else:
        def step() -> None:
            with autocast:
                out = model(batch)
            benchmark_loss(out).backward()

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
        model.zero_grad(set_to_none=True)
    sync()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
        model.zero_grad(set_to_none=True)
    sync()
    elapsed = (time.perf_counter() - start) / steps

    name = torch.cuda.get_device_name(device) if on_cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"model: {cfg.variant}, embed {cfg.embed_dim}, heads {cfg.num_heads}, projection {cfg.projection_dim}, "
          f"K {cfg.num_anchors}, audio {cfg.audio_encoder}/{cfg.audio_width_divisor}, "
          f"{count_parameters(model):,} parameters; compile={cfg.compile}")
    print(f"component: {args.component}; batch {batch_size} clips (text {args.text_len}, video {args.video_len}, "
          f"audio {args.frames} frames); precision {args.precision}; {steps} timed steps after {warmup} warm-up")
    print(f"forward+backward: {elapsed * 1e3:.1f} ms/step, {batch_size / elapsed:.1f} samples/s")
    if on_cuda:
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
