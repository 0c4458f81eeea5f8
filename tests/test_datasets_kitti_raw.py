"""KITTI raw reader: the real sample, date-folder roots, OXTS poses and calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import oxts_row, write_kitti_raw

from liploc.datasets import detect_layout, load_image, load_scan, open_dataset
from liploc.datasets.calibration_files import homogeneous, read_calibration_file, rigid_transform

EARTH_RADIUS_M = 6378137.0
SAMPLE_DRIVE = "2011_09_26_drive_0000_sync"


@pytest.mark.parametrize("sub", ["", "2011_09_26"])
def test_real_sample_frames_and_calibration(shared_data: Path, sub: str) -> None:
    root = shared_data / "kitti-raw-sample" / sub
    assert detect_layout(root) == "kitti_raw"
    reader = open_dataset(root)
    assert reader.sequences() == [SAMPLE_DRIVE]
    frames = reader.frames(SAMPLE_DRIVE)
    assert [f.index for f in frames] == [0, 11, 22, 33, 44, 55, 66, 77]
    assert all(f.pose is None and f.timestamp is None for f in frames)
    assert any("8 of 8 frames have no pose" in p for p in reader.problems)

    date = shared_data / "kitti-raw-sample" / "2011_09_26"
    velo = read_calibration_file(date / "calib_velo_to_cam.txt")
    cam = read_calibration_file(date / "calib_cam_to_cam.txt")
    expected = homogeneous(cam.matrix("R_rect_00", (3, 3))) @ rigid_transform(
        velo.matrix("R", (3, 3)), velo.matrix("T", (3,))
    )
    calib = frames[0].calib
    np.testing.assert_allclose(calib.T_cam_lidar, expected)
    np.testing.assert_allclose(calib.P, cam.matrix("P_rect_02", (3, 4)))
    assert calib.P[0, 0] == pytest.approx(721.5377)
    assert calib.image_size == (1242, 375)


def test_real_sample_points_project_into_the_image(shared_data: Path) -> None:
    frame = open_dataset(shared_data / "kitti-raw-sample").frames(SAMPLE_DRIVE)[0]
    points = load_scan(frame.scan_path)
    image = load_image(frame.image_path)
    assert image.shape == (375, 1242, 3) and image.dtype == np.uint8
    assert points.dtype == np.float32 and points.shape[1] == 4 and len(points) > 10_000
    # Points 10+ m ahead, within +-27 degrees of azimuth and +-1.5 m of the sensor's height lie
    # well inside the camera's field of view (about +-40 degrees by +-14 degrees).
    ahead = points[
        (points[:, 0] > 10) & (np.abs(points[:, 1]) < points[:, 0] * 0.5) & (np.abs(points[:, 2]) < 1.5)
    ]
    uvw = (frame.calib.lidar_to_image @ np.hstack([ahead[:, :3], np.ones((len(ahead), 1))]).T).T
    u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
    inside = (uvw[:, 2] > 0) & (u >= 0) & (u < 1242) & (v >= 0) & (v < 375)
    assert len(ahead) > 1000 and inside.mean() > 0.99


def _east_step_deg(lat: float, metres: float) -> float:
    return np.rad2deg(metres / (np.cos(np.deg2rad(lat)) * EARTH_RADIUS_M))


def test_oxts_poses_are_east_north_up_from_the_reference_record(tmp_path: Path) -> None:
    lat, lon = 49.0, 8.4
    north = np.pi / 2
    dlat = np.rad2deg(10.0 / EARTH_RADIUS_M)
    oxts = {
        3: oxts_row(lat, lon, 110.0, yaw=north),  # facing north
        4: oxts_row(lat + dlat, lon, 110.0, yaw=north),  # 10 m further north
        5: oxts_row(lat + dlat, lon, 112.0, yaw=north + np.deg2rad(30)),  # turned left, 2 m higher
    }
    T_velo_imu = rigid_transform(np.eye(3), np.array([-0.81, 0.32, -0.80]))
    write_kitti_raw(tmp_path, frame_numbers=[3, 4, 5, 6], oxts=oxts, T_velo_imu=T_velo_imu)
    reader = open_dataset(tmp_path / "2011_09_26")
    drive = reader.sequences()[0]
    frames = reader.frames(drive)
    # World axes east, north, up; origin the first IMU record. The LiDAR sits 0.81 m ahead,
    # 0.32 m right and 0.80 m above the IMU; facing north, ahead is +y and right is +x.
    np.testing.assert_allclose(frames[0].pose[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-9)
    np.testing.assert_allclose(frames[0].pose[:3, 3], [0.32, 0.81, 0.80], atol=1e-6)
    np.testing.assert_allclose(frames[1].pose[:3, 3], [0.32, 10.81, 0.80], atol=0.01)  # 10 m north
    relative = np.linalg.inv(frames[0].pose) @ frames[2].pose
    c, s = np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))
    np.testing.assert_allclose(relative[:3, :3], [[c, -s, 0], [s, c, 0], [0, 0, 1]], atol=1e-9)
    assert relative[2, 3] == pytest.approx(2.0, abs=1e-6)
    assert frames[3].pose is None
    assert any("1 of 4 frames have no pose" in p and "frames 6" in p for p in reader.problems)
    assert [f.timestamp for f in frames[:2]] == pytest.approx([0.3, 0.4])


def test_drives_passing_one_point_in_opposite_directions_share_its_position(tmp_path: Path) -> None:
    lat, lon = 48.98, 8.39
    east, west = 0.0, np.pi
    step = _east_step_deg(lat, 10.0)
    # Drive 1 heads east from lon for 50 m; drive 2 (a later drive, another date) starts 80 m east
    # and heads west, passing drive 1's frame 3 (30 m east) at its own frame 5.
    write_kitti_raw(
        tmp_path,
        "2011_09_26",
        1,
        range(6),
        oxts={i: oxts_row(lat, lon + i * step, 110.0, yaw=east) for i in range(6)},
        T_velo_imu=rigid_transform(np.eye(3), np.array([0.0, 0.0, -0.8])),
    )
    write_kitti_raw(
        tmp_path,
        "2011_09_28",
        2,
        range(8),
        oxts={i: oxts_row(lat, lon + (8 - i) * step, 111.0, yaw=west) for i in range(8)},
        T_velo_imu=rigid_transform(np.eye(3), np.array([0.0, 0.0, -0.8])),
    )
    for first in ("2011_09_28_drive_0002_sync", "2011_09_26_drive_0001_sync"):  # any reading order
        reader = open_dataset(tmp_path)
        frames = {name: reader.frames(name) for name in sorted(reader.sequences(), key=lambda n: n != first)}
        one, two = frames["2011_09_26_drive_0001_sync"], frames["2011_09_28_drive_0002_sync"]
        np.testing.assert_allclose(one[3].position_xy, two[5].position_xy, atol=1e-6)
        np.testing.assert_allclose(one[3].position_xy, [30.0, 0.0], atol=0.01)
        np.testing.assert_allclose(two[0].position_xy, [80.0, 0.0], atol=0.01)
        assert one[0].world == two[0].world
        assert reader.world_frame(one[0].sequence) == reader.world_frame(two[0].sequence)
        assert reader.mercator_reference()[2].parent.parent.parent.name == "2011_09_26_drive_0001_sync"


def test_oxts_without_imu_calibration_uses_imu_pose_and_reports(tmp_path: Path) -> None:
    lat, lon = 49.0, 8.4
    oxts = {0: oxts_row(lat, lon, 100.0), 1: oxts_row(lat, lon + _east_step_deg(lat, 5.0), 100.0)}
    write_kitti_raw(tmp_path, frame_numbers=[0, 1], oxts=oxts)
    reader = open_dataset(tmp_path)
    frames = reader.frames(reader.sequences()[0])
    np.testing.assert_allclose(frames[1].pose[:3, 3], [5.0, 0.0, 0.0], atol=1e-6)
    assert any("calib_imu_to_velo.txt: missing" in p for p in reader.problems)


def test_several_dates_and_drives_sorted(tmp_path: Path) -> None:
    write_kitti_raw(tmp_path, "2011_09_29", 4, frame_numbers=[0, 1])
    write_kitti_raw(tmp_path, "2011_09_26", 9, frame_numbers=[0])
    write_kitti_raw(tmp_path, "2011_09_26", 2, frame_numbers=[0, 1, 2])
    reader = open_dataset(tmp_path)
    assert reader.name == "kitti_raw"
    assert reader.sequences() == [
        "2011_09_26_drive_0002_sync",
        "2011_09_26_drive_0009_sync",
        "2011_09_29_drive_0004_sync",
    ]
    assert len(reader.frames("2011_09_26_drive_0002_sync")) == 3
