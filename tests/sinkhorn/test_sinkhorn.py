"""Tests for multisk.sinkhorn: Multi-SK against the literal K × N × K formulation, its constraints,
stability at small ε and half precision, batching, argument checks; classic SK against POT."""

import math

import numpy as np
import pytest
import torch

from multisk.sinkhorn import (
    multi_sinkhorn,
    multi_sinkhorn_reference,
    multi_sinkhorn_two_level,
    sinkhorn,
)


def literal_levels_numpy(scores, n_assign, eps, n_iters, low_scale):
    """docs/sinkhorn.md written independently in numpy float64: returns the full (K, N, K) tensor A and targets."""
    scores = np.asarray(scores, dtype=np.float64)
    n_rows, n_anchors = scores.shape
    scale = np.array([low_scale] * (n_anchors - n_assign) + [1.0] * n_assign)
    levels = np.exp(scale[:, None, None] * scores[None, :, :] / eps)
    levels = levels / levels.sum()
    for _ in range(n_iters):
        levels = levels / levels.sum(axis=1, keepdims=True) * (n_rows / n_anchors)
        levels = levels / levels.sum(axis=0, keepdims=True)
        levels = levels / levels.sum(axis=2, keepdims=True)
    assigned = levels[n_anchors - n_assign:].sum(axis=0)
    lo = assigned.min(axis=1, keepdims=True)
    hi = assigned.max(axis=1, keepdims=True)
    flat = (hi - lo) <= 4 * np.finfo(np.float64).eps * hi
    targets = np.where(flat, np.clip(assigned, 0, 1), (assigned - lo) / np.where(flat, 1.0, hi - lo))
    return levels, targets


