"""Trainer behaviours beyond the default run: EMA (and `multisk eval --ema`), on_nonfinite=skip,
eval_every, bf16 / fp16 (GradScaler) on the CPU, checkpoints from elsewhere (written on a GPU, without
`config`), resuming under another global batch or world size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from multisk.checkpoint import CheckpointError, load_checkpoint
from multisk.config import ConfigError, load_config
from multisk.train.trainer import train

from synthetic_store import tiny_overrides
from repo_paths import REPO

CONFIG = REPO / "configs" / "demo.yaml"


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _run(store, out, **overrides):
    cfg = load_config(CONFIG, tiny_overrides(store, out, **overrides))
    return train(cfg, progress=False, make_plots=False)


def _save_as_if_on_a_gpu(state, path, monkeypatch):
    """torch.save with every storage tagged cuda:0 (what a GPU-written checkpoint looks like)."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, path)


def test_ema_weights_follow_the_recurrence_over_the_saved_steps_and_eval_ema_loads_them(store, tmp_path):
    from multisk.evaluate.loading import load_model

    out = tmp_path / "ema"
    decay = 0.5
    _run(store, out, **{"train.ema_decay": decay, "train.steps": 3, "train.checkpoint_every": 1,
                        "data.eval_splits": "[]"})
    weights = [load_checkpoint(out / "checkpoints" / f"step_{k}.pt")["model"] for k in (1, 2, 3)]
    expected = dict(weights[0])  # the first update copies the weights; then e <- d e + (1 - d) w
    for current in weights[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * v if v.is_floating_point() else v
                    for k, v in current.items()}
    ema = load_checkpoint(out / "checkpoints" / "latest.pt")["ema"]
    assert int(ema["n_averaged"]) == 3
    for key, value in expected.items():
        torch.testing.assert_close(ema[f"module.{key}"], value, rtol=1e-5, atol=1e-6, msg=key)
    model, _ = load_model(out / "checkpoints" / "latest.pt", use_ema=True)  # what `multisk eval --ema` runs
    for key, value in model.state_dict().items():
        assert torch.equal(value, ema[f"module.{key}"]), key
    assert not torch.equal(expected["projections.text.linear.weight"], weights[-1]["projections.text.linear.weight"])


def test_skip_mode_drops_nonfinite_batches_and_never_applies_them(store, tmp_path):
    # lr 1e30: the first step throws the weights so far that every later loss overflows
    out = tmp_path / "skip"
    results = _run(store, out, **{"train.lr": 1e30, "train.on_nonfinite": "skip", "data.eval_splits": "[]",
                                  "train.epochs": 1})
    assert results["skipped_batches"] > 0
    assert results["steps"] + results["skipped_batches"] == 6  # the epoch's 6 global batches were all consumed
    state = load_checkpoint(out / "checkpoints" / "latest.pt")
    assert state["skipped_batches"] == results["skipped_batches"]
    # every applied step was finite (BatchNorm statistics are forward state, not an applied update)
    parameters = {k: v for k, v in state["model"].items() if "running_" not in k and v.is_floating_point()}
    assert all(torch.isfinite(v).all() for v in parameters.values())


def test_eval_every_logs_evaluations_at_its_steps_and_the_last_one_is_results_json(store, tmp_path):
    out = tmp_path / "evals"
    results = _run(store, out, **{"train.steps": 4, "train.eval_every": 2})
    evals = [r for r in _records(out) if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in evals] == [2, 4, 4]  # every 2 steps, then the final evaluation
    final = results["evaluation"]["test"]["retrieval"]["t2v"]
    assert evals[-1]["eval/test/t2v/R1"] == final["R1"] == evals[1]["eval/test/t2v/R1"]


