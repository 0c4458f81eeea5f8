"""No shortcut in synthetic drives: global statistics of the written images and scans (mean colour,
brightness by image row; mean range, valid ratio of the range crop, point count) do not tell which
scan goes with an image, and nothing in a frame depends on its index (no drift along a drive)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liploc.config import ProjectionConfig
from liploc.datasets import open_dataset
from liploc.datasets.scan import load_image, load_scan
from liploc.lidar import lidar_range_input
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
    frames=160,
    frame_spacing_m=1.5,
    image_scale=0.125,
    lidar_columns=512,
    held_out_drives=1,
    blocks=(4, 2),
    pairs="none",
)
RADIUS_M = 5.0
ROW_BANDS = 8


def image_statistics(image: np.ndarray) -> np.ndarray:
    """Global statistics of an (H, W, 3) image: mean colour and brightness profile by row band."""
    colour = image.reshape(-1, 3).mean(axis=0)
    rows = image.mean(axis=(1, 2))
    profile = np.array([band.mean() for band in np.array_split(rows, ROW_BANDS)])
    return np.concatenate([colour, profile])


def scan_statistics(points: np.ndarray, projection: ProjectionConfig) -> np.ndarray:
    """Global statistics of a scan: mean range, valid ratio of the model's range crop, point count."""
    ranges = np.linalg.norm(points[:, :3], axis=1)
    crop = lidar_range_input(points, projection)[0]
    valid = float(np.mean(crop != projection.empty_value))
    return np.array([ranges.mean(), valid, len(points)])


@pytest.fixture(scope="module")
def drives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    """Statistics of every frame, read back from the written files through the KITTI reader."""
    root = tmp_path_factory.mktemp("shortcut")
    generate_dataset(root, OPTIONS, reuse=False)
    reader = open_dataset(root, "kitti")
    projection = ProjectionConfig()
    out = {}
    for seq in reader.sequences():
        frames = reader.frames(seq)
        assert len(frames) == OPTIONS.frames and all(f.pose is not None for f in frames)
        out[seq] = {
            "image": np.array([image_statistics(load_image(f.image_path).astype(float)) for f in frames]),
            "scan": np.array([scan_statistics(load_scan(f.scan_path), projection) for f in frames]),
            "xy": np.array([f.position_xy for f in frames]),
        }
    return out


def shortcut_hits(train: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per test query: whether the global-statistics match is right, and its chance probability.

    The best linear map from image statistics to standardised scan statistics, fitted on ``train``,
    predicts each test image's scan statistics; the nearest test scan is its match. Right: within
    ``RADIUS_M`` of the query. Chance: the share of test scans within ``RADIUS_M`` (own scan in).
    """
    mean, std = train["scan"].mean(axis=0), train["scan"].std(axis=0) + 1e-9
    target = (train["scan"] - mean) / std
    design = np.column_stack([train["image"], np.ones(len(train["image"]))])
    weights, *_ = np.linalg.lstsq(design, target, rcond=None)
    predicted = np.column_stack([test["image"], np.ones(len(test["image"]))]) @ weights
    candidates = (test["scan"] - mean) / std
    best = np.argmin(((predicted[:, None, :] - candidates[None, :, :]) ** 2).sum(axis=-1), axis=1)
    distance = np.linalg.norm(test["xy"][:, None, :] - test["xy"][None, :, :], axis=-1)
    hits = distance[np.arange(len(best)), best] <= RADIUS_M
    return hits, (distance <= RADIUS_M).mean(axis=1)


def test_global_image_statistics_do_not_tell_which_scan_goes_with_an_image(drives) -> None:
    # Each drive is matched with the map fitted on the other: 2 x 160 queries.
    hits_a, chance_a = shortcut_hits(drives["00"], drives["01"])
    hits_b, chance_b = shortcut_hits(drives["01"], drives["00"])
    hits, chance = np.concatenate([hits_a, hits_b]), np.concatenate([chance_a, chance_b])
    assert len(hits) >= 300
    recall, expected = float(hits.mean()), float(chance.mean())
    # Under chance each query is a Bernoulli trial of its own probability.
    standard_error = float(np.sqrt((chance * (1 - chance)).sum()) / len(chance))
    bound = expected + 3 * standard_error
    print(f"global-statistics matching: recall {recall:.3f}, chance {expected:.3f}, bound {bound:.3f}")
    assert recall <= bound, (recall, expected, standard_error)


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