def cosine_scores(*shape, dim=32, seed=0, dtype=torch.float32):
    """Cosine similarities of random unit vectors with random unit anchors: (..., N, K) in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    *batch, n_rows, n_anchors = shape
    rows = torch.nn.functional.normalize(torch.randn(*batch, n_rows, dim, generator=generator), dim=-1)
    anchors = torch.nn.functional.normalize(torch.randn(n_anchors, dim, generator=generator), dim=-1)
    return (rows @ anchors.T).to(dtype)


def assignment_grid():
    cases = []
    for n_rows, n_anchors in [(5, 8), (24, 8), (37, 16), (19, 32)]:
        counts = {1, n_anchors, max(1, n_anchors // 8), n_anchors // 4, n_anchors // 2, 3 * n_anchors // 4}
        cases += [(n_rows, n_anchors, r) for r in sorted(counts)]
    return cases


@pytest.mark.parametrize("n_rows,n_anchors,n_assign", assignment_grid())
def test_multi_sinkhorn_matches_literal_formulation_float64(n_rows, n_anchors, n_assign):
    scores = cosine_scores(n_rows, n_anchors, seed=n_rows * 100 + n_assign, dtype=torch.float64)
    eps, n_iters = 0.07, 20
    levels, targets = literal_levels_numpy(scores.numpy(), n_assign, eps, n_iters, 0.25)

    ours = multi_sinkhorn(scores, n_assign, eps, n_iters)
    assert ours.dtype == torch.float32 and ours.shape == scores.shape
    np.testing.assert_allclose(ours.double().numpy(), targets, atol=1e-6, rtol=0)

    reference = multi_sinkhorn_reference(scores, n_assign, eps, n_iters)
    np.testing.assert_allclose(reference.numpy(), targets, atol=1e-10, rtol=0)

    plan = multi_sinkhorn_two_level(scores, n_assign, eps, n_iters)
    n_low = n_anchors - n_assign
    assert (plan.n_low, plan.n_high) == (n_low, n_assign)
    assert plan.high.dtype == torch.float64
    for level in range(n_anchors):  # every literal level equals its two-level representative
        representative = plan.low if level < n_low else plan.high
        np.testing.assert_allclose(representative.numpy(), levels[level], atol=1e-9, rtol=1e-7)
    if n_low == 0:
        assert plan.low is None


@pytest.mark.parametrize("low_scale,eps,n_iters", [(0.0, 0.1, 5), (0.5, 0.03, 7), (1.0, 0.07, 3), (0.25, 0.3, 1)])
def test_multi_sinkhorn_matches_literal_for_other_settings(low_scale, eps, n_iters):
    scores = cosine_scores(21, 12, seed=3, dtype=torch.float64)
    _, targets = literal_levels_numpy(scores.numpy(), 5, eps, n_iters, low_scale)
    ours = multi_sinkhorn(scores, 5, eps, n_iters, low_scale=low_scale)
    np.testing.assert_allclose(ours.double().numpy(), targets, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n_assign", [1, 3, 6, 8])
def test_two_level_constraints_after_final_iteration(n_assign):
    n_rows, n_anchors = 40, 8
    scores = cosine_scores(n_rows, n_anchors, seed=11, dtype=torch.float64)
    # Few iterations: the last step (per-level row sums) holds exactly whatever T is.
    plan = multi_sinkhorn_two_level(scores, n_assign, 0.07, 2)
    torch.testing.assert_close(plan.high.sum(-1), torch.ones(n_rows, dtype=torch.float64), atol=1e-12, rtol=0)
    # At convergence all three constraints hold, and therefore high ≤ 1/r.
    plan = multi_sinkhorn_two_level(scores, n_assign, 0.2, 400)
    levels = [plan.high] if plan.low is None else [plan.low, plan.high]
    for level in levels:
        torch.testing.assert_close(level.sum(-1), torch.ones(n_rows, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(level.sum(-2), torch.full((n_anchors,), n_rows / n_anchors,
                                                             dtype=torch.float64), atol=1e-8, rtol=0)
    level_sum = plan.n_high * plan.high + (0 if plan.low is None else plan.n_low * plan.low)
    torch.testing.assert_close(level_sum, torch.ones_like(level_sum), atol=1e-8, rtol=0)
    assert float(plan.high.max()) <= 1.0 / n_assign + 1e-8
    assert (plan.high >= 0).all() and (plan.low is None or (plan.low >= 0).all())


def test_two_level_constraints_float32_paper_shape():
    plan = multi_sinkhorn_two_level(cosine_scores(2, 256, 64, seed=5), 32, 0.07, 100)
    assert plan.high.dtype == torch.float32
    torch.testing.assert_close(plan.high.sum(-1), torch.ones(2, 256), atol=1e-5, rtol=0)
    torch.testing.assert_close(plan.low.sum(-2), torch.full((2, 64), 256 / 64), atol=1e-3, rtol=0)
    torch.testing.assert_close(32 * plan.high + 32 * plan.low, torch.ones(2, 256, 64), atol=1e-4, rtol=0)
    assert float(plan.high.max()) <= 1 / 32 + 1e-5


def adversarial_scores(n_rows, n_anchors, seed):
    """Cosine scores plus a dead anchor (−1 for everyone), a row at −1 and a row at +1 everywhere,
    and a near-duplicate cluster: the cases that underflow a naive exp-domain solver."""
    scores = cosine_scores(n_rows, n_anchors, seed=seed)
    scores[:, 0] = -1.0
    scores[1, :] = -1.0
    scores[2, :] = 1.0
    scores[3:8] = scores[3] + 1e-3 * torch.arange(5.0)[:, None]
    return scores.clamp(-1.0, 1.0)


@pytest.mark.parametrize("eps", [0.07, 0.02, 0.01, 0.005])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_multi_sinkhorn_finite_in_unit_interval_small_eps_and_half_precision(eps, dtype):
    scores = torch.stack([cosine_scores(64, 64, seed=1), adversarial_scores(64, 64, seed=2)]).to(dtype)
    for n_assign in (1, 32, 63):
        targets = multi_sinkhorn(scores, n_assign, eps, 20)
        assert targets.dtype == torch.float32 and targets.shape == scores.shape
        assert torch.isfinite(targets).all()
        assert targets.min() >= 0 and targets.max() <= 1
        # Each non-degenerate row is stretched to exactly [0, 1].
        torch.testing.assert_close(targets.amax(-1), torch.ones(2, 64), atol=1e-6, rtol=0)
        # Half-precision inputs are solved in float32: same as upcasting first.
        torch.testing.assert_close(targets, multi_sinkhorn(scores.float(), n_assign, eps, 20), atol=0, rtol=0)


@pytest.mark.parametrize("eps", [0.02, 0.005])
def test_float32_solver_close_to_float64_literal_at_small_eps(eps):
    scores = adversarial_scores(48, 16, seed=7).double()  # float64 literal form still fits exp(1/ε)
    _, targets = literal_levels_numpy(scores.numpy(), 8, eps, 20, 0.25)
    ours = multi_sinkhorn(scores.float(), 8, eps, 20)
    assert np.isfinite(targets).all()
    np.testing.assert_allclose(ours.double().numpy(), targets, atol=1e-4, rtol=0)


def test_multi_sinkhorn_batched_equals_looped():
    scores = cosine_scores(2, 3, 50, 16, seed=9)
    batched = multi_sinkhorn(scores, 4, 0.07, 20)
    assert batched.shape == (2, 3, 50, 16)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(batched[i, j], multi_sinkhorn(scores[i, j], 4, 0.07, 20), atol=1e-6, rtol=0)


def test_degenerate_rows_keep_their_assigned_mass():
    # Constant scores: every row of P is uniform r/K, which min-max cannot stretch.
    targets = multi_sinkhorn(torch.zeros(10, 8), 2)
    torch.testing.assert_close(targets, torch.full((10, 8), 2 / 8))
    # r = K: every anchor is assigned, P ≡ 1.
    torch.testing.assert_close(multi_sinkhorn(cosine_scores(10, 8), 8), torch.ones(10, 8))
    # Reference agrees on both.
    torch.testing.assert_close(multi_sinkhorn_reference(torch.zeros(10, 8), 2), torch.full((10, 8), 0.25))


def test_multi_sinkhorn_is_not_recorded_by_autograd():
    scores = cosine_scores(20, 8).requires_grad_()
    assert not multi_sinkhorn(scores, 4).requires_grad
    assert not sinkhorn(scores).requires_grad


@pytest.mark.parametrize("kwargs,name", [
    (dict(n_assign=0), "n_assign"), (dict(n_assign=9), "n_assign"), (dict(n_assign=2.0), "n_assign"),
    (dict(eps=0.0), "eps"), (dict(eps=-1.0), "eps"), (dict(eps=float("nan")), "eps"),
    (dict(n_iters=0), "n_iters"), (dict(n_iters=2.5), "n_iters"),
    (dict(low_scale=-0.1), "low_scale"), (dict(low_scale=float("inf")), "low_scale"),
])
def test_multi_sinkhorn_rejects_bad_arguments(kwargs, name):
    arguments = dict(scores=cosine_scores(6, 8), n_assign=4)
    arguments.update(kwargs)
    scores = arguments.pop("scores")
    n_assign = arguments.pop("n_assign")
    with pytest.raises(ValueError, match=name):
        multi_sinkhorn(scores, n_assign, **arguments)


@pytest.mark.parametrize("scores,pattern", [
    (torch.tensor([[0.1, float("nan")]]), "scores.*NaN"),
    (torch.tensor([[0.1, float("inf")]]), "scores.*NaN or infinite"),
    (torch.ones(4, 3, dtype=torch.int64), "scores.*floating"),
    (torch.ones(5), "scores.*shape"),
    (np.ones((4, 3)), "scores.*torch.Tensor"),
])
def test_solvers_reject_bad_scores(scores, pattern):
    with pytest.raises(ValueError, match=pattern):
        multi_sinkhorn(scores, 1)
    with pytest.raises(ValueError, match=pattern):
        sinkhorn(scores)


def test_classic_sinkhorn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(cosine_scores(6, 4), eps=0)
    with pytest.raises(ValueError, match="n_iters"):
        sinkhorn(cosine_scores(6, 4), n_iters=0)


@pytest.mark.parametrize("n_rows,n_anchors,eps", [(30, 8, 0.1), (64, 16, 0.05)])
def test_classic_sinkhorn_converges_to_pot(n_rows, n_anchors, eps):
    ot = pytest.importorskip("ot")
    scores = cosine_scores(n_rows, n_anchors, seed=n_rows, dtype=torch.float64)
    sample_mass = np.full(n_rows, 1.0 / n_rows)
    anchor_mass = np.full(n_anchors, 1.0 / n_anchors)
    plan = ot.sinkhorn(sample_mass, anchor_mass, -scores.numpy(), reg=eps, method="sinkhorn_log",
                       numItermax=20000, stopThr=1e-12)
    ours = sinkhorn(scores, eps=eps, n_iters=1000)
    # POT's plan has total mass 1 with sample marginals 1/N; ours has rows summing to 1.
    np.testing.assert_allclose(ours.double().numpy(), plan * n_rows, atol=1e-6, rtol=0)


def test_classic_sinkhorn_matches_swav_algorithm_and_marginals():
    scores = cosine_scores(2, 40, 10, seed=4, dtype=torch.float64)
    eps, n_iters = 0.05, 3
    ours = sinkhorn(scores, eps=eps, n_iters=n_iters)
    assert ours.dtype == torch.float32 and ours.shape == scores.shape
    for b in range(2):
        # SwAV Algorithm 1, literally (exp domain, K × B orientation).
        q = torch.exp(scores[b] / eps).T
        q /= q.sum()
        n_anchors, n_rows = q.shape
        for _ in range(n_iters):
            q /= q.sum(dim=1, keepdim=True)
            q /= n_anchors
            q /= q.sum(dim=0, keepdim=True)
            q /= n_rows
        q *= n_rows
        torch.testing.assert_close(ours[b].double(), q.T, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.sum(-1), torch.ones(2, 40), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_classic_sinkhorn_stable_small_eps(dtype):
    scores = adversarial_scores(200, 32, seed=3).to(dtype)
    ours = sinkhorn(scores, eps=0.005, n_iters=10)
    assert torch.isfinite(ours).all() and ours.min() >= 0
    torch.testing.assert_close(ours.sum(-1), torch.ones(200), atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    scores = cosine_scores(3, 500, 64, seed=8)
    torch.testing.assert_close(multi_sinkhorn(scores.cuda(), 32).cpu(), multi_sinkhorn(scores, 32),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(sinkhorn(scores.cuda().half()).cpu(), sinkhorn(scores.half()), atol=1e-5, rtol=0)


def test_numpy_scalars_are_accepted_for_integer_and_real_arguments():
    scores = cosine_scores(12, 8, seed=2)
    expected = multi_sinkhorn(scores, 4, 0.07, 5, low_scale=0.25)
    got = multi_sinkhorn(scores, np.int64(4), np.float32(0.07), np.int32(5), low_scale=np.float64(0.25))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(sinkhorn(scores, np.float64(0.05), np.int64(3)), sinkhorn(scores, 0.05, 3))


def test_cpu_chunking_over_problems_does_not_change_results(monkeypatch):
    import multisk.sinkhorn.multi_assignment as multi_assignment

    scores = cosine_scores(5, 40, 16, seed=12)
    monkeypatch.setattr(multi_assignment, "_CPU_CHUNK_BYTES", 1 << 40)  # one chunk
    whole_targets = multi_sinkhorn(scores, 4)
    whole_plan = multi_sinkhorn_two_level(scores, 4)
    monkeypatch.setattr(multi_assignment, "_CPU_CHUNK_BYTES", 1)  # one problem per chunk
    assert len(multi_assignment._problem_chunks(scores, None)) == 5
    torch.testing.assert_close(multi_sinkhorn(scores, 4), whole_targets, atol=1e-6, rtol=0)
    chunked_plan = multi_sinkhorn_two_level(scores, 4)
    torch.testing.assert_close(chunked_plan.high, whole_plan.high, atol=1e-7, rtol=0)
    torch.testing.assert_close(chunked_plan.low, whole_plan.low, atol=1e-7, rtol=0)


def test_check_finite_false_propagates_nan_without_raising():
    from multisk.sinkhorn import multi_sinkhorn, sinkhorn

    scores = torch.rand(2, 6, 4)
    scores[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="scores: contains NaN"):
        multi_sinkhorn(scores, 2)
    targets = multi_sinkhorn(scores, 2, check_finite=False)
    assert torch.isfinite(targets[0]).all() and torch.isnan(targets[1]).any()
    assert torch.isnan(sinkhorn(scores, check_finite=False)[1]).any()


@pytest.mark.parametrize("eps, n_assign", [(0.02, 31), (0.005, 16), (0.07, 16)])
def test_cpu_fast_path_and_its_log_domain_hand_over_match_the_literal_formulation(eps, n_assign):
    # small ε drives the exp-domain CPU path into handing its state to the log-domain loop (at the
    # start, or part-way through the iterations); every route must give the literal result
    from multisk.sinkhorn import multi_sinkhorn, multi_sinkhorn_reference

    gen = torch.Generator().manual_seed(3)
    scores = torch.rand(2, 60, 32, generator=gen, dtype=torch.float64) * 2 - 1
    expected = multi_sinkhorn_reference(scores, n_assign, eps=eps, n_iters=20)
    got64 = multi_sinkhorn(scores, n_assign, eps=eps, n_iters=20)
    torch.testing.assert_close(got64, expected.float(), atol=1e-6, rtol=0)
    got32 = multi_sinkhorn(scores.float(), n_assign, eps=eps, n_iters=20)
    torch.testing.assert_close(got32, expected.float(), atol=1e-4, rtol=0)


def test_solvers_inside_cpu_bf16_autocast_equal_their_float32_results():
    # Issue 13: the trainer's autocast used to reach the solver's mv/bmm, moving the targets by ~2e-2;
    # the solvers run in IEEE float32 whatever the caller's autocast (both CPU paths: fast and log domain)
    scores = cosine_scores(12, 2000, 64, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = [multi_sinkhorn(scores, 32), multi_sinkhorn(scores, 32, eps=0.005),
                  multi_sinkhorn_two_level(scores[:2], 16).high, sinkhorn(scores[:2])]
    outside = [multi_sinkhorn(scores, 32), multi_sinkhorn(scores, 32, eps=0.005),
               multi_sinkhorn_two_level(scores[:2], 16).high, sinkhorn(scores[:2])]
    for got, want in zip(inside, outside):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_exact_float32_turns_autocast_and_tf32_off_inside_and_restores_them(monkeypatch):
    from multisk import precision
    from multisk.sinkhorn import multi_assignment

    before = precision.tf32_flags()
    precision.set_model_tf32(True)  # what a trainer allows for the model in fp32 runs
    try:
        allowed = precision.tf32_flags()
        assert "tf32" in allowed or True in allowed
        seen = []
        solve = multi_assignment._solve_two_level

        def spy(*args, **kwargs):
            seen.append((precision.tf32_flags(), torch.is_autocast_enabled("cpu")))
            return solve(*args, **kwargs)

        monkeypatch.setattr(multi_assignment, "_solve_two_level", spy)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            multi_sinkhorn(cosine_scores(1, 20, 8), 4)
            assert torch.is_autocast_enabled("cpu")  # restored after the call
        exact = [flag in ("ieee", False) for flag in seen[0][0]]
        assert all(exact) and seen[0][1] is False
        assert precision.tf32_flags() == allowed  # the model's setting survives the solver
    finally:
        for (owner, name), value in zip(precision._precision_backends(), before):
            setattr(owner, name, value)


def test_configure_model_math_allows_tf32_only_for_fp32_models_and_sets_cudnn_benchmark():
    from multisk import precision

    before, benchmark = precision.tf32_flags(), torch.backends.cudnn.benchmark
    try:
        precision.configure_model_math("fp32")
        assert torch.backends.cudnn.benchmark is True
        cuda_matmul = precision.tf32_flags()[0]
        assert cuda_matmul in ("tf32", True)
        with precision.exact_float32(torch.device("cpu")):
            assert precision.tf32_flags()[0] in ("ieee", False)  # anchors and solver: never TF32
        precision.configure_model_math("bf16", static_shapes=False)
        assert torch.backends.cudnn.benchmark is False and precision.tf32_flags()[0] in ("ieee", False)
        with pytest.raises(ValueError, match="precision"):
            precision.configure_model_math("tf32")
    finally:
        for (owner, name), value in zip(precision._precision_backends(), before):
            setattr(owner, name, value)
        torch.backends.cudnn.benchmark = benchmark
