"""The kill-at-instant hook (LIPLOC_FAULT_KILL_AT): a checkpoint save killed at each named instant
leaves a checkpoint that loads (the old or the new one, never a mix) and no orphan weights after
the next sweep. tests/faults/replay.py replays the same instants on whole commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from liploc.faults import ENV, INSTANTS
from liploc.runtime.checkpoint import load_checkpoint, sweep_checkpoint_folder

REPO = Path(__file__).resolve().parents[1]
SAVE_TWICE = """
import sys, os, torch
from liploc.runtime.checkpoint import save_checkpoint
path = sys.argv[1]
save_checkpoint(path, {"w": torch.full((64,), 1.0)}, {"step": 1})
os.environ["LIPLOC_FAULT_KILL_AT"] = sys.argv[2]
save_checkpoint(path, {"w": torch.full((64,), 2.0)}, {"step": 2})
"""


@pytest.mark.parametrize("instant", [i for i in INSTANTS if i.startswith("checkpoint.")])
def test_a_save_killed_at_each_instant_leaves_one_consistent_checkpoint(instant: str, tmp_path: Path) -> None:
    path = tmp_path / "last.safetensors"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop(ENV, None)
    proc = subprocess.run(
        [sys.executable, "-c", SAVE_TWICE, str(path), instant], env=env, capture_output=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    tensors, meta = load_checkpoint(path)
    assert float(tensors["w"][0]) == meta["step"]  # weights and metadata of the same save
    sweep_checkpoint_folder(tmp_path)
    weights = list(tmp_path.glob("last.*.safetensors"))  # content-named weights files
    assert 1 <= len(weights) <= 2  # the current one (and the previous one), no orphan
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
