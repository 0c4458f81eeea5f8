"""No shortcut in synthetic drives: global image statistics do not tell which scan goes with an image,
and nothing in a frame depends on its index (no lighting or colour drift along a drive)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liploc.datasets import open_dataset
from liploc.datasets.scan import load_image, load_scan
from liploc.synth import SynthOptions, build_town_and_drives, generate_dataset
from liploc.synth.camera_model import CameraModel
from liploc.synth.cars import drive_cars
from liploc.synth.lidar_model import LidarModel, simulate_scan
from liploc.synth.meshes import TriangleMesh
from liploc.synth.rig import kitti_rig
from liploc.synth.scene import Scene

OPTIONS = SynthOptions(
    town_seed=21,
    drives=2,
    frames=90,
    frame_spacing_m=1.5,
    image_scale=0.125,
    lidar_columns=512,
    held_out_drives=1,
    blocks=(4, 2),
    pairs="none",
)


@pytest.fixture(scope="module")
def drives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("shortcut")
    generate_dataset(root, OPTIONS, reuse=False)
    reader = open_dataset(root)
    out = {}
    for seq in reader.sequences():
        frames = reader.frames(seq)
        colour = np.array([load_image(f.image_path).reshape(-1, 3).mean(axis=0) for f in frames])
        ranges = np.array([np.linalg.norm(load_scan(f.scan_path)[:, :3], axis=1).mean() for f in frames])
        xy = np.array([f.position_xy for f in frames])
        out[seq] = {"colour": colour, "range": ranges, "xy": xy}
    return out


def test_mean_colour_against_mean_range_matches_near_chance(drives) -> None:
    train, test = drives["00"], drives["01"]
    # The best linear map from mean colour to mean range, fitted on the training drive.
    design = np.column_stack([train["colour"], np.ones(len(train["colour"]))])
    weights, *_ = np.linalg.lstsq(design, train["range"], rcond=None)
    predicted = np.column_stack([test["colour"], np.ones(len(test["colour"]))]) @ weights
    best = np.argmin(np.abs(predicted[:, None] - test["range"][None, :]), axis=1)
    distance = np.linalg.norm(test["xy"][:, None, :] - test["xy"][None, :, :], axis=-1)
    radius = 5.0
    recall = float(np.mean(distance[np.arange(len(best)), best] <= radius))
    chance = float(np.mean(distance <= radius))
    print(f"global-statistics matching: recall {recall:.3f}, chance {chance:.3f}")
    assert recall <= chance + 0.12, (recall, chance)


def test_frame_content_does_not_depend_on_the_frame_index() -> None:
    town, plans = build_town_and_drives(OPTIONS)
    plan = plans[0]
    cars, _ = drive_cars(town.slots, town.streets, plan.path, np.random.default_rng(plan.cars_seed), 10**6)
    scene = Scene(TriangleMesh.concatenate([town.mesh, cars]), town.ground)
    camera = CameraModel(kitti_rig(OPTIONS.resolved_image_scale), seed=town.seed)
    lidar = LidarModel(OPTIONS.resolved_lidar_columns)
    pose = plan.poses[5]
    frames = []
    for index in (5, 500):  # the same place as frame 5 and as a frame much later in the drive
        rng = np.random.default_rng([OPTIONS.town_seed, 1000, plan.index, index])
        image = camera.render(scene, pose, plan.lighting, rng).image.astype(float)
        ranges = np.linalg.norm(simulate_scan(scene, pose, lidar, rng).points[:, :3], axis=1)
        frames.append((image, ranges))
    (image_a, ranges_a), (image_b, ranges_b) = frames
    assert np.abs(image_a.mean(axis=(0, 1)) - image_b.mean(axis=(0, 1))).max() < 0.3
    assert np.median(np.abs(image_a - image_b)) <= 2.0  # sensor noise only
    assert abs(ranges_a.mean() - ranges_b.mean()) < 0.1
    # Another place of the same drive does look different.
    rng = np.random.default_rng(0)
    elsewhere = camera.render(scene, plan.poses[60], plan.lighting, rng).image.astype(float)
    assert np.abs(elsewhere - image_a).mean() > 10


def test_pose_convention_changes_only_the_pose_files(tmp_path: Path) -> None:
    # Where the poses are expressed is not in the images or scans: only poses/NN.txt differ.
    options = SynthOptions(
        town_seed=4, drives=1, frames=2, image_scale=0.125, lidar_columns=256, blocks=(2, 2)
    )
    generate_dataset(tmp_path / "a", options, reuse=False)
    generate_dataset(tmp_path / "b", options.model_copy(update={"pose_frame": "first"}), reuse=False)
    for name in ("image_2/000001.png", "velodyne/000001.bin"):
        a = (tmp_path / "a" / "sequences" / "00" / name).read_bytes()
        b = (tmp_path / "b" / "sequences" / "00" / name).read_bytes()
        assert a == b
    first = open_dataset(tmp_path / "b").frames("00")
    np.testing.assert_allclose(first[0].pose, np.eye(4), atol=1e-6)
    assert (tmp_path / "a" / "poses" / "00.txt").read_text() != (
        tmp_path / "b" / "poses" / "00.txt"
    ).read_text()
