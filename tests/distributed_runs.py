"""Helpers for tests and benchmarks that run ``multisk train`` under ``torchrun`` as real processes: the
command line, finding a rank's process (to kill or stop it), and comparing two checkpoints exactly.

Benchmarks import this module with ``tests/`` on ``sys.path`` (as they import ``synthetic_store``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "demo.yaml"


def torchrun_path() -> Optional[str]:
    """The ``torchrun`` beside this interpreter (the venv's), else the one on PATH, else None."""
    local = Path(sys.executable).parent / "torchrun"
    return str(local) if local.exists() else shutil.which("torchrun")


def torchrun_train(nproc: int, overrides: List[str], *, max_restarts: int = 0, extra: List[str] = ()) -> List[str]:
    """``torchrun --standalone --nnodes 1 --nproc_per_node N --max-restarts R -m multisk.cli train ...``."""
    return [torchrun_path() or "torchrun", "--standalone", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--max-restarts", str(max_restarts), "--monitor-interval", "0.2", "-m", "multisk.cli", "train",
            "--no-progress", "--config", str(CONFIG), *extra, *overrides]


def run_timed(cmd: List[str], what: str, env: Optional[Dict[str, str]] = None) -> float:
    """Run ``cmd`` to the end; its wall time in seconds, or exit naming ``what`` with its stderr tail."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _children(pid: int) -> List[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def rank_pids(launcher_pid: int) -> Dict[int, int]:
    """{rank: pid} of the worker processes torchrun (``launcher_pid``) runs now, read from their environment
    (Linux ``/proc``); DataLoader workers and other grandchildren are not listed."""
    ranks = {}
    for pid in _children(launcher_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        values = dict(item.split(b"=", 1) for item in env if b"=" in item)
        if b"RANK" in values and b"TORCHELASTIC_RUN_ID" in values:
            ranks[int(values[b"RANK"])] = pid
    return ranks


def logged_steps(run_dir: Path) -> int:
    """The last training step ``metrics.jsonl`` records (0 before the first)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip().endswith("}")]
    return max(steps, default=0)


def wait_for(condition, timeout: float, what: str, proc=None) -> None:
    """Poll ``condition()`` every 20 ms until it holds; fail naming ``what`` on timeout or if ``proc`` ended."""
    deadline = time.time() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}")
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def checkpoint_differences(a: Any, b: Any, where: str = "") -> List[str]:
    """Paths at which two loaded checkpoints differ (tensors compared bit for bit; ``config`` skipped)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys {sorted(set(a) ^ set(b), key=str)}"]
        return [d for k in a if not (where == "" and k == "config")
                for d in checkpoint_differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in checkpoint_differences(x, y, f"{where}[{i}]")]
    if torch.is_tensor(a) and torch.is_tensor(b):
        same = a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [f"{where}: tensors differ"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]
