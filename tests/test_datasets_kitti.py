"""KITTI odometry and SemanticKITTI readers: layout, pairing, calibration and pose conventions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import IDEAL_TR, default_projection, forward_camera_poses, write_kitti_odometry

from liploc.datasets import detect_layout, load_image, load_scan, open_dataset
from liploc.datasets.calibration_files import read_calibration_file


def _yaw_about_z(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_about_camera_y(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def test_reads_sequences_frames_calibration_and_times(tmp_path: Path) -> None:
    write_kitti_odometry(tmp_path, "01", n_frames=3, image_size=(40, 20))
    write_kitti_odometry(tmp_path, "00", n_frames=4, image_size=(40, 20))
    assert detect_layout(tmp_path) == "kitti"
    reader = open_dataset(tmp_path)
    assert reader.name == "kitti"
    assert reader.sequences() == ["00", "01"]
    frames = reader.frames("00")
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert frames[2].scan_path.name == "000002.bin" and frames[2].image_path.name == "000002.png"
    assert all(f.sequence == "00" for f in frames)
    np.testing.assert_allclose(frames[0].calib.T_cam_lidar, IDEAL_TR)
    np.testing.assert_allclose(frames[0].calib.P, default_projection((40, 20), baseline_px=4.5))
    assert frames[0].calib.image_size == (40, 20)
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert load_scan(frames[1].scan_path).shape == (64, 4)
    assert load_image(frames[1].image_path).shape == (20, 40, 3)
    assert reader.problems == []


def test_forward_motion_in_camera_frame_is_lidar_x(tmp_path: Path) -> None:
    # Camera 0 moves 10 m along its z (forward): the LiDAR must move 10 m along its x, height 0.
    write_kitti_odometry(tmp_path, n_frames=2, camera_poses=forward_camera_poses(2, step_m=10.0))
    frames = open_dataset(tmp_path).frames("00")
    np.testing.assert_allclose(frames[0].pose, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(frames[1].pose[:3, 3], [10.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(frames[1].pose[:3, :3], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(frames[1].position_xy, [10.0, 0.0], atol=1e-9)


def test_left_turn_in_camera_frame_is_positive_yaw_about_z(tmp_path: Path) -> None:
    # A left turn seen from above: rotation about the camera's (downward) y by -theta. The camera
    # then drives 5 m along its new forward axis. In the z-up world that is a yaw of +theta and a
    # move of 5 m towards (cos theta, sin theta), at unchanged height.
    theta = np.deg2rad(30.0)
    turned = np.eye(4)
    turned[:3, :3] = _rot_about_camera_y(-theta)
    turned[:3, 3] = turned[:3, :3] @ np.array([0.0, 0.0, 5.0])
    write_kitti_odometry(tmp_path, n_frames=2, camera_poses=np.stack([np.eye(4), turned]))
    pose = open_dataset(tmp_path).frames("00")[1].pose
    np.testing.assert_allclose(pose[:3, :3], _yaw_about_z(theta), atol=1e-12)
    # The LiDAR sits 0.27 m behind camera 0, so its own path is the camera's plus a lever arm.
    lever = np.array([-0.27, 0.0, 0.0])
    expected = 5.0 * np.array([np.cos(theta), np.sin(theta), 0.0]) + _yaw_about_z(theta) @ lever - lever
    np.testing.assert_allclose(pose[:3, 3], expected, atol=1e-9)
    assert pose[2, 3] == pytest.approx(0.0, abs=1e-12)


def test_height_change_in_camera_frame_is_lidar_z(tmp_path: Path) -> None:
    # Camera y points down: a camera moving to y = -3 has climbed 3 m.
    up = np.eye(4)
    up[1, 3] = -3.0
    write_kitti_odometry(tmp_path, n_frames=2, camera_poses=np.stack([np.eye(4), up]))
    pose = open_dataset(tmp_path).frames("00")[1].pose
    np.testing.assert_allclose(pose[:3, 3], [0.0, 0.0, 3.0], atol=1e-9)


def test_missing_pose_file_gives_none_and_is_reported(tmp_path: Path) -> None:
    write_kitti_odometry(tmp_path, "11", n_frames=3, pose_file=None)
    reader = open_dataset(tmp_path)
    frames = reader.frames("11")
    assert len(frames) == 3 and all(f.pose is None for f in frames)
    assert np.isnan(frames[0].position_xy).all()
    assert any("3 of 3 frames have no pose" in p and "poses/11.txt" in p for p in reader.problems)


def test_semantickitti_poses_in_sequence_folder(tmp_path: Path) -> None:
    write_kitti_odometry(tmp_path, "13", n_frames=3, pose_file="semantic")
    assert detect_layout(tmp_path) == "semantickitti"
    reader = open_dataset(tmp_path)
    assert reader.name == "semantickitti"
    frames = reader.frames("13")
    np.testing.assert_allclose(frames[2].pose[:3, 3], [2.0, 0.0, 0.0], atol=1e-9)
    assert reader.problems == []


def test_semantickitti_layout_reads_odometry_poses_when_sequence_has_none(tmp_path: Path) -> None:
    write_kitti_odometry(tmp_path, "13", n_frames=2, pose_file="semantic")
    write_kitti_odometry(tmp_path, "00", n_frames=2, pose_file="odometry")
    reader = open_dataset(tmp_path)
    assert reader.name == "semantickitti"
    assert all(f.pose is not None for f in reader.frames("00"))


def test_dataset_subfolder_and_other_camera(tmp_path: Path) -> None:
    # KITTI unpacks into dataset/sequences; image_3 goes with P3.
    seq = write_kitti_odometry(tmp_path / "dataset", n_frames=2)
    (seq / "image_2").rename(seq / "image_3")
    assert detect_layout(tmp_path) == "kitti"
    reader = open_dataset(tmp_path, "kitti")
    assert reader.frames("00") == []
    assert any("image_2" in p and "missing" in p for p in reader.problems)
    from liploc.datasets.kitti import KittiOdometryReader

    right = KittiOdometryReader(tmp_path, camera="image_3")
    frames = right.frames("00")
    assert [f.index for f in frames] == [0, 1]
    calib = read_calibration_file(seq / "calib.txt")
    np.testing.assert_allclose(frames[0].calib.P, calib.matrix("P3", (3, 4)))


def test_real_sequence_00_poses_and_calibration(tmp_path: Path, shared_data: Path) -> None:
    """Frames built from the real first 200 poses of sequence 00 and its calibration file."""
    source = shared_data / "kitti-odometry-poses"
    n = 200
    lines = (source / "00.txt").read_text().splitlines()[:n]
    camera_poses = np.array(
        [np.vstack([np.array(line.split(), float).reshape(3, 4), [0, 0, 0, 1]]) for line in lines]
    )
    calib_text = (source / "00_calib.txt").read_text()
    write_kitti_odometry(
        tmp_path, "00", n_frames=n, camera_poses=camera_poses, calib_text=calib_text, n_points=4
    )
    frames = open_dataset(tmp_path).frames("00")
    assert len(frames) == n
    np.testing.assert_allclose(frames[0].pose, np.eye(4), atol=1e-6)
    x, y = frames[100].position_xy
    assert x == pytest.approx(84.3, abs=0.1) and y == pytest.approx(5.0, abs=0.1)
    heights = np.array([f.pose[2, 3] for f in frames])
    assert np.abs(heights).max() < 5.0  # the car stays near the ground plane, z is up
    calib = read_calibration_file(source / "00_calib.txt")
    np.testing.assert_allclose(frames[0].calib.T_cam_lidar[:3, :], calib.matrix("Tr", (3, 4)))
    np.testing.assert_allclose(frames[0].calib.T_cam_lidar[3], [0, 0, 0, 1])
    np.testing.assert_allclose(frames[0].calib.P, calib.matrix("P2", (3, 4)))
    # Every pose stays a rigid transform.
    for f in frames[::50]:
        np.testing.assert_allclose(f.pose[:3, :3] @ f.pose[:3, :3].T, np.eye(3), atol=1e-5)
