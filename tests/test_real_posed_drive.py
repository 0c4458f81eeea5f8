"""End to end on a real posed KITTI raw drive (../shared/data/kitti-raw-posed: 24 frames of
2011_09_26_drive_0013_sync with their OXTS records): info, a tiny training run, evaluation, a map
and localization, and the chance level checked against one computed here from the OXTS records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from liploc.cli import app
from liploc.evaluation.metrics import format_percent

DRIVE = "2011_09_26_drive_0013_sync"
TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
EARTH_RADIUS_M = 6378137.0  # the devkit's er


def lidar_xy_from_oxts(date_folder: Path) -> np.ndarray:
    """(N, 2) east/north positions of the Velodyne, straight from the OXTS files (KITTI devkit).

    Mercator with the scale of the first record (devkit ``latToScale``/``latlonToMercator``), the
    IMU rotation Rz(yaw) Ry(pitch) Rx(roll), and the Velodyne's place in the IMU frame from
    ``calib_imu_to_velo.txt`` (X_velo = R X_imu + T, so the Velodyne sits at -R^T T).
    """
    rows = [
        np.array(p.read_text().split()[:6], dtype=float)
        for p in sorted((date_folder / DRIVE / "oxts" / "data").glob("*.txt"))
    ]
    calib = {
        line.split(":")[0]: np.array(line.split(":")[1].split(), dtype=float)
        for line in (date_folder / "calib_imu_to_velo.txt").read_text().splitlines()
        if line.startswith(("R:", "T:"))
    }
    velo_in_imu = -calib["R"].reshape(3, 3).T @ calib["T"]
    scale = math.cos(rows[0][0] * math.pi / 180.0)
    out = []
    for lat, lon, _alt, roll, pitch, yaw in rows:
        mx = scale * lon * math.pi * EARTH_RADIUS_M / 180.0
        my = scale * EARTH_RADIUS_M * math.log(math.tan((90.0 + lat) * math.pi / 360.0))
        cr, sr, cp, sp, cy, sy = (
            math.cos(roll),
            math.sin(roll),
            math.cos(pitch),
            math.sin(pitch),
            math.cos(yaw),
            math.sin(yaw),
        )
        rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
        ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
        rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
        out.append(np.array([mx, my]) + (rz @ ry @ rx @ velo_in_imu)[:2])
    return np.array(out)


@pytest.fixture(scope="module")
def posed_drive() -> Path:
    from conftest import SHARED_DATA, require_shared_data

    require_shared_data()
    return SHARED_DATA / "kitti-raw-posed"


@pytest.mark.slow
def test_real_drive_info_training_evaluation_map_and_localization(posed_drive: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    info = runner.invoke(app, ["info", str(posed_drive)])
    assert info.exit_code == 0, info.output
    assert DRIVE in info.output and "24" in info.output

    run = tmp_path / "run"
    train = runner.invoke(
        app,
        [
            "train", str(TINY), "--data-root", str(posed_drive), "--out", str(run), "--no-progress",
            "--set", f"data.datasets=[{{layout: kitti_raw, train: ['{DRIVE}']}}]",
            "--set", "data.num_workers=0", "--set", "train.batch_size=8", "--set", "train.max_steps=2",
        ],
    )  # fmt: skip
    assert train.exit_code == 0, train.output
    splits = json.loads((run / "summary.json").read_text())["splits"]
    # 24 frames 7 m apart: a block of 5 for validation, nothing of training within 20 m of it.
    assert splits["val_split"] == "blocks" and splits["val_frames"] == 5
    assert splits["min_train_val_distance_m"] > 20.0
    assert splits["train_frames"] + splits["val_frames"] + splits["left_out"]["val_gap"] == 24

    # Evaluation on the drive itself (the only posed one here: a pipeline check, not a result).
    allow = ["--allow-training-data"]  # it trained on this drive: evaluate refuses it without
    evaluation = runner.invoke(
        app,
        ["evaluate", str(run), "--data-root", str(posed_drive), "--sequence", DRIVE, "--threshold", "20",
         "--out", str(tmp_path / "eval"), "--device", "cpu", *allow],
    )  # fmt: skip
    assert evaluation.exit_code == 0, evaluation.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_queries"] == 24 and metrics["db_size"] == 24

    # The chance level, by hand: own scan in the database, so P(hit at 1) = |within 20 m| / 24.
    xy = lidar_xy_from_oxts(posed_drive / "2011_09_26")
    assert len(xy) == 24
    within = np.linalg.norm(xy[:, None] - xy[None], axis=-1) <= 20.0
    chance = float(within.sum(axis=1).mean() / 24)
    assert 0.1 < chance < 0.3  # the shared data's README: near 0.2
    printed = " ".join(evaluation.output.split())
    assert format_percent(chance) in printed
    reported = _find_chance_at_1(metrics)
    assert reported == pytest.approx(chance, abs=1e-12)

    # A map of the drive and localization of one of its images.
    map_dir = tmp_path / "map"
    built = runner.invoke(
        app,
        ["map", "build", str(run), "--data-root", str(posed_drive), "--sequence", DRIVE,
         "--out", str(map_dir), "--device", "cpu"],
    )  # fmt: skip
    assert built.exit_code == 0, built.output
    manifest = json.loads((map_dir / "manifest.json").read_text())
    assert manifest["num_entries"] == 24 and manifest["embedding_precision"] == "fp32"
    image = posed_drive / "2011_09_26" / DRIVE / "image_02" / "data" / "0000000060.png"
    located = runner.invoke(
        app, ["localize", str(map_dir), str(image), "--json", "-k", "3", "--device", "cpu"]
    )
    assert located.exit_code == 0, located.output
    matches = json.loads(located.output)[0]["matches"]
    assert [m["rank"] for m in matches] == [1, 2, 3]
    assert all(m["sequence"] == DRIVE and m["frame"] % 6 == 0 for m in matches)
    assert matches[0]["score"] >= matches[1]["score"] >= matches[2]["score"]


def _find_chance_at_1(metrics: dict) -> float:
    """The chance-level Recall@1 at 20 m in an evaluation's metrics.json."""
    for threshold in metrics.get("thresholds", []):
        if float(threshold.get("threshold_m", math.nan)) == 20.0:
            return float(threshold["chance"]["1"])
    raise AssertionError(f"no 20 m chance level in {sorted(metrics)}")
