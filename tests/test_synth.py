"""liploc synth: KITTI layout read back by the reader, manifest, calibration and pose consistency,
determinism, realism statistics, trajectory drives, bad input and the CLI (tiny towns, few frames)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import KITTI_ODOMETRY_POSES, KITTI_RAW_SAMPLE
from typer.testing import CliRunner

from liploc.cli import app
from liploc.datasets import open_dataset
from liploc.datasets.scan import load_image, load_scan
from liploc.errors import ConfigError, DataError
from liploc.synth import SynthOptions, build_town_and_drives, generate_dataset, load_summary
from liploc.synth.camera_model import CameraModel
from liploc.synth.cars import ParkingSlots, drive_cars
from liploc.synth.command import make_options
from liploc.synth.lidar_model import LidarModel, simulate_scan
from liploc.synth.meshes import TriangleMesh
from liploc.synth.rig import kitti_rig
from liploc.synth.scene import GROUND_OBJECT, Scene
from liploc.synth.stats import scan_statistics
from liploc.synth.trajectory import flatten, read_trajectory

OPTIONS = SynthOptions(town_seed=3, drives=3, frames=20, size="small", held_out_drives=1, blocks=(4, 2))


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, OPTIONS, reuse=False)
    return root


@pytest.fixture(scope="module")
def planned():
    return build_town_and_drives(OPTIONS)


def _frame_world(synth_root: Path, planned, drive: int, k: int):
    """Scene, camera and LiDAR of a written frame, re-created exactly as the generator did."""
    town, plans = planned
    plan = plans[drive]
    first_car = int(town.mesh.parts.object_id.max()) + 1
    cars, _ = drive_cars(
        town.slots, town.streets, plan.path, np.random.default_rng(plan.cars_seed), first_car
    )
    scene = Scene(TriangleMesh.concatenate([town.mesh, cars]), town.ground)
    camera = CameraModel(kitti_rig(OPTIONS.resolved_image_scale), 1, OPTIONS.shadows, seed=town.seed)
    rng = np.random.default_rng([OPTIONS.town_seed, 1000, plan.index, k])
    render = camera.render(scene, plan.poses[k], plan.lighting, rng)
    scan = simulate_scan(scene, plan.poses[k], LidarModel(OPTIONS.resolved_lidar_columns), rng)
    return render, scan


def test_layout_reads_back_with_the_kitti_reader(synth_root: Path, planned) -> None:
    reader = open_dataset(synth_root)
    assert reader.name == "kitti"
    assert reader.sequences() == ["00", "01", "02"]
    _, plans = planned
    for plan in plans:
        frames = reader.frames(plan.name)
        assert [f.index for f in frames] == list(range(OPTIONS.frames))
        poses = np.stack([f.pose for f in frames])
        # The reader's inv(Tr) @ P_i @ Tr gives back the LiDAR poses the drive was rendered from.
        np.testing.assert_allclose(poses, plan.poses, atol=2e-5)
        assert frames[3].timestamp == pytest.approx(0.3)
    frame = reader.frames("01")[5]
    assert frame.calib.image_size == (310, 94)
    np.testing.assert_allclose(frame.calib.P, kitti_rig(0.25).P2)
    image = load_image(frame.image_path)
    assert image.shape == (94, 310, 3) and image.std() > 10
    points = load_scan(frame.scan_path)
    assert points.dtype == np.float32 and points.shape[1] == 4 and len(points) > 30000
    ranges = np.linalg.norm(points[:, :3], axis=1)
    assert ranges.max() <= 120.5 and points[:, 3].min() >= 0 and points[:, 3].max() <= 1.0
    assert reader.problems == []


def test_manifest_roles_regions_and_pairs(synth_root: Path, planned) -> None:
    summary = load_summary(synth_root)
    assert summary.train_sequences() == ["00", "01"] and summary.test_sequences() == ["02"]
    assert summary.pairs("train") == [("00", "01")]
    s00, s01, s02 = summary.sequences
    assert s02.region == "held-out" and s00.region == "train"
    assert s01.partner == "00" and s01.variant == "same-direction"
    assert s00.shares_streets_with == {"01": 1.0}
    # No street of the held-out drive is driven by a training drive.
    assert not set(s02.streets) & (set(s00.streets) | set(s01.streets))
    assert s00.lighting != s01.lighting  # the partner drive has other light
    readme = (synth_root / "README.md").read_text()
    assert all(f"| {name} |" in readme for name in ("00", "01", "02"))


def test_scan_projected_with_written_calibration_lands_on_the_right_objects(
    synth_root: Path, planned
) -> None:
    frame = open_dataset(synth_root).frames("00")[10]
    render, scan = _frame_world(synth_root, planned, 0, 10)
    written = load_scan(frame.scan_path)
    np.testing.assert_array_equal(written, scan.points)  # the file holds what the simulation made
    assert np.array_equal(load_image(frame.image_path), render.image)

    def agreement(lidar_to_image: np.ndarray) -> float:
        xyz1 = np.column_stack([written[:, :3], np.ones(len(written))])
        pix = xyz1 @ lidar_to_image.T
        front = pix[:, 2] > 1.0
        uv = np.round(pix[front, :2] / pix[front, 2:3]).astype(int)
        width, height = frame.calib.image_size
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
        ids = scan.object_id[front][inside]
        seen = render.object_id[uv[inside, 1], uv[inside, 0]]
        things = ids != GROUND_OBJECT
        assert things.sum() > 300
        return float(np.mean(seen[things] == ids[things]))

    assert agreement(frame.calib.lidar_to_image) > 0.85
    # A calibration 5 degrees off in yaw puts the points on other objects.
    c, s = np.cos(np.radians(5.0)), np.sin(np.radians(5.0))
    yaw = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert agreement(frame.calib.P @ frame.calib.T_cam_lidar @ yaw) < 0.7


def test_poses_align_scans_of_different_frames(synth_root: Path) -> None:
    frames = open_dataset(synth_root).frames("00")

    def world_points(frame) -> np.ndarray:
        p = load_scan(frame.scan_path)
        xyz = p[:, :3] @ frame.pose[:3, :3].T + frame.pose[:3, 3]
        return xyz[(xyz[:, 2] > 0.5) & (np.linalg.norm(p[:, :3], axis=1) < 25)]

    a = world_points(frames[4])
    b = world_points(frames[8])
    rng = np.random.default_rng(0)
    sample = a[rng.choice(len(a), 400, replace=False)]
    nearest = np.sqrt(((sample[:, None, :] - b[None, ::2, :]) ** 2).sum(-1)).min(axis=1)
    assert np.median(nearest) < 0.15
    # Against a pose 1 m off, the same structure no longer lines up.
    shifted = np.sqrt(((sample[:, None, :] + [1.0, 0, 0] - b[None, ::2, :]) ** 2).sum(-1)).min(axis=1)
    assert np.median(shifted) > 0.3


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_and_options_give_byte_identical_files(tmp_path: Path) -> None:
    options = SynthOptions(town_seed=11, drives=2, frames=3, size="small", blocks=(2, 2))
    generate_dataset(tmp_path / "a", options, workers=1, reuse=False)
    generate_dataset(tmp_path / "b", options, workers=2, reuse=False)
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert len(a) == 2 * 2 * 3 + 2 * 3 + 2 and a == b
    other = SynthOptions(town_seed=12, drives=2, frames=3, size="small", blocks=(2, 2))
    generate_dataset(tmp_path / "c", other, reuse=False)
    c = _digests(tmp_path / "c")
    assert c["sequences/00/velodyne/000000.bin"] != a["sequences/00/velodyne/000000.bin"]


def test_realism_statistics_come_close_to_real_kitti(synth_root: Path) -> None:
    synthetic = scan_statistics(synth_root, max_scans=24)
    real = scan_statistics(KITTI_RAW_SAMPLE)
    assert abs(synthetic.valid_ratio - real.valid_ratio) < 0.1
    assert abs(synthetic.mean_range_m - real.mean_range_m) < 0.4 * real.mean_range_m
    assert abs(synthetic.mean_intensity - real.mean_intensity) < 0.08


def test_drive_follows_a_given_kitti_trajectory(tmp_path: Path) -> None:
    poses_file = KITTI_ODOMETRY_POSES / "00.txt"
    options = SynthOptions(trajectory=poses_file, frames=6, drives=1, image_scale=0.1, lidar_columns=256)
    generate_dataset(tmp_path, options, reuse=False)
    frames = open_dataset(tmp_path).frames("00")
    expected = flatten(read_trajectory(poses_file))[:6]
    got = np.stack([f.pose for f in frames])
    np.testing.assert_allclose(got[:, :2, 3], expected[:, :2, 3], atol=1e-4)
    np.testing.assert_allclose(got[:, :3, :3], expected[:, :3, :3], atol=1e-5)
    assert load_summary(tmp_path).sequences[0].region == "trajectory"


def test_bad_input_gives_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="held_out_drives"):
        make_options(drives=2, held_out_drives=2)
    with pytest.raises(ConfigError, match="frames"):
        make_options(frames=0)
    foreign = tmp_path / "kitti"
    (foreign / "sequences" / "00").mkdir(parents=True)
    with pytest.raises(DataError, match="did not write"):
        generate_dataset(foreign, SynthOptions(frames=1, drives=1, size="small"))
    lonely = tmp_path / "poses.txt"
    lonely.write_text((KITTI_ODOMETRY_POSES / "00.txt").read_text().splitlines()[0] + "\n" * 2)
    with pytest.raises(DataError, match="calib"):
        generate_dataset(tmp_path / "out", SynthOptions(trajectory=lonely, frames=1, drives=1))


def test_cli_writes_readme_preview_and_statistics(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    args = [
        "synth",
        "--out",
        str(out),
        "--drives",
        "1",
        "--frames",
        "2",
        "--size",
        "small",
        "--blocks",
        "2x2",
    ]
    result = CliRunner().invoke(app, [*args, "--preview", "--stats", str(KITTI_RAW_SAMPLE)])
    assert result.exit_code == 0, result.output
    assert (out / "README.md").is_file() and (out / "synth.json").is_file()
    assert load_image(out / "preview.png").shape[1] == 310
    assert "valid-pixel ratio" in result.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "reused" in again.output
    bad = CliRunner().invoke(app, ["synth", "--out", str(out), "--blocks", "six"])
    assert bad.exit_code == 2 and "--blocks" in bad.output  # a usage error, before any import


def test_row_tables_keep_their_rows_whole() -> None:
    # ParkingSlots and the mesh's PartTable are parallel arrays: a subset or a concatenation must
    # move every field's rows together, or a car would park at one slot facing another's heading.
    slots = ParkingSlots(
        xy=np.arange(8.0).reshape(4, 2), yaw=np.arange(4.0), segment=np.arange(4), side=-np.ones(4)
    )
    kept = slots.take(np.array([True, False, True, False]))
    assert len(kept) == 2 and kept.yaw.tolist() == [0.0, 2.0] and kept.segment.tolist() == [0, 2]
    assert kept.xy.tolist() == [[0.0, 1.0], [4.0, 5.0]] and kept.side.tolist() == [-1.0, -1.0]
    both = ParkingSlots.concatenate([kept, slots.take([3])])
    assert len(both) == 3 and both.segment.tolist() == [0, 2, 3] and both.xy[-1].tolist() == [6.0, 7.0]
