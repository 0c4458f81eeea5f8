"""Training gives the same weights however it is run: resumed or not (with the paper configs'
plateau schedule), on one process or two (DDP, gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_kitti_odometry
from corridor_world import write_corridor
from ddp_runs import EQUIVALENCE, PLATEAU, config

from liploc.runtime.checkpoint import load_checkpoint
from liploc.training.train import train

HERE = Path(__file__).resolve().parent
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 training pairs (4 steps of 8 per epoch) and 9 validation pairs (not a multiple of 2 or 8).

    The validation pairs are random images and scans: their loss does not improve, so the plateau
    rule reduces the learning rates (at the end of epoch 2, before the interruption at step 10).
    """
    root = tmp_path_factory.mktemp("corridor")
    write_corridor(root, "00", 32, seed=0)
    write_kitti_odometry(root, "01", 9, image_size=(128, 40), n_points=2000, seed=5)
    return root


@pytest.fixture(scope="module")
def two_processes(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runs of ``ddp_runs.py`` under torchrun with 2 processes."""
    out = tmp_path_factory.mktemp("ddp")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(HERE / "ddp_runs.py"), str(data), str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def weights(run: Path) -> tuple[dict[str, torch.Tensor], dict]:
    return load_checkpoint(run / "checkpoints" / "last.safetensors")


def assert_same_state(a: Path, b: Path, **tolerance: float) -> None:
    ta, meta_a = weights(a)
    tb, meta_b = weights(b)
    assert ta.keys() == tb.keys() and meta_a["step"] == meta_b["step"]
    for key in ta:
        if tolerance:
            torch.testing.assert_close(ta[key], tb[key], msg=key, **tolerance)
        else:
            assert torch.equal(ta[key], tb[key]), key
    assert meta_a["schedule"] == pytest.approx(meta_b["schedule"])


def test_resume_with_the_plateau_schedule_ends_where_an_uninterrupted_run_does(
    data: Path, tmp_path: Path
) -> None:
    straight = train(config(data, PLATEAU), tmp_path / "straight", progress=False)
    train(config(data, [*PLATEAU, "train.max_steps=10"]), tmp_path / "resumed", progress=False)
    resumed = train(config(data, PLATEAU), tmp_path / "resumed", resume=True, progress=False)
    assert straight.step == resumed.step == 20
    schedule = weights(tmp_path / "straight")[1]["schedule"]
    assert schedule["plateau_scale"] < 1.0, "the plateau rule must have reduced the rates to test anything"
    assert_same_state(tmp_path / "straight", tmp_path / "resumed")


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one_process_on_the_whole_batch(
    data: Path, two_processes: Path, tmp_path: Path
) -> None:
    single = train(config(data, [*EQUIVALENCE, "train.max_steps=3"]), tmp_path / "single", progress=False)
    assert single.step == 3
    # Float tolerance: sums in another order; Adam turns the last bits of near-zero gradients into
    # differences of a fraction of the learning rate (1e-3) in a few weights.
    assert_same_state(two_processes / "short", tmp_path / "single", rtol=1e-3, atol=2e-4)
    # Not the same as a run that took another batch: the comparison can fail.
    other = train(
        config(data, [*EQUIVALENCE, "train.max_steps=3", "train.seed=1"]), tmp_path / "other", progress=False
    )
    assert other.step == 3
    with pytest.raises(AssertionError):
        assert_same_state(two_processes / "short", tmp_path / "other", rtol=1e-3, atol=2e-4)


@pytest.mark.slow
def test_two_process_resume_with_the_plateau_schedule_is_exact(two_processes: Path) -> None:
    schedule = weights(two_processes / "straight")[1]["schedule"]
    assert schedule["plateau_scale"] < 1.0
    assert_same_state(two_processes / "straight", two_processes / "resumed")
    # 9 validation pairs on 2 processes: counted once each, not padded to 10.
    summary = json.loads((two_processes / "straight" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["metrics"]["val_pairs"] == 9


@pytest.mark.slow
def test_ctrl_c_in_one_process_stops_all_after_the_same_step(two_processes: Path) -> None:
    # Rank 1 alone was interrupted after step 3; the flag reaches the others one step later (the
    # agreement is read a step late so that no step waits for it), and all save at step 4.
    summary = json.loads((two_processes / "signalled" / "summary.json").read_text())
    assert summary["stopped"] == "interrupted" and summary["step"] == 4
    assert weights(two_processes / "signalled")[1]["step"] == 4
