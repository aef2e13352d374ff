"""Peak GPU memory of one training step, estimated on the CPU with fake tensors (shapes, no data, no GPU).

    python benchmarks/estimate_memory.py                       # the paper configuration, bf16, 2160 clips
    python benchmarks/estimate_memory.py --compare             # before / after the memory options
    python benchmarks/estimate_memory.py --tiny --json out.json  # seconds; what the test suite runs

How. The model, the objective (contrastive + SSPC with its queues), Adam and a batch of the training
shapes are built inside ``FakeTensorMode``: every tensor has a shape, dtype and storage size but no data.
Two optimizer steps run through the trainer's own step (:func:`multisk.train.step.make_train_step`; the
first creates Adam's state, the second is measured). A ``TorchDispatchMode`` sees every operator: each
new storage is recorded with its size and a label (the module whose forward created it, or backward /
optimizer), and is forgotten when the last tensor using it dies — so "live bytes" follows the program
exactly as a caching allocator's *allocated* bytes would (no fragmentation, no cuDNN/cuBLAS workspaces,
no CUDA context: add ~1-3 GB on a device). The peak and what was alive at that moment are reported.

CUDA's autocast rules are emulated where they differ from the CPU's for this model: CUDA runs LayerNorm
in float32 (its output, and the residual stream after it, stay float32); the CPU keeps the input dtype.
The solver takes its CUDA route (log domain, no host reads). Saved-for-backward tensors are also
attributed to modules with ``saved_tensors_hooks`` (the "activations by module" table).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = ROOT / "configs" / "paper" / "howto100m_resnet_tva.yaml"
GIB = 2.0**30
HALF = (torch.float16, torch.bfloat16)

# memory options compared by --compare: (name, config overrides)
REDUCTIONS = [
    ("reference numerics (defaults)", []),
    ("+ LayerNorm outputs in the autocast dtype", ["model.norm_outputs_in_autocast_dtype=true"]),
    ("+ recompute DAVEnet in backward", ["model.norm_outputs_in_autocast_dtype=true",
                                         "model.recompute_audio_encoder=true"]),
]


@dataclass
class _Storage:
    nbytes: int
    label: str
    ref: StorageWeakRef


@dataclass
class MemoryReport:
    """Bytes by category at the peak of the measured step, and saved-for-backward bytes by module."""

    peak_bytes: int = 0
    peak_phase: str = ""
    at_peak: Dict[str, int] = field(default_factory=dict)
    static: Dict[str, int] = field(default_factory=dict)
    saved_by_module: Dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"peak_bytes": self.peak_bytes, "peak_gib": self.peak_bytes / GIB, "peak_phase": self.peak_phase,
                "at_peak": dict(self.at_peak), "static": dict(self.static), "saved_by_module": dict(self.saved_by_module)}


class LiveStorageTracker(TorchDispatchMode):
    """Follows every storage created by an operator: size, label, death (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: Dict[int, _Storage] = {}
        self.live = 0
        self.peak = 0
        self.peak_snapshot: Dict[int, tuple] = {}
        self.peak_phase = ""
        self.label = "other"
        self.phase = "setup"
        self.measuring = False
        self._ops_since_sweep = 0

    def register(self, tensor: torch.Tensor, label: str) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.storages:
            self.storages[key] = _Storage(storage.nbytes(), label, StorageWeakRef(storage))
            self.live += storage.nbytes()

    def relabel(self, tensors: Sequence[torch.Tensor], label: str) -> None:
        for tensor in tensors:
            entry = self.storages.get(tensor.untyped_storage()._cdata)
            if entry is not None:
                entry.label = label

    def _sweep(self) -> None:
        expired = torch.UntypedStorage._expired  # StorageWeakRef.expired() without two Python layers
        dead = [key for key, entry in self.storages.items() if expired(entry.ref.cdata)]
        for key in dead:
            self.live -= self.storages.pop(key).nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.register(tensor, self.label)
        # ``live`` counts dead storages until a sweep, so it only over-estimates: a sweep is needed
        # before a new peak is accepted (then the peak is exact), otherwise every 64 operators
        self._ops_since_sweep += 1
        if (self.measuring and self.live > self.peak) or self._ops_since_sweep >= 64:
            self._sweep()
            self._ops_since_sweep = 0
        if self.measuring and self.live > self.peak:
            self.peak = self.live
            self.peak_phase = self.phase
            self.peak_snapshot = {key: (e.nbytes, e.label) for key, e in self.storages.items()}
        return out


class _ModuleLabels:
    """Labels new storages with the model module whose forward is running (its first two name parts)."""

    def __init__(self, tracker: LiveStorageTracker, model: torch.nn.Module, prefix: str) -> None:
        self.tracker = tracker
        self.names = {id(m): _short_name(prefix, name) for name, m in model.named_modules()}
        self.stack: List[str] = []
        self.handles = [torch.nn.modules.module.register_module_forward_pre_hook(self._enter),
                        torch.nn.modules.module.register_module_forward_hook(self._leave)]

    def _enter(self, module, args):
        name = self.names.get(id(module))
        if name is not None and self.tracker.phase == "forward":
            self.stack.append(name)
            self.tracker.label = f"activations: {name}"

    def _leave(self, module, args, output):
        if id(module) in self.names and self.tracker.phase == "forward" and self.stack:
            self.stack.pop()
            self.tracker.label = f"activations: {self.stack[-1]}" if self.stack else "activations: losses"

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _short_name(prefix: str, name: str) -> str:
    parts = name.split(".")
    if not name:
        return prefix
    if parts[0] in ("token_projections", "token_norms", "fusion", "projections"):
        return ".".join(parts[:2])
    return parts[0]


def fake_batch(cfg, batch_size: int) -> Dict[str, torch.Tensor]:
    """A batch of the configured training shapes (full masks: the worst case for the memory)."""
    d, m = cfg.data, cfg.model
    shapes = {"text": (batch_size, d.max_text_tokens, m.text_dim), "video": (batch_size, d.max_video_tokens, m.video_dim),
              "audio": (batch_size, m.audio_mels, d.max_audio_frames)}
    batch = {}
    for name in m.modalities:
        batch[name] = torch.zeros(shapes[name])
        batch[f"{name}_mask"] = torch.ones(shapes[name][0], shapes[name][2] if name == "audio" else shapes[name][1])
    return batch


@contextlib.contextmanager
def _cuda_layer_norm_rule():
    """CUDA autocast casts layer_norm's input to float32 (above autograd, which then saves the float32
    copy) and returns float32; CPU autocast keeps the input dtype. Apply CUDA's rule to CPU autocast."""
    import torch.nn.functional as F

    original = F.layer_norm

    def layer_norm(x, *args, **kwargs):
        if torch.is_autocast_enabled("cpu") and x.dtype in HALF:
            with torch.autocast("cpu", enabled=False):
                return original(x.float(), *args, **kwargs)
        return original(x, *args, **kwargs)

    F.layer_norm = layer_norm
    try:
        yield
    finally:
        F.layer_norm = original


@contextlib.contextmanager
def _solver_on_its_cuda_route():
    """The CPU exp-domain fast path reads bounds back to the host (impossible on fake tensors); CUDA
    never takes it. Hand every problem to the log-domain loop, as on a GPU."""
    from multisk.sinkhorn import multi_assignment

    original = multi_assignment._exp_domain_iterations
    multi_assignment._exp_domain_iterations = lambda *args, **kwargs: (0, None)
    try:
        yield
    finally:
        multi_assignment._exp_domain_iterations = original


def estimate(cfg, batch_size: int, precision: str, cuda_rules: bool = True) -> MemoryReport:
    """Run two training steps of ``cfg`` on fake tensors; return the measured step's memory report."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from multisk.losses import TrainingObjective
    from multisk.models import build_model
    from multisk.train.step import build_optimizer, make_grad_scaler, make_train_step

    with torch.device("meta"):  # built outside the fake mode: the initialisers' host reads cannot run there
        meta_model = build_model(cfg.model)
    tracker = LiveStorageTracker()
    report = MemoryReport()
    saved: Dict[int, tuple] = {}
    rules = _cuda_layer_norm_rule() if cuda_rules else contextlib.nullcontext()
    with FakeTensorMode(allow_non_fake_inputs=True), _solver_on_its_cuda_route(), rules, tracker:
        tracker.label = "weights"
        model = meta_model.to_empty(device="cpu").train()  # fake storages of the real sizes
        tracker.label = "SSPC queues and loss buffers"
        objective = TrainingObjective(cfg.loss, cfg.model, model.joint_names).train()
        tracker.label = "optimizer"
        optimizer = build_optimizer(cfg.train, model)
        step = make_train_step(model, objective, optimizer, make_grad_scaler(torch.device("cpu"), precision), precision)
        tracker.label = "batch"
        batch = fake_batch(cfg, batch_size)
        labels = _ModuleLabels(tracker, model, "model")
        try:
            for measured in (False, True):
                tracker.measuring = measured
                tracker.peak = tracker.live
                tracker.phase = "forward"
                tracker.label = "activations: losses"

                def pack(tensor, measured=measured):
                    if measured and tracker.phase == "forward":
                        storage = tensor.untyped_storage()
                        saved.setdefault(storage._cdata, (storage.nbytes(), tracker.label))
                    return tensor

                original_backward = torch.Tensor.backward

                def backward(tensor, *args, **kwargs):
                    tracker.phase, tracker.label = "backward", "backward: gradients and temporaries"
                    result = original_backward(tensor, *args, **kwargs)
                    tracker.phase, tracker.label = "optimizer step", "optimizer step temporaries"
                    return result

                torch.Tensor.backward = backward
                try:
                    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                        step(batch)
                finally:
                    torch.Tensor.backward = original_backward
                if not measured:
                    adam_state = [t for state in optimizer.state.values() for t in state.values()
                                  if isinstance(t, torch.Tensor)]
                    tracker.relabel(adam_state, "Adam state")
        finally:
            labels.remove()
        params = {p.untyped_storage()._cdata for p in model.parameters()}
        buffers = {b.untyped_storage()._cdata for b in model.buffers()}
        queues = {b.untyped_storage()._cdata for b in objective.buffers()}
        adam = {t.untyped_storage()._cdata for state in optimizer.state.values() for t in state.values()
                if isinstance(t, torch.Tensor)}
        report.static = {
            "weights": sum(p.numel() * p.element_size() for p in model.parameters()),
            "model buffers": sum(b.numel() * b.element_size() for b in model.buffers()),
            "gradients (during backward)": sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
            "Adam state": sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                              if isinstance(t, torch.Tensor)),
            "SSPC queues": sum(b.numel() * b.element_size() for b in objective.buffers()),
            "batch": sum(t.numel() * t.element_size() for t in batch.values()),
        }
    at_peak: Dict[str, int] = defaultdict(int)
    for key, (nbytes, label) in tracker.peak_snapshot.items():
        if key in params or key in buffers:
            label = "weights and model buffers"
        elif key in adam:
            label = "Adam state"
        elif key in queues:
            label = "SSPC queues and loss buffers"
        at_peak[label] += nbytes
    by_module: Dict[str, int] = defaultdict(int)
    for key, (nbytes, label) in saved.items():
        if key not in params and key not in buffers and key not in queues:
            by_module[label.replace("activations: ", "")] += nbytes
    report.peak_bytes = tracker.peak
    report.peak_phase = tracker.peak_phase
    report.at_peak = dict(sorted(at_peak.items(), key=lambda item: -item[1]))
    report.saved_by_module = dict(sorted(by_module.items(), key=lambda item: -item[1]))
    return report


def tiny_overrides() -> List[str]:
    return ["model.embed_dim=64", "model.num_heads=4", "model.projection_dim=48", "model.num_anchors=8",
            "model.audio_width_divisor=32", "loss.sspc.queue_size=40", "loss.sspc.n_iters=3"]


def load(overrides: Sequence[str]):
    from multisk.config import load_config

    return load_config(PAPER_CONFIG, list(overrides))


def format_report(title: str, report: MemoryReport) -> str:
    lines = [f"## {title}", f"peak {report.peak_bytes / GIB:.2f} GiB (during {report.peak_phase})", "",
             "| alive at the peak | GiB |", "|---|---:|"]
    lines += [f"| {label} | {nbytes / GIB:.2f} |" for label, nbytes in report.at_peak.items()]
    lines += ["", "| saved for backward, by module | GiB |", "|---|---:|"]
    lines += [f"| {label} | {nbytes / GIB:.2f} |" for label, nbytes in report.saved_by_module.items()]
    lines += [f"| **total** | {sum(report.saved_by_module.values()) / GIB:.2f} |"]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2160, help="clips per step (paper: 216 videos x 10 clips)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                        help="default: the config's train.precision (bf16 for the paper config)")
    parser.add_argument("--compare", action="store_true", help="before / after each memory option")
    parser.add_argument("--tiny", action="store_true", help="tiny widths and batch (seconds; for tests)")
    parser.add_argument("--cpu-rules", action="store_true", help="CPU autocast rules instead of CUDA's")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    base = (tiny_overrides() if args.tiny else []) + list(args.overrides)
    batch = 12 if args.tiny and args.batch == 2160 else args.batch
    variants = REDUCTIONS if args.compare else [("configuration as given", [])]
    results = {}
    for title, extra in variants:
        cfg = load(base + extra)
        precision = args.precision or cfg.train.precision
        report = estimate(cfg, batch, precision, cuda_rules=not args.cpu_rules)
        results[title] = {"overrides": base + extra, "precision": precision, "batch": batch, **report.as_dict()}
        print(format_report(f"{title} ({precision}, {batch} clips)", report))
        print()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
