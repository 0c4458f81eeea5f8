"""Two-process DDP training through torchrun on CPU (gloo), as a user would launch it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from corridor_world import write_corridor
from torch.utils.data import DataLoader

from liploc.config import load_config
from liploc.runtime.checkpoint import load_checkpoint, strip_prefix
from liploc.runtime.data_roots import split_frames
from liploc.runtime.frame_dataset import PairDataset
from liploc.runtime.run_folder import load_model_from_checkpoint, read_csv_rows
from liploc.training.losses import build_loss
from liploc.training.validation import validate

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""Set by an enclosing launcher; the test's own torchrun must not inherit them."""


@pytest.mark.slow
def test_torchrun_two_processes_train_into_one_run_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_corridor(data, "00", 48, seed=0)
    write_corridor(data, "01", 16, seed=100)
    run = tmp_path / "run"
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")
    }
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "liploc", "train", str(TINY), "--data-root", str(data), "--out", str(run), "--no-progress",
        "--set", "train.max_steps=2", "--set", "train.log_every=1", "--set", "data.num_workers=0",
        "--set", "train.grad_accum=2",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # One run folder, written by rank 0 only; nothing else appeared in the working folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["step"] == 2 and summary["stopped"] == "finished"
    assert [row["step"] for row in read_csv_rows(run / "metrics.csv")] == [1, 2]
    assert (run / "train.log").read_text().count("2 process(es)") == 1

    # The validation loss the two processes computed together (each embedding half of the batch,
    # the loss gathering the global batch) is the single-process loss of the saved weights.
    tensors, meta = load_checkpoint(run / "checkpoints" / "last.safetensors")
    model, config = load_model_from_checkpoint(run / "checkpoints" / "last.safetensors")
    assert config == load_config(run / "config.yaml")
    loss_fn = build_loss(config.loss)
    loss_fn.load_state_dict(strip_prefix(tensors, "loss."))
    frames = split_frames(config.data, "val")
    loader = DataLoader(PairDataset(frames, config), batch_size=config.train.batch_size)
    single = validate(model, loss_fn, loader, torch.device("cpu"))
    assert single["val_pairs"] == meta["metrics"]["val_pairs"] == 16
    assert single["val_loss"] == pytest.approx(meta["metrics"]["val_loss"], rel=1e-5)
    assert single["val_top1_image_to_lidar"] == pytest.approx(meta["metrics"]["val_top1_image_to_lidar"])
