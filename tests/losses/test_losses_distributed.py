"""Two-process (gloo, 127.0.0.1) checks that the losses under data parallelism equal one process on the
concatenated batch: values, parameter gradients after DDP-style averaging, and SSPC queue state.

One spawn runs every scenario (module-scoped fixture); the single-process reference runs the same code
in this process with torch.distributed not initialised. A tiny float64 model (linear layers + anchors)
stands in for the encoders, so the gradients are w.r.t. the embeddings' source parameters.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from multisk.config import ContrastiveConfig, LossConfig, ModelConfig, SSPCConfig
from multisk.prior import combine_with_prior
from multisk.losses import (
    CombinatorialContrastiveLoss,
    StructurePreservingLoss,
    TrainingObjective,
    all_gather_no_grad,
    all_gather_with_grad,
)

MODS = ("text", "video", "audio")
WORLD = 2
GLOBAL_BATCH = 8
FEATURES, D, E, K = 6, 5, 7, 4
PRIOR_DIM = 3


class TinyAnchors(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_anchors = nn.ParameterDict({m: nn.Parameter(torch.randn(K, D)) for m in MODS})
        self.joint_anchors = nn.ParameterDict({m: nn.Parameter(torch.randn(K, E)) for m in MODS})

    def input_scores(self, m, x):
        return x @ F.normalize(self.input_anchors[m], dim=-1).t()

    def joint_scores(self, m, x):
        return x @ F.normalize(self.joint_anchors[m], dim=-1).t()


class TinyModel(nn.Module):
    """Linear input projections and joint projections producing the output dict of
    docs/architecture.md, plus a fused "video_audio" joint embedding."""

    def __init__(self):
        super().__init__()
        self.input_proj = nn.ModuleDict({m: nn.Linear(FEATURES, D) for m in MODS})
        self.joint_proj = nn.ModuleDict({m: nn.Linear(D, E) for m in MODS})
        self.anchors = TinyAnchors()

    def forward(self, features, nonempty):
        inputs = {m: F.normalize(self.input_proj[m](features[m]), dim=-1) for m in MODS}
        joint = {m: self.joint_proj[m](inputs[m]) for m in MODS}
        joint["video_audio"] = joint["video"] + joint["audio"]
        normalized = {name: F.normalize(x, dim=-1) for name, x in joint.items()}
        return {
            "joint": joint,
            "joint_normalized": normalized,
            "input_embedding": inputs,
            "input_anchor_scores": {m: self.anchors.input_scores(m, inputs[m]) for m in MODS},
            "joint_anchor_scores": {m: {n: self.anchors.joint_scores(m, normalized[n]) for n in MODS} for m in MODS},
            "nonempty": nonempty,
        }


def make_data(steps):
    g = torch.Generator().manual_seed(123)
    data = []
    for step in range(steps):
        features = {m: torch.randn(GLOBAL_BATCH, FEATURES, generator=g, dtype=torch.float64) for m in MODS}
        nonempty = {m: torch.ones(GLOBAL_BATCH, dtype=torch.bool) for m in MODS}
        nonempty["audio"][[step % GLOBAL_BATCH, (step + 5) % GLOBAL_BATCH]] = False
        nonempty["text"][(3 * step + 1) % GLOBAL_BATCH] = False
        data.append((features, nonempty))
    return data


def local_slice(batch, rank, world):
    features, nonempty = batch
    b = GLOBAL_BATCH // world
    rows = slice(rank * b, (rank + 1) * b)
    return {m: x[rows] for m, x in features.items()}, {m: x[rows] for m, x in nonempty.items()}


def mean_over_ranks(value: torch.Tensor, world: int) -> torch.Tensor:
    value = value.detach().clone()
    if world > 1:
        dist.all_reduce(value)
        value /= world
    return value


def fresh_model():
    torch.manual_seed(7)
    return TinyModel().double()


def averaged_grads(loss, params, world):
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [mean_over_ranks(torch.zeros_like(p) if g is None else g, world) for p, g in zip(params, grads)]


@torch.no_grad()
def sgd_step(params, grads, lr=0.5):
    """Plain SGD (torch.optim would import torch._dynamo: seconds per process on a loaded machine)."""
    for p, g in zip(params, grads):
        p -= lr * g


def objective_steps(rank, world, data, contrastive_cfg, sspc_cfg, prior_mix=None):
    """The total objective through a real DDP wrapper, one SGD step per batch: per step the values
    (mean over ranks) and DDP-averaged gradients, then the queue state. ``prior_mix`` w makes the
    contrastive loss score [sqrt(1-w) x ; sqrt(w) p] (the objective's ``contrastive_embeddings`` hook) with p a
    frozen function of the input."""
    model = fresh_model()
    wrapped = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    objective = TrainingObjective(
        LossConfig(contrastive=contrastive_cfg, sspc=sspc_cfg),
        ModelConfig(embed_dim=D, projection_dim=E, num_anchors=K, num_heads=1),
        {"text", "video", "audio", "video_audio"},
        contrastive_embeddings=None if prior_mix is None else (
            lambda out: combine_with_prior(out["joint_normalized"], out["prior"], prior_mix)),
    )
    steps = []
    for batch in data:
        features, nonempty = local_slice(batch, rank, world)
        model.zero_grad()
        out = wrapped(features, nonempty)
        if prior_mix is not None:
            prior = {m: F.normalize(features[m][:, :PRIOR_DIM], dim=-1) for m in MODS}
            out["prior"] = prior
        losses = objective(out, model.anchors)
        losses["loss"].backward()
        steps.append({"values": {key: mean_over_ranks(v, world) for key, v in losses.items()},
                      "grads": [p.grad.clone() for p in model.parameters()]})
        sgd_step(list(model.parameters()), [p.grad for p in model.parameters()])
    return steps, {key: value.clone() for key, value in objective.state_dict().items()}


def run_scenarios(rank: int, world: int) -> dict:
    """Everything the comparison needs, computed on this rank's rows (world 1: the whole batch)."""
    results = {}
    data = make_data(4)
    contrastive_cfg = ContrastiveConfig(pair_weights={"text-video": 1.0, "text-audio": 0.1, "text-video_audio": 0.5})
    sspc_cfg = SSPCConfig(queue_size=12, n_iters=10, warmup="queue_full")

    # 1. contrastive loss, one step
    model = fresh_model()
    params = list(model.parameters())
    loss_fn = CombinatorialContrastiveLoss(contrastive_cfg, {"text", "video", "audio", "video_audio"})
    loss, per_pair = loss_fn(model(*local_slice(data[0], rank, world)))
    results["contrastive_loss"] = mean_over_ranks(loss, world)
    results["contrastive_pairs"] = {p: mean_over_ranks(v, world) for p, v in per_pair.items()}
    results["contrastive_grads"] = averaged_grads(loss, params, world)

    # 2. SSPC alone, 4 steps with SGD updates: warm-up (queue 12 < 2 global batches), then active
    model = fresh_model()
    params = list(model.parameters())
    sspc = StructurePreservingLoss(sspc_cfg, MODS, D, E, K)
    results["sspc"] = []
    for batch in data:
        loss, terms = sspc(model(*local_slice(batch, rank, world)), model.anchors)
        grads = averaged_grads(loss, params, world)
        results["sspc"].append(
            {"loss": mean_over_ranks(loss, world), "terms": {t: mean_over_ranks(v, world) for t, v in terms.items()},
             "grads": grads}
        )
        sgd_step(params, grads)
    results["sspc_queues"] = {key: value.clone() for key, value in sspc.state_dict().items()}

    # 3. the total objective through a real DDP wrapper (gradients averaged by DDP), 3 steps
    results["total"], results["total_queues"] = objective_steps(
        rank, world, data[:3], contrastive_cfg, SSPCConfig(queue_size=8, n_iters=10, cost="soft_ce"))

    # 4. the same with the text-space prior in the contrastive loss (model.prior.train_weight): the loss
    # gathers the mixed embeddings [sqrt(1-w) x ; sqrt(w) p] (width E + PRIOR_DIM), SSPC gathers its own
    results["mixed"], results["mixed_queues"] = objective_steps(
        rank, world, data[:3], contrastive_cfg, SSPCConfig(queue_size=8, n_iters=10), prior_mix=0.4)
    return results


def gather_checks(rank: int, world: int) -> dict:
    """all_gather_with_grad / all_gather_no_grad on known values."""
    b = 3
    local = torch.full((b, 2), float(rank + 1), dtype=torch.float64, requires_grad=True)
    gathered = all_gather_with_grad(local)
    coefficients = (rank + 1) * torch.arange(world * b * 2, dtype=torch.float64).reshape(world * b, 2)
    (gathered * coefficients).sum().backward()
    no_grad = all_gather_no_grad(local * 2)
    return {"gathered": gathered.detach().clone(), "grad": local.grad.clone(),
            "no_grad": no_grad, "no_grad_requires_grad": no_grad.requires_grad}


def communication_checks(rank: int, world: int) -> dict:
    """The collectives of one objective step (forward, backward) and of SSPC without queues, logged."""
    import multisk.losses.collectives as collectives

    log = []
    scatter_name = "reduce_scatter_single" if hasattr(dist, "reduce_scatter_single") else "reduce_scatter_tensor"
    gather, all_reduce, reduce_scatter = collectives._all_gather_single, dist.all_reduce, getattr(dist, scatter_name)

    def logged_gather(output, local, group=None):
        log.append(("all_gather", tuple(local.shape)))
        return gather(output, local, group=group)

    def logged_all_reduce(tensor, *args, **kwargs):
        log.append(("all_reduce", tuple(tensor.shape)))
        return all_reduce(tensor, *args, **kwargs)

    def logged_reduce_scatter(output, tensor, *args, **kwargs):
        log.append(("reduce_scatter", tuple(tensor.shape)))
        return reduce_scatter(output, tensor, *args, **kwargs)

    collectives._all_gather_single, dist.all_reduce = logged_gather, logged_all_reduce
    setattr(dist, scatter_name, logged_reduce_scatter)
    try:
        model = fresh_model()
        batch = local_slice(make_data(1)[0], rank, world)
        objective = TrainingObjective(
            LossConfig(contrastive=ContrastiveConfig(pair_weights={"text-video": 1.0, "text-audio": 0.1,
                                                                   "text-video_audio": 0.5}),
                       sspc=SSPCConfig(queue_size=8, n_iters=5)),
            ModelConfig(embed_dim=D, projection_dim=E, num_anchors=K, num_heads=1),
            {"text", "video", "audio", "video_audio"},
        )
        out = objective(model(*batch), model.anchors)
        forward = list(log)
        log.clear()
        out["loss"].backward()
        backward = list(log)
        log.clear()
        StructurePreservingLoss(SSPCConfig(queue_size=0, n_iters=5), MODS, D, E, K)(model(*batch), model.anchors)
        no_queue = list(log)
    finally:
        collectives._all_gather_single, dist.all_reduce = gather, all_reduce
        setattr(dist, scatter_name, reduce_scatter)
    return {"forward": forward, "backward": backward, "no_queue": no_queue}


def _worker(rank, world, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = run_scenarios(rank, world)
        results["gather"] = gather_checks(rank, world)
        results["communication"] = communication_checks(rank, world)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(free_port, tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("distributed_losses"))
    mp.spawn(_worker, args=(WORLD, free_port(), out_dir), nprocs=WORLD, join=True)
    ranks = [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]
    single = run_scenarios(0, 1)
    return ranks, single


def _close(a, b, tol=1e-6):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return torch.allclose(a, b, rtol=tol, atol=tol)


def test_distributed_all_gather_with_grad_routes_gradient_to_local_shard(distributed_results):
    ranks, _ = distributed_results
    b = 3
    for r, res in enumerate(ranks):
        g = res["gather"]
        expected = torch.cat([torch.full((b, 2), float(q + 1), dtype=torch.float64) for q in range(WORLD)])
        assert torch.equal(g["gathered"], expected)
        assert torch.equal(g["no_grad"], 2 * expected) and not g["no_grad_requires_grad"]
        # gradient of the local rows = Σ over ranks of that rank's coefficients on those rows
        total_coefficient = sum(q + 1 for q in range(WORLD))
        rows = torch.arange(WORLD * b * 2, dtype=torch.float64).reshape(WORLD * b, 2)[r * b : (r + 1) * b]
        assert torch.equal(g["grad"], total_coefficient * rows)


def test_distributed_contrastive_matches_single_process(distributed_results):
    ranks, single = distributed_results
    for res in ranks:
        assert _close(res["contrastive_loss"], single["contrastive_loss"])
        for pair, value in single["contrastive_pairs"].items():
            assert _close(res["contrastive_pairs"][pair], value), pair
        for got, want in zip(res["contrastive_grads"], single["contrastive_grads"]):
            assert _close(got, want)
    # not trivially zero
    assert single["contrastive_loss"] > 0 and any(g.abs().sum() > 0 for g in single["contrastive_grads"])


def test_distributed_sspc_matches_single_process_with_queues(distributed_results):
    ranks, single = distributed_results
    assert [step["terms"]["active"].item() for step in single["sspc"]] == [0.0, 0.0, 1.0, 1.0]
    for res in ranks:
        for step, (got, want) in enumerate(zip(res["sspc"], single["sspc"])):
            assert _close(got["loss"], want["loss"], 1e-5), step
            for term, value in want["terms"].items():
                assert _close(got["terms"][term], value, 1e-5), (step, term)
            for g, w in zip(got["grads"], want["grads"]):
                assert _close(g, w, 1e-5), step
        for key, value in single["sspc_queues"].items():
            assert _close(res["sspc_queues"][key], value, 1e-6), key
    assert single["sspc"][-1]["loss"] > 0
    # queues identical on both ranks (bit for bit)
    for key, value in ranks[0]["sspc_queues"].items():
        assert torch.equal(ranks[1]["sspc_queues"][key], value), key


def test_distributed_total_objective_under_ddp_matches_single_process(distributed_results):
    ranks, single = distributed_results
    for res in ranks:
        for step, (got, want) in enumerate(zip(res["total"], single["total"])):
            assert set(got["values"]) == set(want["values"])
            for key, value in want["values"].items():
                assert _close(got["values"][key], value, 1e-5), (step, key)
            for g, w in zip(got["grads"], want["grads"]):
                assert _close(g, w, 1e-5), step
        for key, value in single["total_queues"].items():
            assert _close(res["total_queues"][key], value, 1e-6), key
    assert single["total"][-1]["values"]["sspc/active"].item() == 1.0


def test_distributed_objective_with_the_prior_in_the_contrastive_loss_matches_single_process(distributed_results):
    ranks, single = distributed_results
    for res in ranks:
        for step, (got, want) in enumerate(zip(res["mixed"], single["mixed"])):
            for key, value in want["values"].items():
                assert _close(got["values"][key], value, 1e-5), (step, key)
            for g, w in zip(got["grads"], want["grads"]):
                assert _close(g, w, 1e-5), (step, (g - w).abs().max().item(), w.abs().max().item())
        for key, value in single["mixed_queues"].items():
            assert _close(res["mixed_queues"][key], value, 1e-6), key
    assert single["mixed"][-1]["values"]["sspc/active"].item() == 1.0
    # the mix changed the contrastive loss (not the same numbers as scenario 3)
    assert not _close(single["mixed"][0]["values"]["contrastive"], single["total"][0]["values"]["contrastive"], 1e-3)


def test_distributed_sspc_reuses_the_contrastive_gather_and_backward_reduce_scatters(distributed_results):
    # Issue 13 item 6: the joint embeddings cross the network once per step (the contrastive loss's
    # gather, which SSPC reuses with its nonempty flags); SSPC sends scores and, for its queues, input
    # embeddings only; the gradient of the gathered keys goes back by reduce-scatter, not all-reduce
    ranks, _ = distributed_results
    b, problems = GLOBAL_BATCH // WORLD, 3 + 3 * 3
    for res in ranks:
        log = res["communication"]
        assert sorted(log["forward"]) == sorted([
            ("all_gather", (b, 4 * E)),  # contrastive keys: text, video, audio, video_audio
            ("all_gather", (b, 3)),  # their modalities' nonempty flags
            ("all_gather", (b, problems * K + 3 * D)),  # SSPC: batch scores + input embeddings
        ])
        assert log["backward"] == [("reduce_scatter", (GLOBAL_BATCH, 4 * E))]
        # without queues SSPC needs no embeddings at all: scores and (without keys) the flags
        assert log["no_queue"] == [("all_gather", (b, problems * K + 3))]
