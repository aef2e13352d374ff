"""Checkpoint I/O (multisk.checkpoint): files cannot run code, load onto the CPU whatever device wrote
them, name the file in every error, and round-trip every RNG."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from multisk.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _minimal_state(**extra):
    return {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "config": {"train": {"seed": 0}}, **extra}


def test_a_checkpoint_carrying_a_code_running_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save(_minimal_state(extra=_RunsCode(marker)), path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused to load.*system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_checkpoint_saved_on_a_gpu_loads_onto_the_cpu(tmp_path, monkeypatch):
    # Stand-in for a GPU-written file: every storage is tagged "cuda:0", as torch.save tags CUDA tensors.
    # Honouring the tag on this CUDA-less machine fails; load_checkpoint must map everything to the CPU.
    path = tmp_path / "gpu.pt"
    rng = capture_rng_state()
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(_minimal_state(rng=[rng]), path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    state = load_checkpoint(path)
    assert state["model"]["w"].device.type == "cpu"
    assert torch.equal(state["model"]["w"], torch.arange(6.0).reshape(2, 3))
    assert state["rng"][0]["torch"].device.type == "cpu"
    restore_rng_state(state["rng"][0])  # the generators accept what was loaded


def test_a_checkpoint_without_config_or_not_a_dict_is_a_clear_error(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, bare)
    with pytest.raises(CheckpointError, match=r"bare\.pt: checkpoint has no field 'config'.*configuration"):
        load_checkpoint(bare)
    assert "w" in load_checkpoint(bare, require=("model",))["model"]  # enough for train.init_checkpoint
    weights = tmp_path / "weights.pt"
    torch.save(torch.zeros(3), weights)
    with pytest.raises(CheckpointError, match=r"weights\.pt: not a multisk checkpoint"):
        load_checkpoint(weights)
    truncated = tmp_path / "cut.pt"
    torch.save(_minimal_state(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"cut\.pt: cannot read checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nowhere.pt")


def _draws():
    # standard_normal first (it may return NumPy's cached Gaussian), then a draw from the key stream
    return (random.random(), float(np.random.standard_normal()), float(np.random.random()), float(torch.rand(())))


def test_rng_states_round_trip_through_a_saved_file(tmp_path):
    np.random.standard_normal()  # leave a cached Gaussian in NumPy's state (has_gauss = 1)
    path = tmp_path / "ckpt" / "step_1.pt"
    save_checkpoint(_minimal_state(rng=[capture_rng_state()]), path)
    expected = _draws()
    restore_rng_state(load_checkpoint(path)["rng"][0])
    assert _draws() == expected
    assert (path.parent / "latest.pt").is_file()


def test_older_checkpoints_with_a_numpy_rng_state_still_load(tmp_path):
    # before the weights_only switch, the NumPy state was pickled as NumPy's own tuple with an ndarray
    path = tmp_path / "old.pt"
    torch.save(_minimal_state(rng={"python": random.getstate(), "numpy": np.random.get_state(),
                                   "torch": torch.get_rng_state()}), path)
    expected = _draws()
    restore_rng_state(load_checkpoint(path)["rng"])
    assert _draws() == expected


def test_background_writer_saves_a_snapshot_that_later_changes_do_not_reach(tmp_path):
    from multisk.checkpoint import CheckpointWriter, load_checkpoint

    weights = torch.arange(6, dtype=torch.float32)
    writer = CheckpointWriter(background=True)
    writer.save({"model": {"w": weights}, "config": {}, "step": 1}, tmp_path / "step_1.pt")
    weights.add_(100)  # training goes on while the file is written
    writer.wait()
    saved = load_checkpoint(tmp_path / "step_1.pt")
    assert torch.equal(saved["model"]["w"], torch.arange(6, dtype=torch.float32)) and saved["step"] == 1
    assert torch.equal(load_checkpoint(tmp_path / "latest.pt")["model"]["w"], saved["model"]["w"])
    assert not list(tmp_path.glob("*.tmp"))
    writer.save({"model": {"w": weights}, "config": {}}, tmp_path / "missing" / "\0bad.pt")
    with pytest.raises(CheckpointError, match="writing a checkpoint in the background failed"):
        writer.wait()


def test_prune_keeps_the_newest_step_checkpoints_by_number_and_never_epochs_or_latest(tmp_path):
    from multisk.checkpoint import prune_step_checkpoints

    for name in ("step_2.pt", "step_10.pt", "step_9.pt", "epoch_1.pt", "step_x.pt"):
        (tmp_path / name).write_bytes(b"x")
    os.link(tmp_path / "step_2.pt", tmp_path / "latest.pt")
    removed = prune_step_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["step_2.pt"]  # by number: 10 and 9 are the newest, not "9" > "10"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pt", "latest.pt", "step_10.pt", "step_9.pt", "step_x.pt"]
    assert (tmp_path / "latest.pt").read_bytes() == b"x"
