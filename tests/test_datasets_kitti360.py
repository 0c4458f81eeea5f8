"""KITTI-360 reader: layout, poses for a subset of frames, calibration (real and synthetic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_kitti360

from liploc.datasets import detect_layout, open_dataset
from liploc.datasets.calibration_files import homogeneous, read_calibration_file, read_matrix_file


def test_reads_frames_poses_and_timestamps(tmp_path: Path) -> None:
    write_kitti360(tmp_path, "2013_05_28_drive_0003_sync", n_frames=2)
    write_kitti360(tmp_path, "2013_05_28_drive_0000_sync", n_frames=4)
    assert detect_layout(tmp_path) == "kitti360"
    reader = open_dataset(tmp_path)
    assert reader.sequences() == ["2013_05_28_drive_0000_sync", "2013_05_28_drive_0003_sync"]
    frames = reader.frames("2013_05_28_drive_0000_sync")
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert frames[1].image_path.name == "0000000001.png"
    assert frames[1].image_path.parent.parent.name == "image_00"
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    # IMU moves 1 m per frame along the world x; the LiDAR moves the same way.
    steps = np.diff([f.pose[:3, 3] for f in frames], axis=0)
    np.testing.assert_allclose(steps, [[1.0, 0.0, 0.0]] * 3, atol=1e-9)
    assert frames[0].calib.image_size == (32, 16)
    assert reader.problems == []


def test_frames_without_pose_are_none_and_reported(tmp_path: Path) -> None:
    drive = "2013_05_28_drive_0000_sync"
    write_kitti360(tmp_path, drive, n_frames=6, imu_poses={2: np.eye(4), 3: np.eye(4)})
    reader = open_dataset(tmp_path)
    frames = reader.frames(drive)
    assert [f.pose is not None for f in frames] == [False, False, True, True, False, False]
    assert any("4 of 6 frames have no pose" in p and "0-1, 4-5" in p for p in reader.problems)


def test_missing_pose_file_gives_no_poses(tmp_path: Path) -> None:
    drive = "2013_05_28_drive_0000_sync"
    write_kitti360(tmp_path, drive, n_frames=2, imu_poses={})
    reader = open_dataset(tmp_path)
    assert all(f.pose is None for f in reader.frames(drive))
    assert any("poses.txt (missing)" in p for p in reader.problems)


def test_real_calibration_velodyne_position_and_projection(tmp_path: Path, shared_data: Path) -> None:
    calib_dir = shared_data / "kitti360-calibration" / "calibration"
    drive = "2013_05_28_drive_0000_sync"
    write_kitti360(tmp_path, drive, n_frames=2, imu_poses={0: np.eye(4)}, calibration_from=calib_dir)
    frames = open_dataset(tmp_path).frames(drive)
    # With the IMU at the world origin the pose is the Velodyne in the IMU frame (z down):
    # 0.77 m ahead of and 0.84 m above the IMU origin, axes those of the IMU with y, z flipped.
    pose = frames[0].pose
    assert pose[0, 3] == pytest.approx(0.77, abs=0.01)
    assert -pose[2, 3] == pytest.approx(0.84, abs=0.01)
    np.testing.assert_allclose(np.abs(np.diag(pose[:3, :3])), [1, 1, 1], atol=0.01)
    assert pose[1, 1] < 0 and pose[2, 2] < 0
    assert frames[1].pose is None

    calib = frames[0].calib
    perspective = read_calibration_file(calib_dir / "perspective.txt")
    T_velo_cam0 = homogeneous(read_matrix_file(calib_dir / "calib_cam_to_velo.txt", (3, 4)))
    expected = homogeneous(perspective.matrix("R_rect_00", (3, 3))) @ np.linalg.inv(T_velo_cam0)
    np.testing.assert_allclose(calib.T_cam_lidar, expected)
    np.testing.assert_allclose(calib.P, perspective.matrix("P_rect_00", (3, 4)))
    assert calib.image_size == (1408, 376)
    # A point 10 m ahead of the Velodyne lands near the image centre column, in front of the camera.
    u, v, w = calib.lidar_to_image @ np.array([10.0, 0.0, 0.0, 1.0])
    assert w > 0 and 0 < u / w < 1408 and 0 < v / w < 376


def test_images_without_scans_are_reported(tmp_path: Path) -> None:
    drive = "2013_05_28_drive_0000_sync"
    write_kitti360(tmp_path, drive, n_frames=4, skip_scans=[1])
    reader = open_dataset(tmp_path)
    assert [f.index for f in reader.frames(drive)] == [0, 2, 3]
    assert any("0000000001.png" in p and "image has no scan" in p for p in reader.problems)
