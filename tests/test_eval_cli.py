"""`multisk eval`, `multisk embed` and `multisk search` on a checkpoint trained on the synthetic store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from multisk.cli import main
from multisk.config import load_config
from multisk.train.trainer import train

from synthetic_store import CLASSES, tiny_overrides, write_synthetic_store

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("evalcli")
    store = write_synthetic_store(base / "store")
    cfg = load_config(CONFIG, tiny_overrides(store, base / "run", **{"train.epochs": 6}))
    train(cfg, progress=False, make_plots=False)
    return store, base / "run" / "checkpoints" / "latest.pt"


def test_eval_writes_json_markdown_and_classification(trained, tmp_path, capsys):
    store, ckpt = trained
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(store), "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    test = results["test"]
    assert set(results) == {"test"}  # every split but the training split
    assert {"t2v", "v2t", "t2a", "a2t", "t2v+a"} <= set(test["retrieval"])
    assert test["retrieval"]["t2v"]["n_queries"] == sum(1 for i in range(24) if i % 4 != 3)
    cls = test["classification"]
    assert cls["classes"] == len(CLASSES) and 0 <= cls["top1"] <= 100
    assert "t2v" in (tmp_path / "results.md").read_text()
    assert "t2v" in capsys.readouterr().out


def test_embed_then_search_returns_ranked_items(trained, tmp_path, capsys):
    store, ckpt = trained
    index = tmp_path / "index.npz"
    assert main(["embed", "--checkpoint", str(ckpt), "--data", str(store), "--split", "test", "--out", str(index)]) == 0
    capsys.readouterr()
    assert main(["search", "a cat", "--index", str(index), "--top", "5"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 5
    scores = [float(line.split()[1]) for line in lines]
    assert scores == sorted(scores, reverse=True)


def test_search_errors_are_one_clear_line(trained, tmp_path, capsys):
    store, ckpt = trained
    assert main(["search", "cat", "--index", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz: index not found" in capsys.readouterr().err
    index = tmp_path / "index.npz"
    main(["embed", "--checkpoint", str(ckpt), "--data", str(store), "--split", "test", "--out", str(index)])
    assert main(["search", "cat", "--index", str(index), "--target", "smell"]) == 2
    assert "--target 'smell'" in capsys.readouterr().err


def test_eval_of_a_corrupt_checkpoint_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", "--checkpoint", str(bad), "--data", str(tmp_path)]) == 2
    assert "bad.pt: cannot read checkpoint" in capsys.readouterr().err
