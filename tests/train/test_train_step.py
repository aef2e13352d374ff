"""multisk.train.step against literal references: gradient clipping (after GradScaler unscaling), skipping
a non-finite batch, the EMA recurrence, the device-side non-finite watch, batch feeding; and the
device choice under torchrun."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from multisk.config import ConfigError
from multisk.device import pick_device
from multisk.train.step import (
    DevicePrefetcher,
    ExponentialMovingAverage,
    NonFiniteWatch,
    make_train_step,
)


class Toy(nn.Module):
    """y = W x + b with a BatchNorm (an integer buffer for the EMA); ``anchors`` as the step expects."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)
        self.norm = nn.BatchNorm1d(3)
        self.anchors = None

    def forward(self, batch):
        return {"y": self.norm(self.linear(batch["x"]))}


class SquareLoss(nn.Module):
    def forward(self, output, anchors=None):
        loss = (output["y"] ** 2).sum() * 10.0
        return {"loss": loss, "part": loss.detach() / 2}


def _batch(seed=1, nan=False):
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(seed))
    if nan:
        x[0, 0] = float("nan")
    return {"x": x}


def _literal_clipped_update(model, batch, lr, max_norm):
    """p − lr · g · min(1, max_norm / (‖g‖₂ + 1e-6)) with ‖g‖₂ over all gradients, written out."""
    reference = Toy()
    reference.load_state_dict(model.state_dict())
    loss = SquareLoss()(reference(batch))["loss"]
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    coef = min(1.0, max_norm / (norm + 1e-6))
    assert coef < 0.5, "the test must actually clip"
    return [p.detach() - lr * coef * g for p, g in zip(reference.parameters(), grads)]


@pytest.mark.parametrize("loss_scale", [None, 1024.0])
def test_grad_clip_is_the_global_norm_clip_of_the_unscaled_gradient(loss_scale):
    model = Toy()
    batch = _batch()
    expected = _literal_clipped_update(model, batch, lr=0.1, max_norm=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = (torch.amp.GradScaler("cpu", init_scale=loss_scale) if loss_scale
              else torch.amp.GradScaler("cpu", enabled=False))
    step = make_train_step(model, SquareLoss(), optimizer, scaler, "fp32", grad_clip=0.5)
    out = step(batch)
    assert out.applied and bool(out.finite)
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # zeroed (set to None) after the step


def test_skip_mode_leaves_a_nonfinite_batch_unapplied_and_stop_mode_does_not_sync():
    model = Toy()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}  # (the forward updates BN statistics)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    skip = make_train_step(model, SquareLoss(), optimizer, scaler, "fp32", on_nonfinite="skip")
    out = skip(_batch(nan=True))
    assert not out.applied and not bool(out.finite)
    assert optimizer.state_dict()["state"] == {}  # Adam never stepped (no moments, no step count)
    for key, value in model.named_parameters():
        assert torch.equal(value, before[key]), key
    assert skip(_batch()).applied
    stop = make_train_step(model, SquareLoss(), optimizer, scaler, "fp32", on_nonfinite="stop")
    out = stop(_batch(nan=True))
    assert out.applied and out.finite.dtype == torch.bool and not bool(out.finite)


def test_ema_follows_the_literal_recurrence_and_copies_integer_buffers():
    model = Toy()
    decay = 0.8
    ema = ExponentialMovingAverage(model, decay)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    step = make_train_step(model, SquareLoss(), optimizer, torch.amp.GradScaler("cpu", enabled=False), "fp32", ema=ema)
    reference = None
    for i in range(4):
        step(_batch(seed=i))
        current = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if reference is None:  # the first update copies the weights
            reference = current
        else:
            reference = {k: (decay * reference[k] + (1 - decay) * current[k]) if current[k].is_floating_point()
                         else current[k] for k in current}
    state = ema.state_dict()
    assert int(state["n_averaged"]) == 4
    for key, value in reference.items():
        torch.testing.assert_close(state[f"module.{key}"], value, rtol=1e-6, atol=1e-7)
    assert int(state["module.norm.num_batches_tracked"]) == 4
    restored = ExponentialMovingAverage(Toy(), decay)
    restored.load_state_dict(state)
    assert restored.n_averaged == 4 and all(torch.equal(a, b) for a, b in zip(restored.tensors, ema.tensors))


def test_nonfinite_watch_names_the_first_bad_step_its_terms_and_batch():
    watch = NonFiniteWatch(torch.device("cpu"), history=10)
    finite = {"loss": torch.tensor(1.0), "contrastive": torch.tensor(0.5), "sspc": torch.tensor(0.5)}
    for step in (1, 2):
        watch.record(step, finite, epoch=0, batch_in_epoch=step - 1, ids=[f"a{step}"])
    assert watch.check() is None
    watch.record(3, {**finite, "loss": torch.tensor(float("nan")), "sspc": torch.tensor(float("inf"))},
                 epoch=0, batch_in_epoch=2, ids=[f"x{i}" for i in range(10)])
    watch.record(4, {**finite, "contrastive": torch.tensor(float("nan"))}, epoch=1, batch_in_epoch=0, ids=["b"])
    message = watch.check()
    assert message == ("non-finite loss at step 3 (epoch 0, batch 2): terms ['loss', 'sspc']; "
                       "batch ids ['x0', 'x1', 'x2', 'x3', 'x4', 'x5', 'x6', 'x7'] ...")


def test_device_prefetcher_yields_the_loader_batches_in_order_with_half_video_widened():
    batches = [{"video": torch.randn(2, 3).half(), "mask": torch.ones(2), "id": [f"i{k}", f"j{k}"]} for k in range(3)]
    got = list(DevicePrefetcher(batches, torch.device("cpu")))
    assert [b["id"] for b in got] == [b["id"] for b in batches]
    for g, b in zip(got, batches):
        assert g["video"].dtype == torch.float32 and torch.equal(g["video"], b["video"].float())


def test_cuda_device_under_torchrun_is_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("cuda", local_rank=3, local_world_size=4) == torch.device("cuda:3")
    assert pick_device("auto", local_rank=1, local_world_size=2) == torch.device("cuda:1")
    assert pick_device("cuda:1") == torch.device("cuda:1")  # a single process may pick its GPU
    with pytest.raises(ConfigError, match=r"train.device='cuda:0'.*4 processes per node.*train.device=cuda"):
        pick_device("cuda:0", local_rank=2, local_world_size=4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        pick_device("cuda")
    assert pick_device("auto", local_rank=1) == torch.device("cpu")
