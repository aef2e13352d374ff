"""Benchmark: the loss's share of a training step, contrastive-only vs contrastive + SSPC.

A stand-in encoder (per modality: token projection F -> D, masked mean, L2-norm = input embedding;
linear D -> E = joint embedding; anchor heads of docs/architecture.md) keeps the step small enough for a
CPU while producing exactly the output dict the losses consume. Three steps are timed (forward +
backward + Adam, through the trainer's own step, ``multisk.train.step.make_train_step``):

    model-only      the encoder with a trivial loss (sum of the joint embeddings)
    contrastive     + CombinatorialContrastiveLoss (pairs tv 1, ta 0.1, va 0.1)
    full            + StructurePreservingLoss (18 terms, one batched solver call on [queue; batch])

run round-robin; the script prints milliseconds per step (minimum and median) and the ratios: loss share = (step - model-only) / step,
SSPC overhead = full / contrastive - 1.

    python benchmarks/bench_loss.py                          # CPU-sized defaults
    python benchmarks/bench_loss.py --batch 512 --queue 2048 --anchors 64
    python benchmarks/bench_loss.py --paper --device cuda --precision bf16   # paper sizes (SPEC §5)
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import summarize_times, time_round_robin
from multisk.config import ContrastiveConfig, LossConfig, ModelConfig, SSPCConfig, TrainConfig
from multisk.losses import TrainingObjective
from multisk.train.step import build_optimizer, make_grad_scaler, make_train_step

MODALITIES = ("text", "video", "audio")


class StandInAnchors(nn.Module):
    def __init__(self, k: int, input_dim: int, joint_dim: int):
        super().__init__()
        self.input_anchors = nn.ParameterDict({m: nn.Parameter(torch.randn(k, input_dim)) for m in MODALITIES})
        self.joint_anchors = nn.ParameterDict({m: nn.Parameter(torch.randn(k, joint_dim)) for m in MODALITIES})

    def input_scores(self, m: str, x: torch.Tensor) -> torch.Tensor:
        return x @ F.normalize(self.input_anchors[m], dim=-1).t().to(x.dtype)

    def joint_scores(self, m: str, x: torch.Tensor) -> torch.Tensor:
        return x @ F.normalize(self.joint_anchors[m], dim=-1).t().to(x.dtype)


class StandInModel(nn.Module):
    """batch {m: tokens (B, T, F), f"{m}_mask": (B, T)} -> the model output dict (joint, joint_normalized,
    input_embedding, input_anchor_scores, joint_anchor_scores, nonempty)."""

    def __init__(self, feature_dim: int, input_dim: int, joint_dim: int, k: int):
        super().__init__()
        self.token_proj = nn.ModuleDict({m: nn.Linear(feature_dim, input_dim) for m in MODALITIES})
        self.joint_proj = nn.ModuleDict({m: nn.Linear(input_dim, joint_dim) for m in MODALITIES})
        self.anchors = StandInAnchors(k, input_dim, joint_dim)

    def forward(self, batch):
        masks = {m: batch[f"{m}_mask"] for m in MODALITIES}
        pooled = {
            m: (self.token_proj[m](batch[m]) * masks[m][..., None]).sum(1) / masks[m].sum(1, keepdim=True).clamp(min=1)
            for m in MODALITIES
        }
        inputs = {m: F.normalize(x, dim=-1) for m, x in pooled.items()}
        joint = {m: self.joint_proj[m](inputs[m]) for m in MODALITIES}
        normalized = {m: F.normalize(x, dim=-1) for m, x in joint.items()}
        return {
            "joint": joint,
            "joint_normalized": normalized,
            "input_embedding": inputs,
            "input_anchor_scores": {m: self.anchors.input_scores(m, inputs[m]) for m in MODALITIES},
            "joint_anchor_scores": {
                m: {n: self.anchors.joint_scores(m, normalized[n]) for n in MODALITIES} for m in MODALITIES
            },
            "nonempty": {m: masks[m].any(1) for m in MODALITIES},
        }


class ModelOnlyObjective(nn.Module):
    """A trivial loss (sum of the joint embeddings): the step's cost without any real loss."""

    def forward(self, output, anchors=None):
        return {"loss": sum(x.float().sum() for x in output["joint"].values())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--queue", type=int, default=1024)
    parser.add_argument("--anchors", type=int, default=32, help="K per anchor set")
    parser.add_argument("--input-dim", type=int, default=256, help="D (input-embedding width)")
    parser.add_argument("--joint-dim", type=int, default=384, help="E (joint-embedding width)")
    parser.add_argument("--feature-dim", type=int, default=128, help="raw token width F")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per modality")
    parser.add_argument("--solver", choices=("multi", "classic"), default="multi")
    parser.add_argument("--iters", type=int, default=20, help="Sinkhorn iterations")
    parser.add_argument("--steps", type=int, default=10, help="timed repetitions of each variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="autocast dtype")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--paper", action="store_true",
                        help="paper sizes: batch 2160, queue 5500, K 64, D 4096, E 6144, 12 tokens of 4096")
    args = parser.parse_args(argv)
    if args.paper:
        args.batch, args.queue, args.anchors = 2160, 5500, 64
        args.input_dim, args.joint_dim, args.feature_dim, args.tokens = 4096, 6144, 4096, 12
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    model = StandInModel(args.feature_dim, args.input_dim, args.joint_dim, args.anchors).to(device)
    # the trainer's optimizer and step (multisk.train.step), so the timed step is the product's
    optimizer = build_optimizer(TrainConfig(lr=1e-4), model)
    scaler = make_grad_scaler(device, args.precision)
    batch = {m: torch.randn(args.batch, args.tokens, args.feature_dim, device=device) for m in MODALITIES}
    batch.update({f"{m}_mask": torch.ones(args.batch, args.tokens, device=device) for m in MODALITIES})
    batch["audio_mask"][: args.batch // 10] = 0  # some clips without audio, as in HowTo100M
    model_cfg = ModelConfig(
        embed_dim=args.input_dim, projection_dim=args.joint_dim, num_anchors=args.anchors, num_heads=1
    )
    contrastive_cfg = ContrastiveConfig()
    available = set(MODALITIES)
    sspc_cfg = SSPCConfig(queue_size=args.queue, solver=args.solver, n_iters=args.iters, warmup="none")
    objectives = {
        "model-only": ModelOnlyObjective(),
        "contrastive": TrainingObjective(LossConfig(contrastive_cfg, SSPCConfig(enabled=False)), model_cfg, available),
        "full": TrainingObjective(LossConfig(contrastive_cfg, sspc_cfg), model_cfg, available),
    }
    steps = {}
    for name, objective in objectives.items():
        step = make_train_step(model, objective.to(device), optimizer, scaler, args.precision)
        steps[name] = partial(step, batch)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device {device} ({where}), "
          f"precision {args.precision}, batch {args.batch}, queue {args.queue}, K {args.anchors}, D {args.input_dim}, "
          f"E {args.joint_dim}, solver {args.solver} x{args.iters}")
    measured = {name: summarize_times(t) for name, t in time_round_robin(steps, args.steps, args.warmup, device).items()}
    for name, summary in measured.items():
        print(f"  {name:12s} min {summary['min_ms']:9.2f} ms/step   median {summary['median_ms']:9.2f} ms/step")
    times = {name: summary["min_ms"] for name, summary in measured.items()}
    base = times["model-only"]
    print("  ratios from the minima:")
    print(f"  contrastive loss share of its step: {(times['contrastive'] - base) / times['contrastive']:.1%}")
    print(f"  contrastive+SSPC loss share of its step: {(times['full'] - base) / times['full']:.1%}")
    print(f"  SSPC overhead over the contrastive-only step: {times['full'] / times['contrastive'] - 1:+.1%}")


if __name__ == "__main__":
    main()
