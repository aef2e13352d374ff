"""The training application: end to end on a synthetic store, exact resume after a kill, non-finite
stops, and a 2-process torchrun run that matches one process on the global batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from multisk.config import ConfigError, load_config
from multisk.train.trainer import NonFiniteLossError, train

from synthetic_store import tiny_overrides
from repo_paths import REPO

CONFIG = REPO / "configs" / "demo.yaml"


def test_train_end_to_end_writes_logs_checkpoints_results_and_plots(logged_losses, store, tmp_path, monkeypatch, capsys):
    from multisk.cli import main
    from multisk.train import step as step_module
    from multisk.train.datasets_for_config import build_train_dataset, collate_fn_for

    fed = []
    real_call = step_module.TrainStep.__call__

    def recording_call(self, batch):
        fed.append(batch)
        return real_call(self, batch)

    monkeypatch.setattr(step_module.TrainStep, "__call__", recording_call)
    cfg = load_config(CONFIG, tiny_overrides(store, tmp_path / "run"))
    results = train(cfg, progress=False)
    run = tmp_path / "run"
    # the first batch is the dataset's items at the documented order for the seed: randperm(n, seed*100003 + 0)
    dataset = build_train_dataset(cfg)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.train.seed * 100_003)).tolist()
    expected = collate_fn_for(dataset)([dataset[i] for i in order[:cfg.train.batch_size]])
    assert fed[0]["id"] == expected["id"] and len(fed) == 12
    for key, value in expected.items():
        if torch.is_tensor(value):
            assert torch.equal(fed[0][key], value), key
    # results.json is what `multisk eval` computes on the final checkpoint
    assert main(["eval", "--checkpoint", str(run / "checkpoints" / "latest.pt"), "--data", str(store),
                 "--split", "test", "--out", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())["test"]
    trained = json.loads((run / "results.json").read_text())["evaluation"]["test"]
    assert evaluated["retrieval"] == trained["retrieval"] and evaluated["inputs"] == trained["inputs"]
    assert results["steps"] == 2 * (48 // 8)
    losses = logged_losses(run)
    assert sorted(losses) == list(range(1, 13)) and all(torch.isfinite(torch.tensor(list(losses.values()))))
    assert (run / "checkpoints" / "latest.pt").is_file() and (run / "checkpoints" / "epoch_2.pt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((run / "results.json").read_text())
    assert "t2v" in saved["evaluation"]["test"]["retrieval"]
    names = {p.name for p in (run / "plots").glob("*.png")}
    assert {"training_curves.png", "recall_test.png", "anchor_usage_test.png"} <= names


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "multisk.cli", *args]


def test_resume_latest_after_kill_reproduces_the_uninterrupted_losses(logged_losses, store, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--no-progress", "--config", str(CONFIG)]
    full = tmp_path / "full"
    subprocess.run(_cli("train", *common, *tiny_overrides(store, full, **{"train.epochs": 3})),
                   check=True, env=env, capture_output=True)
    # same run, checkpointing every 4 steps (epochs have 6 batches: step 4 is mid-epoch), killed
    killed = tmp_path / "killed"
    overrides = tiny_overrides(store, killed, **{"train.epochs": 3, "train.checkpoint_every": 4})
    proc = subprocess.Popen(_cli("train", *common, *overrides), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step_4.pt").exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "the run was not interrupted"
    resumed = subprocess.run(_cli("train", *common, *overrides, "--resume", "latest"), env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = logged_losses(full), logged_losses(killed)
    assert sorted(got) == sorted(expected) == list(range(1, 19))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), f"step {step}"


def test_nonfinite_loss_stops_with_a_diagnostic(store, tmp_path, monkeypatch):
    cfg = load_config(CONFIG, tiny_overrides(store, tmp_path / "nan", **{"train.lr": 1e30, "train.epochs": 3}))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step \d+ .*terms .*loss.*batch ids"):
        train(cfg, progress=False)


def test_resume_from_a_missing_checkpoint_is_a_clear_error(store, tmp_path):
    cfg = load_config(CONFIG, tiny_overrides(store, tmp_path / "x"))
    with pytest.raises(FileNotFoundError, match="nope.pt: checkpoint not found"):
        train(cfg, resume=str(tmp_path / "nope.pt"), progress=False)


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_distributed_torchrun_two_processes_match_one_process_on_the_global_batch(logged_losses, store, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # DAVEnet's BatchNorm normalises with per-rank statistics unless train.sync_batchnorm (CUDA only),
    # as in the reference's DataParallel; text + video have no batch statistics, so these runs must agree
    steps = {"train.steps": 4, "train.epochs": 1, "model.modalities": "[text,video]",
             "loss.contrastive.pair_weights.text-audio": 0.0, "loss.contrastive.pair_weights.video-audio": 0.0}
    # train.batch_size is the GLOBAL batch under torchrun: 8 = 2 processes x 4, as the single process's 8
    ddp = tmp_path / "ddp"
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "multisk.cli", "train", "--no-progress",
         "--config", str(CONFIG), *tiny_overrides(store, ddp, **steps, **{"train.batch_size": 8})],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single = tmp_path / "single"
    cfg = load_config(CONFIG, tiny_overrides(store, single, **steps, **{"train.batch_size": 8}))
    train(cfg, progress=False, make_plots=False)
    expected, got = logged_losses(single), logged_losses(ddp)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=2e-4, abs=1e-5), f"step {step}"
    assert (ddp / "checkpoints" / "latest.pt").is_file()
    first = json.loads((ddp / "metrics.jsonl").read_text().splitlines()[0])
    assert (first["world_size"], first["global_batch_size"], first["per_rank_batch_size"]) == (2, 8, 4)
    assert "global batch 8 = 2 x 4 per process" in result.stderr + result.stdout


def test_init_checkpoint_starts_fine_tuning_from_the_given_weights(store, tmp_path):
    pre = tmp_path / "pre"
    train(load_config(CONFIG, tiny_overrides(store, pre, **{"train.epochs": 1})), progress=False, make_plots=False)
    ckpt = pre / "checkpoints" / "latest.pt"
    tuned = tmp_path / "tuned"
    # lr 0: Adam leaves the weights where they started, so the result must be the pre-trained model
    cfg = load_config(CONFIG, tiny_overrides(store, tuned, **{"train.epochs": 1, "train.lr": 0.0,
                                                              "train.init_checkpoint": str(ckpt)}))
    train(cfg, progress=False, make_plots=False)
    before = torch.load(ckpt, weights_only=False)["model"]
    after = torch.load(tuned / "checkpoints" / "latest.pt", weights_only=False)["model"]
    for key, value in before.items():
        if value.is_floating_point() and "running" not in key:  # BatchNorm statistics keep updating
            assert torch.equal(value, after[key]), key
    bad = load_config(CONFIG, tiny_overrides(store, tmp_path / "bad", **{"train.init_checkpoint": str(ckpt),
                                                                         "model.num_anchors": 4}))
    with pytest.raises(ConfigError, match="train.init_checkpoint"):
        train(bad, progress=False)


def test_train_on_the_howto100m_layout(logged_losses, tmp_path):
    from test_data_formats import write_howto_fixture, write_word2vec_binary

    fx = write_howto_fixture(tmp_path / "howto")
    vectors = tmp_path / "w2v.bin"
    kv = write_word2vec_binary(vectors)
    overrides = [
        "data.train_format=howto100m", f"data.howto_csv={fx['csv']}", f"data.howto_features_path={fx['features']}",
        f"data.howto_audio_path={fx['audio']}", f"data.howto_caption_path={fx['captions']}",
        f"data.word_vectors={vectors}", "data.clips_per_video=4", "data.eval_splits=[]", "data.modality_map.text=text",
        "data.max_video_tokens=12", "data.max_audio_frames=768",
        "model.prior.enabled=false", "model.prior.concept_classes=0", "data.val_split=null",  # no val split here
        f"model.text_dim={kv.vector_size}", "model.video_dim=4096", "model.embed_dim=32", "model.num_heads=4",
        "model.projection_dim=24", "model.num_anchors=8", "model.audio_width_divisor=32",
        "loss.sspc.queue_size=8", "loss.sspc.warmup=none", "train.batch_size=2", "train.epochs=3",
        "train.log_every=1", f"train.output_dir={tmp_path / 'run'}",
    ]
    results = train(load_config(CONFIG, overrides), progress=False)
    assert results["steps"] == 3  # 2 videos x 4 clips = one 8-clip batch per epoch
    losses = logged_losses(tmp_path / "run")
    assert sorted(losses) == [1, 2, 3] and all(torch.isfinite(torch.tensor(list(losses.values()))))