@pytest.fixture(scope="module")
def fp32_losses(logged_losses, store, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32")
    _run(store, out, **{"train.steps": 2, "data.eval_splits": "[]"})
    return logged_losses(out)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_runs_on_cpu_close_to_fp32(logged_losses, store, tmp_path, precision, fp32_losses):
    reference = fp32_losses
    _run(store, tmp_path / precision, **{"train.steps": 2, "data.eval_splits": "[]", "train.precision": precision})
    got = logged_losses(tmp_path / precision)
    assert sorted(got) == [1, 2] and all(torch.isfinite(torch.tensor(list(got.values()))))
    # same weights and batch at step 1: autocast changes the loss only by rounding (and does change it)
    assert got[1] == pytest.approx(reference[1], rel=3e-2) and got[1] != reference[1]
    scaler = load_checkpoint(tmp_path / precision / "checkpoints" / "latest.pt")["scaler"]
    if precision == "fp16":
        # GradScaler active: it starts at 2**16 and halves on each step whose gradients overflow fp16
        assert scaler["scale"] in (65536.0, 32768.0, 16384.0)
    else:
        assert scaler == {}  # bf16 needs no loss scaling


def test_checkpoints_from_elsewhere_gpu_written_or_without_config(logged_losses, store, tmp_path, monkeypatch, capsys):
    from multisk.cli import main

    first = tmp_path / "first"
    _run(store, first, **{"train.steps": 2, "data.eval_splits": "[]"})
    state = load_checkpoint(first / "checkpoints" / "latest.pt")
    # a bare state dict written on a GPU: enough to fine-tune from (train.init_checkpoint) ...
    bare = tmp_path / "bare_gpu.pt"
    _save_as_if_on_a_gpu({"model": state["model"]}, bare, monkeypatch)
    tuned = tmp_path / "tuned"
    _run(store, tuned, **{"train.steps": 1, "train.lr": 0.0, "train.init_checkpoint": str(bare),
                          "data.eval_splits": "[]"})
    after = load_checkpoint(tuned / "checkpoints" / "latest.pt")["model"]
    assert torch.equal(after["projections.text.linear.weight"], state["model"]["projections.text.linear.weight"])
    # ... but not to evaluate: the model cannot be rebuilt without the run's configuration
    assert main(["eval", "--checkpoint", str(bare), "--data", str(store), "--split", "test"]) != 0
    assert "bare_gpu.pt: checkpoint has no field 'config'" in capsys.readouterr().err
    # a full checkpoint written on a GPU (RNG states included) resumes on this CPU-only machine
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    _save_as_if_on_a_gpu(state, resumed / "checkpoints" / "latest.pt", monkeypatch)
    cfg = load_config(CONFIG, tiny_overrides(store, resumed, **{"train.steps": 3, "data.eval_splits": "[]"}))
    assert train(cfg, resume="latest", progress=False, make_plots=False)["steps"] == 3
    whole = tmp_path / "whole"
    _run(store, whole, **{"train.steps": 3, "data.eval_splits": "[]"})
    assert logged_losses(resumed)[3] == pytest.approx(logged_losses(whole)[3], rel=1e-5)


def test_resuming_with_another_global_batch_is_a_clear_error(store, tmp_path):
    out = tmp_path / "run"
    _run(store, out, **{"train.steps": 1, "data.eval_splits": "[]"})
    cfg = load_config(CONFIG, tiny_overrides(store, out, **{"train.batch_size": 4, "data.eval_splits": "[]"}))
    with pytest.raises(ConfigError, match=r"train.batch_size: .*latest.pt was trained with a global batch of 8"):
        train(cfg, resume="latest", progress=False)
    # a multi-process checkpoint of the older per-process batch semantics cannot name a global position
    legacy = load_checkpoint(out / "checkpoints" / "latest.pt")
    del legacy["global_batch_size"], legacy["world_size"]
    legacy["rng"] = legacy["rng"] * 2
    torch.save(legacy, tmp_path / "legacy.pt")
    cfg = load_config(CONFIG, tiny_overrides(store, out, **{"data.eval_splits": "[]"}))
    with pytest.raises(ConfigError, match=r"legacy.pt: written by 2 processes of an older multisk"):
        train(cfg, resume=str(tmp_path / "legacy.pt"), progress=False)


def _torchrun() -> str | None:
    local = Path(sys.executable).parent / "torchrun"
    return shutil.which("torchrun") or (str(local) if local.exists() else None)


@pytest.mark.skipif(_torchrun() is None, reason="torchrun not installed")
def test_one_process_checkpoint_resumes_on_two_processes_with_sspc_off(logged_losses, store, tmp_path):
    """SSPC off under DDP (the anchors get no gradient: DDP used to die at the second step), and a
    checkpoint of 1 process resumed by 2: the run continues exactly in global-batch terms."""
    # text + video only: no BatchNorm statistics, so ranks' shares give the single-process numbers
    common = {"model.modalities": "[text,video]", "loss.contrastive.pair_weights.text-audio": 0.0,
              "loss.contrastive.pair_weights.video-audio": 0.0, "loss.sspc.enabled": "false",
              "data.eval_splits": "[]", "train.epochs": 1}
    whole = tmp_path / "whole"
    _run(store, whole, **common, **{"train.steps": 5})
    run = tmp_path / "run"
    _run(store, run, **common, **{"train.steps": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [_torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "multisk.cli", "train", "--no-progress",
         "--config", str(CONFIG), *tiny_overrides(store, run, **common, **{"train.steps": 5}), "--resume", "latest"],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "written by 1 processes, resuming on 2" in result.stderr + result.stdout
    expected, got = logged_losses(whole), logged_losses(run)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=2e-4, abs=1e-5), f"step {step}"
    saved = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert (saved["world_size"], saved["global_batch_size"], len(saved["rng"])) == (2, 8, 2)


def test_grad_clip_reaches_the_optimizer_step(store, tmp_path):
    """Adam is nearly invariant to the gradient's scale, except through eps (1e-8): gradients clipped to a
    norm of 1e-12 barely move the weights, unclipped ones move them by lr in the first step (|Adam step| = lr)."""
    one_step = {"train.steps": 1, "data.eval_splits": "[]", "train.lr": 0.01}
    moves = {}
    start = None
    for name, clip, lr in (("start", 0.0, 0.0), ("clipped", 1e-12, 0.01), ("free", 0.0, 0.01)):
        out = tmp_path / name
        _run(store, out, **{**one_step, "train.grad_clip": clip, "train.lr": lr})
        weights = load_checkpoint(out / "checkpoints" / "latest.pt")["model"]["projections.text.linear.weight"]
        if start is None:
            start = weights
        moves[name] = float((weights - start).abs().max())
    assert moves["free"] == pytest.approx(0.01, rel=1e-3)
    assert moves["clipped"] < 1e-2 * moves["free"]  # (measured: 2.2e-6 of it)
