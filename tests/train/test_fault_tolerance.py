"""Training that survives a lost process under torchrun, and a hung rank that ends the run with an error
naming it (gloo, 2 CPU processes, the tiny synthetic store)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from multisk.config import ConfigError, load_config
from multisk.train.trainer import resolve_resume

from distributed_runs import CONFIG, checkpoint_differences, logged_steps, rank_pids, torchrun_path, torchrun_train, wait_for
from synthetic_store import tiny_overrides, write_synthetic_store

needs_torchrun = pytest.mark.skipif(torchrun_path() is None, reason="torchrun not installed")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# 2 epochs of 6 global batches of 8; a checkpoint every 2 steps; EMA and SSPC queues on
RUN = {"train.epochs": 2, "train.checkpoint_every": 2, "train.ema_decay": 0.9, "data.eval_splits": "[]",
       "train.collective_timeout_s": 60}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(tmp_path_factory.mktemp("store"))


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_auto_follows_torchelastic_restart_count(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert resolve_resume("auto") is None
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert resolve_resume("auto") is None
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert resolve_resume("auto") == "latest"
    assert resolve_resume("ckpt.pt") == "ckpt.pt" and resolve_resume(None) is None
    with pytest.raises(ConfigError, match="train.collective_timeout_s"):
        load_config(CONFIG, ["train.collective_timeout_s=0"])
    with pytest.raises(ConfigError, match="train.keep_step_checkpoints"):
        load_config(CONFIG, ["train.keep_step_checkpoints=-1"])


@needs_torchrun
def test_a_killed_rank_is_restarted_and_the_run_ends_with_the_uninterrupted_weights(store, tmp_path):
    full = tmp_path / "full"
    done = subprocess.run(torchrun_train(2, tiny_overrides(store, full, **RUN)), env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = tmp_path / "killed"
    kill_after = random.Random().randint(3, 10)  # a random step, mid-epoch or not, between checkpoints or at one
    # this run writes its checkpoints in the background: the result must still be the synchronous run's
    # and keeps only its 2 newest step checkpoints
    faulty = {**RUN, "train.async_checkpoint": "true", "train.keep_step_checkpoints": 2}
    proc = subprocess.Popen(torchrun_train(2, tiny_overrides(store, killed, **faulty), max_restarts=1), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: logged_steps(killed) >= kill_after, 240, f"step {kill_after}", proc)
        os.kill(rank_pids(proc.pid)[1], signal.SIGKILL)
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, f"killed after step {kill_after}:\n{output[-3000:]}"
    # the restarted group resumed from a checkpoint (a fresh start would log one header, at step 0)
    headers = [r["step"] for r in _records(killed) if "world_size" in r]
    assert len(headers) == 2 and headers[0] == 0 and 2 <= headers[1] <= kill_after + 2, (kill_after, headers)
    expected = torch.load(full / "checkpoints" / "latest.pt", weights_only=False)
    got = torch.load(killed / "checkpoints" / "latest.pt", weights_only=False)
    assert got["global_step"] == expected["global_step"] == 12
    assert sorted(p.name for p in (killed / "checkpoints").glob("step_*.pt")) == ["step_10.pt", "step_12.pt"]
    assert checkpoint_differences(expected, got) == [], f"killed after step {kill_after}"
    losses = {r["step"]: r["loss"] for r in _records(killed) if "loss" in r}
    assert losses == {r["step"]: r["loss"] for r in _records(full) if "loss" in r}


@needs_torchrun
def test_a_hung_rank_ends_the_run_with_an_error_naming_it_and_the_timeout(store, tmp_path):
    run = tmp_path / "hang"
    overrides = tiny_overrides(store, run, **{**RUN, "train.collective_timeout_s": 3, "train.checkpoint_every": 0})
    proc = subprocess.Popen(torchrun_train(2, overrides), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: logged_steps(run) >= 2, 240, "step 2", proc)
        pids = rank_pids(proc.pid)
        os.kill(pids[1], signal.SIGSTOP)  # rank 1 hangs: alive, but never reaches the next collective
        stopped = time.time()
        wait_for(lambda: not Path(f"/proc/{pids[0]}").exists(), 120, "rank 0 to end")
        waited = time.time() - stopped
        os.kill(pids[1], signal.SIGKILL)  # what torchrun would do after its SIGTERM grace period
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "CollectiveTimeoutError: rank 0: training step" in output
    assert "train.collective_timeout_s=3 s" in output
    assert "Ranks 1 failed to pass monitoredBarrier" in output, output[-3000:]
    assert waited < 3 + 30 + 30  # the timeout, the check barrier, and slack for a loaded machine


def test_only_collective_failures_are_diagnosed_as_such():
    from multisk.train.process_group import is_collective_failure

    assert is_collective_failure(RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] "
                                              "Connection closed by peer [127.0.0.1]:6541"))
    assert is_collective_failure(RuntimeError("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] "
                                              "Timed out waiting 3000ms for recv operation to complete"))
    assert not is_collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"))
