"""Training gives the same weights however it is run: resumed or not (with the paper configs'
plateau schedule), on one process or two (DDP, gloo on CPU; to float32 rounding, with plain SGD so
that the gradient's scale shows in the weights)."""

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
from ddp_runs import EQUIVALENCE, PLATEAU, config, plain_sgd

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
    # This checkout's code (not an installed liploc), whatever the caller's PYTHONPATH (cwd differs).
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
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


def sgd_mismatches(run: Path, single: Path, initial: Path, cfg) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Tensors of ``run`` farther from ``single``'s than float32 rounding of the SGD steps allows,
    with how many times that tolerance they are off (``initial``: the weights before the steps).

    The tolerance, derived: with plain SGD, w_T = w_0 - sum_t lr_t (g_t + wd w_t). One process and
    two compute every pair's forward and backward pass with the same float32 operations; what
    differs is the order of the sums over the batch that make each weight's gradient (one sum over
    the 8 pairs' pixels on one process; two sums over 4 pairs' pixels added by the all-reduce on
    two) and the rounding of each run's weight update. A float32 sum of n terms taken in another
    order differs by at most gamma_n = n u / (1 - n u) of the sum of the terms' magnitudes
    (u = 2**-24; Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., sec. 4.2). The
    longest sums are the first convolution's, over n <= batch x height x width = 8 x 64 x 64 terms:
    gamma_n = 2.0e-3. Over T steps the update differs by at most T gamma_n of itself (the terms'
    magnitudes taken at the gradient's, and step 1's tiny difference left out of step 2's
    gradient), and each run rounds w - step to half an ulp of w at each step, T x 2 x u |w| in
    all. Per tensor, norm-wise (an element whose sum cancels has no relative bound of its own):

        ||w_run - w_single|| <= T gamma_n ||w_single - w_0|| + 2 T u ||w_single||

    Measured: 1/180 of that. A gradient scaled by k moves every weight by (k - 1) times its update.
    """
    steps = cfg.train.max_steps
    h, w = cfg.data.image_size
    n = cfg.train.batch_size * h * w
    u = 2.0**-24
    gamma = n * u / (1 - n * u)
    a, meta_a = weights(run)
    b, meta_b = weights(single)
    w0, _ = weights(initial)
    assert a.keys() == b.keys() == w0.keys() and meta_a["step"] == meta_b["step"] == steps
    off: dict[str, float] = {}
    for key in b:
        ours, theirs, start = (t[key].double() for t in (a, b, w0))
        tolerance = steps * gamma * (theirs - start).norm() + 2 * steps * u * theirs.norm()
        difference = (ours - theirs).norm()
        if difference > tolerance:
            off[key] = float(difference / tolerance)
    return off


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one_process_on_the_whole_batch(
    data: Path, two_processes: Path, tmp_path: Path
) -> None:
    cfg = config(data, [*EQUIVALENCE, "train.max_steps=3"])
    rates = ["train.lr_head=0", "train.lr_image_encoder=0", "train.lr_lidar_encoder=0"]
    with plain_sgd():
        assert train(cfg, tmp_path / "single", progress=False).step == 3
        # The weights before any step: the same run with zero learning rates.
        train(config(data, [*EQUIVALENCE, "train.max_steps=3", *rates]), tmp_path / "initial", progress=False)
    assert sgd_mismatches(two_processes / "short", tmp_path / "single", tmp_path / "initial", cfg) == {}
    # The failing control: two processes whose gradient is scaled by the number of processes (a
    # bug AdamW's weights barely show) are off in every tensor, far beyond the tolerance.
    off = sgd_mismatches(two_processes / "short-gradient-x2", tmp_path / "single", tmp_path / "initial", cfg)
    assert len(off) == len(weights(tmp_path / "single")[0]) and min(off.values()) > 5, off


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
