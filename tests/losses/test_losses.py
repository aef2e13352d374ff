"""Tests of multisk.losses against literal float64 implementations (loops over rows and anchors).

The Sinkhorn targets in the SSPC references come from literal solvers written here (the K × N × K
Multi-SK of docs/sinkhorn.md and SwAV's classic SK), independent of multisk.sinkhorn.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from multisk.config import ConfigError, ContrastiveConfig, LossConfig, ModelConfig, SSPCConfig
from multisk.losses import (
    CombinatorialContrastiveLoss,
    EmbeddingQueue,
    MaxMarginSoftmax,
    NormSoftmax,
    StructurePreservingLoss,
    TrainingObjective,
    build_term_table,
)
from multisk.losses.collectives import all_gather_no_grad, all_gather_with_grad, rank, world_size

MODS = ("text", "video", "audio")


# ----------------------------------------------------------------------------------------------------
# literal solvers (oracles)


def literal_multi_sinkhorn(scores: torch.Tensor, n_assign: int, eps: float, n_iters: int, low_scale: float):
    """docs/sinkhorn.md verbatim on the K × N × K tensor, float64. scores (N, K) -> targets (N, K)."""
    s = scores.double()
    n, k = s.shape
    scale = torch.tensor([low_scale] * (k - n_assign) + [1.0] * n_assign, dtype=torch.float64)
    a = torch.exp(scale[:, None, None] * s[None] / eps)  # (K levels, N, K)
    a = a / a.sum()
    for _ in range(n_iters):
        a = a * (n / k) / a.sum(dim=1, keepdim=True)  # per level and anchor: Σ_n = N/K
        a = a / a.sum(dim=0, keepdim=True)  # per sample and anchor: Σ_levels = 1
        a = a / a.sum(dim=2, keepdim=True)  # per level and sample: Σ_k = 1
    p = a[k - n_assign :].sum(0)
    low, high = p.min(dim=1, keepdim=True).values, p.max(dim=1, keepdim=True).values
    return (p - low) / (high - low)


def literal_classic_sinkhorn(scores: torch.Tensor, eps: float, n_iters: int):
    """SwAV Algorithm 1, float64: alternately equalise anchors, then give each sample mass 1."""
    q = torch.exp(scores.double() / eps)
    n, k = q.shape
    q = q / q.sum()
    for _ in range(n_iters):
        q = q / q.sum(dim=0, keepdim=True) / k
        q = q / q.sum(dim=1, keepdim=True) / n
    return q * n


# ----------------------------------------------------------------------------------------------------
# literal losses


def literal_contrastive(sim, valid, logit):
    """Σ over both directions of the mean over valid rows of -log softmax over valid columns."""
    keep = [i for i in range(len(sim)) if valid[i]]
    if not keep:
        return 0.0
    rows = cols = 0.0
    for i in keep:
        rows += -math.log(math.exp(logit(sim[i][i], True)) / sum(math.exp(logit(sim[i][j], i == j)) for j in keep))
        cols += -math.log(math.exp(logit(sim[i][i], True)) / sum(math.exp(logit(sim[j][i], i == j)) for j in keep))
    return rows / len(keep) + cols / len(keep)


def cosine_matrix(a, b):
    """Literal cosine similarities of two lists of vectors."""
    def norm(v):
        length = math.sqrt(sum(x * x for x in v))
        return [x / length for x in v]

    a, b = [norm(v) for v in a], [norm(v) for v in b]
    return [[sum(x * y for x, y in zip(u, v)) for v in b] for u in a]


def test_norm_softmax_matches_literal_loops():
    torch.manual_seed(0)
    sim = torch.rand(7, 7, dtype=torch.float64) * 2 - 1
    got = NormSoftmax(0.05)(sim)
    want = literal_contrastive(sim.tolist(), [True] * 7, lambda s, pos: s / 0.05)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_mms_matches_literal_loops():
    torch.manual_seed(1)
    sim = torch.rand(6, 6, dtype=torch.float64) * 2 - 1
    got = MaxMarginSoftmax(0.001)(sim)
    want = literal_contrastive(sim.tolist(), [True] * 6, lambda s, pos: s - (0.001 if pos else 0.0))
    assert got.item() == pytest.approx(want, rel=1e-6)
    # the margin matters: without it the value differs
    assert MaxMarginSoftmax(0.0)(sim).item() != pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("criterion", [NormSoftmax(0.1), MaxMarginSoftmax(0.2)])
def test_masked_criterion_equals_dropping_rows_and_columns(criterion):
    torch.manual_seed(2)
    sim = (torch.rand(8, 8, dtype=torch.float64) * 2 - 1).requires_grad_()
    valid = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    got = criterion(sim, valid)
    got.backward()
    sim_kept = sim.detach()[valid][:, valid].clone().requires_grad_()
    want = criterion(sim_kept)
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    grad_kept = sim.grad[valid][:, valid]
    assert torch.allclose(grad_kept, sim_kept.grad, atol=1e-12)
    assert torch.count_nonzero(sim.grad[~valid]) == 0 and torch.count_nonzero(sim.grad[:, ~valid]) == 0
    assert torch.isfinite(sim.grad).all()


def _joint_output(batch=6, dim=5, nonempty=None, fused=True, seed=3):
    torch.manual_seed(seed)
    joint = {m: torch.randn(batch, dim, dtype=torch.float64, requires_grad=True) for m in MODS}
    if fused:
        joint["video_audio"] = torch.randn(batch, dim, dtype=torch.float64, requires_grad=True)
    if nonempty is None:
        nonempty = {m: torch.ones(batch, dtype=torch.bool) for m in MODS}
    return joint, {"joint_normalized": {k: F.normalize(v, dim=-1) for k, v in joint.items()}, "nonempty": nonempty}


def test_combinatorial_loss_matches_literal_with_empty_rows():
    nonempty = {
        "text": torch.tensor([1, 1, 1, 1, 1, 0], dtype=torch.bool),
        "video": torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool),
        "audio": torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool),
    }
    joint, output = _joint_output(nonempty=nonempty)
    weights = {"text-video": 1.0, "text-audio": 0.1, "video-audio": 0.3, "text-video_audio": 0.5, "audio-text": 0.0}
    loss_fn = CombinatorialContrastiveLoss(ContrastiveConfig(pair_weights=weights), set(joint))
    total, per_pair = loss_fn(output)

    want_total, weight_sum = 0.0, 0.0
    for pair, weight in weights.items():
        if weight == 0:
            continue
        a, b = pair.split("-")
        modalities = a.split("_") + b.split("_")
        valid = [all(bool(nonempty[m][i]) for m in modalities) for i in range(6)]
        value = literal_contrastive(cosine_matrix(joint[a].tolist(), joint[b].tolist()), valid, lambda s, pos: s / 0.05)
        assert per_pair[pair].item() == pytest.approx(value, rel=1e-9), pair
        want_total += weight * value
        weight_sum += weight
    assert set(per_pair) == {p for p, w in weights.items() if w}
    assert total.item() == pytest.approx(want_total / weight_sum, rel=1e-9)
    assert not per_pair["text-video"].requires_grad


def test_combinatorial_loss_gradient_equals_dropped_batch_gradient():
    nonempty = {m: torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool) for m in MODS}
    nonempty["audio"] = torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool)
    joint, output = _joint_output(nonempty=nonempty, fused=False)
    cfg = ContrastiveConfig(kind="mms", pair_weights={"text-video": 1.0, "video-audio": 0.25})
    loss_fn = CombinatorialContrastiveLoss(cfg, set(joint))
    loss_fn(output)[0].backward()
    got = {m: joint[m].grad.clone() for m in MODS}

    # oracle: the reference's boolean indexing (rows and columns dropped) on fresh leaves
    leaves = {m: joint[m].detach().clone().requires_grad_() for m in MODS}
    mms = MaxMarginSoftmax(0.001)
    total = 0.0
    for (a, b), w in [(("text", "video"), 1.0), (("video", "audio"), 0.25)]:
        keep = nonempty[a] & nonempty[b]
        sim = F.normalize(leaves[a][keep], dim=-1) @ F.normalize(leaves[b][keep], dim=-1).t()
        total = total + w * mms(sim)
    (total / 1.25).backward()
    for m in MODS:
        assert torch.allclose(got[m], leaves[m].grad, atol=1e-12), m


def test_contrastive_all_rows_empty_gives_zero_not_nan():
    nonempty = {m: torch.zeros(4, dtype=torch.bool) for m in MODS}
    joint, output = _joint_output(batch=4, nonempty=nonempty, fused=False)
    loss = CombinatorialContrastiveLoss(ContrastiveConfig(), set(joint))(output)[0]
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.count_nonzero(joint[m].grad) == 0 for m in MODS)


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"text-video_audio": 1.0}, "video_audio"),
        ({"text_video": 1.0}, "'a-b'"),
        ({"text-smell": 1.0}, "smell"),
        ({"text-video": -1.0}, ">= 0"),
        ({"text-video": 0.0}, "no pair"),
    ],
)
def test_contrastive_config_errors_name_the_pair(weights, message):
    with pytest.raises(ConfigError, match="pair_weights") as info:
        CombinatorialContrastiveLoss(ContrastiveConfig(pair_weights=weights), {"text", "video", "audio"})
    assert message in str(info.value)


# ----------------------------------------------------------------------------------------------------
# distributed helpers without an initialised process group


def test_distributed_helpers_work_without_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert world_size() == 1 and rank() == 0
    assert all_gather_with_grad(x) is x
    gathered = all_gather_no_grad(x)
    assert not gathered.requires_grad and torch.equal(gathered, x.detach())


# ----------------------------------------------------------------------------------------------------
# queue


def test_queue_ring_buffer_semantics_and_first_fill():
    queue = EmbeddingQueue(size=5, dim=2)
    first = torch.arange(6.0).reshape(3, 2)  # rows b0, b1, b2
    queue.enqueue(first)
    # primed with repetitions (b0 b1 b2 b0 b1), then b0..b2 written at slots 0..2
    assert torch.equal(queue.rows, first[[0, 1, 2, 0, 1]])
    assert queue.write_position.item() == 3 and queue.num_real.item() == 3 and not queue.is_full.item()
    second = 10 + torch.arange(6.0).reshape(3, 2)  # c0, c1, c2 -> slots 3, 4, 0
    queue.enqueue(second)
    assert torch.equal(queue.rows, torch.stack([second[2], first[1], first[2], second[0], second[1]]))
    assert queue.write_position.item() == 1 and queue.num_real.item() == 5 and queue.is_full.item()
    big = 100 + torch.arange(14.0).reshape(7, 2)  # more rows than slots: the newest 5 are kept
    queue.enqueue(big)
    assert sorted(queue.rows[:, 0].tolist()) == sorted(big[2:, 0].tolist())
    assert queue.write_position.item() == 1 and queue.num_real.item() == 5


def test_queue_is_fifo_against_a_literal_list():
    torch.manual_seed(4)
    queue, fifo = EmbeddingQueue(size=7, dim=3), None
    for step in range(6):
        batch = torch.randn(3, 3)
        if fifo is None:
            fifo = [batch[i % 3] for i in range(7)]
        fifo = fifo[3:] + list(batch)
        queue.enqueue(batch)
        # the ring holds the FIFO's rows; slot order is the FIFO rotated by the write pointer
        pos = queue.write_position.item()
        rotated = torch.cat([queue.rows[pos:], queue.rows[:pos]])
        assert torch.equal(rotated, torch.stack(fifo)), step


def test_queue_state_dict_round_trip_and_no_refill_after_load():
    torch.manual_seed(5)
    queue = EmbeddingQueue(size=4, dim=2)
    queue.enqueue(torch.randn(3, 2))
    state = queue.state_dict()
    assert set(state) == {"rows", "write_position", "num_real", "initialized"}
    restored = EmbeddingQueue(size=4, dim=2)
    restored.load_state_dict(state)
    for key in state:
        assert torch.equal(restored.state_dict()[key], state[key])
    nxt = torch.randn(1, 2)
    queue.enqueue(nxt)
    restored.enqueue(nxt)  # must not re-prime: the loaded flag says "initialized"
    assert torch.equal(restored.rows, queue.rows)
    assert restored.num_real.item() == 4 and restored.is_full.item()
    assert queue.double().rows.dtype == torch.float64  # buffers follow module conversions


# ----------------------------------------------------------------------------------------------------
# SSPC


class FakeAnchors(nn.Module):
    """The anchor-head interface of docs/architecture.md, float64."""

    def __init__(self, modalities, input_dim, joint_dim, k):
        super().__init__()
        def anchor(dim):
            return nn.Parameter(torch.randn(k, dim, dtype=torch.float64))

        self.input_anchors = nn.ParameterDict({m: anchor(input_dim) for m in modalities})
        self.joint_anchors = nn.ParameterDict({m: anchor(joint_dim) for m in modalities})

    def input_scores(self, m, x):
        return x @ F.normalize(self.input_anchors[m], dim=-1).t()

    def joint_scores(self, m, x):
        return x @ F.normalize(self.joint_anchors[m], dim=-1).t()


def make_sspc_output(anchors, inputs, joints, nonempty):
    """Model output dict from leaf input embeddings / joint embeddings (normalised here)."""
    input_embedding = {m: F.normalize(x, dim=-1) for m, x in inputs.items()}
    joint_normalized = {n: F.normalize(x, dim=-1) for n, x in joints.items()}
    return {
        "input_embedding": input_embedding,
        "joint_normalized": joint_normalized,
        "input_anchor_scores": {m: anchors.input_scores(m, input_embedding[m]) for m in inputs},
        "joint_anchor_scores": {m: {n: anchors.joint_scores(m, joint_normalized[n]) for n in joints} for m in inputs},
        "nonempty": nonempty,
    }


def literal_sspc(cfg, anchors, output, queues, k, weights):
    """Literal SSPC of one step: loops over terms, rows and anchors; targets from the literal solvers
    on [queue rows; batch rows] per problem. ``queues``: dict (space, modality) -> list of row
    tensors (FIFO), or None without queue. Returns (loss tensor with autograd, {term: float})."""
    n_assign = max(1, round(cfg.assign_fraction * k))

    def targets(queue_scores, batch_scores):
        scores = batch_scores.detach() if queue_scores is None else torch.cat([queue_scores, batch_scores.detach()])
        if cfg.solver == "multi":
            t = literal_multi_sinkhorn(scores, n_assign, cfg.epsilon, cfg.n_iters, cfg.low_scale)
        else:
            t = literal_classic_sinkhorn(scores, cfg.epsilon, cfg.n_iters)
        return t[-batch_scores.shape[0] :]

    def queue_scores(space, anchor_m, rows_m):
        if queues is None:
            return None
        rows = torch.stack(queues[(space, rows_m)]).double()
        with torch.no_grad():
            fn = anchors.input_scores if space == "input" else anchors.joint_scores
            return fn(anchor_m, rows)

    def cost(s, q):
        tau = cfg.temperature
        if cfg.cost == "reference":
            total = 0.0
            for kk in range(len(q)):
                z = torch.exp(s[kk] / tau)
                total = total + (z + torch.log1p(torch.exp(-z)) - q[kk] * z)  # BCE with logits, z > 0
            return total / len(q)
        norm = sum(q)
        log_norm = torch.log(sum(torch.exp(s[j] / tau) for j in range(len(q))))
        return -sum((q[kk] / norm) * (s[kk] / tau - log_norm) for kk in range(len(q)))

    mods = list(output["input_embedding"])
    loss, values = 0.0, {}
    for m in mods:
        q_input = targets(queue_scores("input", m, m), output["input_anchor_scores"][m]).tolist()
        for n in mods:
            q_joint = targets(queue_scores("joint", m, n), output["joint_anchor_scores"][m][n]).tolist()
            weight = min(weights[m], weights[n])
            rows = [i for i in range(len(q_input)) if output["nonempty"][m][i] and output["nonempty"][n][i]]
            for name, predicted, target in [
                (f"input:{m}<-joint:{n}", output["input_anchor_scores"][m], q_joint),
                (f"joint:{n}<-input:{m}", output["joint_anchor_scores"][m][n], q_input),
            ]:
                term = sum(cost(predicted[i], target[i]) for i in rows) / len(rows) if rows else torch.zeros(())
                values[name] = float(term.detach())
                loss = loss + weight * term
    return loss, values


def _sspc_step_data(seed, batch, dims, nonempty=None):
    g = torch.Generator().manual_seed(seed)
    d, e = dims
    inputs = {m: torch.randn(batch, d, generator=g, dtype=torch.float64, requires_grad=True) for m in MODS}
    joints = {m: torch.randn(batch, e, generator=g, dtype=torch.float64, requires_grad=True) for m in MODS}
    if nonempty is None:
        nonempty = {m: torch.ones(batch, dtype=torch.bool) for m in MODS}
    return inputs, joints, nonempty


def test_term_table_has_18_terms_with_min_weights():
    table = build_term_table(MODS, {"text": 1.0, "video": 0.5, "audio": 0.1})
    assert len(table) == 18 and len({t.name for t in table}) == 18
    assert {(t.anchor_modality, t.joint_modality, t.direction) for t in table} == {
        (m, n, d) for m in MODS for n in MODS for d in ("input<-joint", "joint<-input")
    }
    for t in table:
        assert t.weight == min({"text": 1.0, "video": 0.5, "audio": 0.1}[t.anchor_modality],
                               {"text": 1.0, "video": 0.5, "audio": 0.1}[t.joint_modality])
    with pytest.raises(ConfigError, match="modality_weights"):
        build_term_table(MODS, {"text": 1.0, "video": 1.0})


@pytest.mark.parametrize(
    "solver, cost",
    [("multi", "reference"), ("multi", "soft_ce"), ("classic", "reference")],
)
def test_sspc_matches_literal_over_steps_with_queue(solver, cost):
    """Three steps; queue (size 8 < 3 batches of 6) primed with the first batch; warm-up off; audio
    empty on some rows. Loss, every term and the gradients match the literal implementation."""
    k, d, e, batch, size = 4, 5, 7, 6, 8
    weights = {"text": 1.0, "video": 0.7, "audio": 0.1}
    cfg = SSPCConfig(solver=solver, cost=cost, queue_size=size, warmup="none", modality_weights=weights, n_iters=10)
    torch.manual_seed(6)
    anchors = FakeAnchors(MODS, d, e, k)
    loss_fn = StructurePreservingLoss(cfg, MODS, d, e, k)
    fifo = None
    for step in range(3):
        audio = torch.ones(batch, dtype=torch.bool)
        audio[step] = False
        nonempty = {m: torch.ones(batch, dtype=torch.bool) for m in ("text", "video")} | {"audio": audio}
        inputs, joints, nonempty = _sspc_step_data(10 + step, batch, (d, e), nonempty)
        output = make_sspc_output(anchors, inputs, joints, nonempty)
        if fifo is None:  # literal priming: repetitions of the first batch
            fifo = {}
            for m in MODS:
                fifo[("input", m)] = [output["input_embedding"][m][i % batch].detach().float() for i in range(size)]
                fifo[("joint", m)] = [output["joint_normalized"][m][i % batch].detach().float() for i in range(size)]
        want_loss, want_terms = literal_sspc(cfg, anchors, output, fifo, k, weights)
        want_grads = torch.autograd.grad(
            want_loss, list(inputs.values()) + list(joints.values()) + list(anchors.parameters()), retain_graph=True
        )

        loss, terms = loss_fn(output, anchors)
        grads = torch.autograd.grad(loss, list(inputs.values()) + list(joints.values()) + list(anchors.parameters()))
        assert loss.item() == pytest.approx(want_loss.item(), rel=2e-4), step
        for name, value in want_terms.items():
            assert terms[name].item() == pytest.approx(value, rel=2e-4, abs=1e-6), (step, name)
        for got, want in zip(grads, want_grads):
            assert torch.allclose(got, want, rtol=2e-4, atol=1e-6), step
        assert terms["active"].item() == 1.0
        # literal FIFO update after the targets
        for m in MODS:
            fifo[("input", m)] = fifo[("input", m)][batch:] + list(output["input_embedding"][m].detach().float())
            fifo[("joint", m)] = fifo[("joint", m)][batch:] + list(output["joint_normalized"][m].detach().float())
    for m in MODS:  # the ring holds the FIFO's rows
        queue = loss_fn.joint_queues[m]
        pos = queue.write_position.item()
        assert torch.equal(torch.cat([queue.rows[pos:], queue.rows[:pos]]), torch.stack(fifo[("joint", m)]))


def test_sspc_without_queue_and_all_audio_empty():
    k, d, e, batch = 3, 4, 4, 5
    cfg = SSPCConfig(queue_size=0, n_iters=8)
    torch.manual_seed(7)
    anchors = FakeAnchors(MODS, d, e, k)
    nonempty = {"text": torch.ones(batch, dtype=torch.bool), "video": torch.ones(batch, dtype=torch.bool),
                "audio": torch.zeros(batch, dtype=torch.bool)}
    inputs, joints, nonempty = _sspc_step_data(20, batch, (d, e), nonempty)
    output = make_sspc_output(anchors, inputs, joints, nonempty)
    loss, terms = StructurePreservingLoss(cfg, MODS, d, e, k)(output, anchors)
    want_loss, want_terms = literal_sspc(cfg, anchors, output, None, k, cfg.modality_weights)
    assert loss.item() == pytest.approx(want_loss.item(), rel=2e-4)
    audio_terms = [name for name in want_terms if "audio" in name]
    assert len(audio_terms) == 10
    assert all(terms[name].item() == 0.0 for name in audio_terms)
    loss.backward()
    assert torch.count_nonzero(inputs["audio"].grad) == 0 and torch.count_nonzero(joints["audio"].grad) == 0
    assert torch.isfinite(inputs["text"].grad).all() and torch.count_nonzero(inputs["text"].grad) > 0


def test_sspc_warmup_zero_until_queue_filled_once():
    k, d, e, batch, size = 3, 4, 4, 4, 10
    cfg = SSPCConfig(queue_size=size, warmup="queue_full", n_iters=5)
    torch.manual_seed(8)
    anchors = FakeAnchors(MODS, d, e, k)
    loss_fn = StructurePreservingLoss(cfg, MODS, d, e, k)
    active = []
    for step in range(5):
        inputs, joints, nonempty = _sspc_step_data(30 + step, batch, (d, e))
        loss, terms = loss_fn(make_sspc_output(anchors, inputs, joints, nonempty), anchors)
        loss.backward()
        active.append(terms["active"].item())
        if active[-1] == 0.0:
            assert loss.item() == 0.0 and torch.count_nonzero(inputs["text"].grad) == 0
            assert terms["input:text<-joint:text"].item() > 0  # the ungated cost is still reported
        else:
            assert loss.item() > 0 and torch.count_nonzero(inputs["text"].grad) > 0
    # 0, 4, 8 real rows before steps 1-3; 10 (full) before step 4
    assert active == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert all(q.num_real.item() == size for q in loss_fn.input_queues.values())


def test_sspc_queues_in_state_dict_and_restored():
    k, d, e, batch = 3, 4, 4, 4
    cfg = SSPCConfig(queue_size=6, n_iters=5)
    torch.manual_seed(9)
    anchors = FakeAnchors(MODS, d, e, k)
    loss_fn = StructurePreservingLoss(cfg, MODS, d, e, k)
    for step in range(2):  # 8 rows written into 6 slots: full, pointer at 2
        inputs, joints, nonempty = _sspc_step_data(40 + step, batch, (d, e))
        loss_fn(make_sspc_output(anchors, inputs, joints, nonempty), anchors)
    state = loss_fn.state_dict()
    assert {f"{space}_queues.{m}.rows" for space in ("input", "joint") for m in MODS} <= set(state)
    restored = StructurePreservingLoss(cfg, MODS, d, e, k)
    restored.load_state_dict(state)
    inputs, joints, nonempty = _sspc_step_data(42, batch, (d, e))
    output = make_sspc_output(anchors, inputs, joints, nonempty)
    a, terms_a = loss_fn(output, anchors)
    b, terms_b = restored(output, anchors)
    assert a.item() == b.item() > 0 and terms_a["active"].item() == terms_b["active"].item() == 1.0


def test_sspc_config_errors():
    with pytest.raises(ConfigError, match="loss.sspc.cost"):
        StructurePreservingLoss(SSPCConfig(cost="mse"), MODS, 4, 4, 3)
    with pytest.raises(ConfigError, match="loss.sspc.warmup"):
        StructurePreservingLoss(SSPCConfig(warmup="later"), MODS, 4, 4, 3)
    with pytest.raises(ConfigError, match="model.modalities"):
        StructurePreservingLoss(SSPCConfig(), ["text", "smell"], 4, 4, 3)


# ----------------------------------------------------------------------------------------------------
# objective


def test_training_objective_combines_and_names_terms():
    k, d, e, batch = 3, 4, 5, 6
    model_cfg = ModelConfig(embed_dim=d, projection_dim=e, num_anchors=k, num_heads=1)
    loss_cfg = LossConfig(sspc=SSPCConfig(queue_size=0, weight=0.5, n_iters=5))
    torch.manual_seed(10)
    anchors = FakeAnchors(MODS, d, e, k)
    objective = TrainingObjective(loss_cfg, model_cfg, {"text", "video", "audio"})
    inputs, joints, nonempty = _sspc_step_data(50, batch, (d, e))
    output = make_sspc_output(anchors, inputs, joints, nonempty)
    result = objective(output, anchors)
    assert result["loss"].requires_grad
    assert result["loss"].item() == pytest.approx(result["contrastive"].item() + 0.5 * result["sspc"].item(), rel=1e-9)
    assert {"contrastive/text-video", "contrastive/text-audio", "contrastive/video-audio"} <= set(result)
    assert "sspc/input:text<-joint:video" in result and "sspc/joint:audio<-input:video" in result
    assert sum(key.startswith("sspc/") for key in result) == 19  # 18 terms + "sspc/active"
    assert all(not v.requires_grad for key, v in result.items() if key != "loss")

    off = TrainingObjective(LossConfig(sspc=SSPCConfig(enabled=False)), model_cfg, {"text", "video", "audio"})
    result_off = off(output)
    assert result_off["sspc"].item() == 0.0 and not any(key.startswith("sspc/") for key in result_off)
    assert result_off["loss"].item() == pytest.approx(result["contrastive"].item(), rel=1e-12)

    with pytest.raises(ConfigError, match="text-video_audio"):
        TrainingObjective(LossConfig(contrastive=ContrastiveConfig(pair_weights={"text-video_audio": 1.0})),
                          model_cfg, {"text", "video", "audio"})


def test_objective_inside_cpu_bf16_autocast_equals_float32():
    # Issue 10 item 7 / issue 13: the contrastive similarity matrices, the SSPC targets and costs run in
    # float32 whatever the trainer's autocast (as the reference, which computes its losses outside it).
    # Embeddings as a bf16 model would emit them (rounded to bf16, carried as float32).
    from multisk.models.anchors import AnchorHeads

    k, d, e, batch = 16, 64, 96, 48
    model_cfg = ModelConfig(embed_dim=d, projection_dim=e, num_anchors=k, num_heads=1)
    loss_cfg = LossConfig(sspc=SSPCConfig(queue_size=96, n_iters=20, warmup="none"))
    torch.manual_seed(12)
    anchors = AnchorHeads(MODS, d, e, k)
    for p in anchors.parameters():
        nn.init.normal_(p)
    g = torch.Generator().manual_seed(13)

    def step_output(objective, inputs, joints):
        output = make_sspc_output(anchors, inputs, joints, {m: torch.ones(batch, dtype=torch.bool) for m in MODS})
        return objective(output, anchors)

    results = []
    for autocast in (False, True):
        objective = TrainingObjective(loss_cfg, model_cfg, {"text", "video", "audio"})
        g.manual_seed(13)
        steps = []
        for _ in range(2):  # the second step also scores the queue
            inputs = {m: torch.randn(batch, d, generator=g).bfloat16().float().requires_grad_() for m in MODS}
            joints = {m: torch.randn(batch, e, generator=g).bfloat16().float().requires_grad_() for m in MODS}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = step_output(objective, inputs, joints)
            grads = torch.autograd.grad(out["loss"], [*inputs.values(), *joints.values()])
            steps.append(({key: v.detach() for key, v in out.items()}, grads))
        results.append(steps)
    for (want, want_grads), (got, got_grads) in zip(*results):
        assert set(got) == set(want)
        for key, value in want.items():
            assert got[key].dtype == value.dtype == torch.float32, key
            torch.testing.assert_close(got[key], value, atol=1e-6, rtol=1e-5, msg=key)
        for got_grad, want_grad in zip(got_grads, want_grads):
            torch.testing.assert_close(got_grad, want_grad, atol=1e-6, rtol=1e-5)
    assert results[0][1][0]["sspc"] > 0 and results[0][1][0]["contrastive"] > 0


def test_choice_registries_are_the_configurable_values_and_messages_list_them():
    # Issue 12 item 5: one source of truth per choice; config validation and the losses read one list
    from multisk.config import (
        AUDIO_ENCODER_NAMES, CONTRASTIVE_KINDS, SSPC_COSTS, SSPC_SOLVERS, check_registry, load_config,
    )
    from multisk.losses.contrastive import CRITERIA
    from multisk.losses.structure_preserving import COSTS, SOLVERS
    from multisk.models.davenet import AUDIO_ENCODERS

    assert sorted(COSTS) == sorted(SSPC_COSTS) and sorted(SOLVERS) == sorted(SSPC_SOLVERS)
    assert sorted(CRITERIA) == sorted(CONTRASTIVE_KINDS) and sorted(AUDIO_ENCODERS) == sorted(AUDIO_ENCODER_NAMES)
    listed = ", ".join(repr(name) for name in SSPC_COSTS)
    with pytest.raises(ConfigError, match=f"loss.sspc.cost: expected one of {listed}, got 'mse'"):
        load_config(None, ["loss.sspc.cost=mse"])
    with pytest.raises(ConfigError, match=f"loss.sspc.cost: expected one of {listed}, got 'mse'"):
        StructurePreservingLoss(SSPCConfig(cost="mse"), MODS, 4, 4, 3)
    with pytest.raises(ConfigError, match="loss.sspc.solver: expected one of 'multi', 'classic'"):
        StructurePreservingLoss(SSPCConfig(solver="pot"), MODS, 4, 4, 3)
    with pytest.raises(ConfigError, match="loss.contrastive.kind: expected one of 'norm_softmax', 'mms'"):
        CombinatorialContrastiveLoss(ContrastiveConfig(kind="triplet"), {"text", "video", "audio"})
    with pytest.raises(ConfigError, match="loss.sspc.weight"):
        load_config(None, ["loss.sspc.weight=-1"])
    # a registry that drifts from the configurable names is refused where it is built
    with pytest.raises(ConfigError, match="loss.sspc.cost: implemented"):
        check_registry("loss.sspc.cost", {**COSTS, "mse": None}, SSPC_COSTS)
