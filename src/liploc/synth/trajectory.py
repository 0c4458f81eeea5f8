"""Reading a KITTI trajectory to drive along: camera-0 poses + calib.txt -> flat LiDAR poses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liploc.datasets.kitti import camera_poses_to_lidar, read_camera_poses
from liploc.errors import DataError
from liploc.synth.drives import pose_matrices
from liploc.synth.rig import LIDAR_HEIGHT_M, read_tr
from liploc.synth.streets import LANE_WIDTH_M


def default_calib_path(poses_path: Path) -> Path:
    """``00_calib.txt`` beside ``00.txt`` (the shared sample), else ``calib.txt`` in the same folder."""
    named = poses_path.with_name(f"{poses_path.stem}_calib.txt")
    return named if named.is_file() else poses_path.with_name("calib.txt")


def read_trajectory(poses_path: str | Path, calib_path: str | Path | None = None) -> np.ndarray:
    """(N, 4, 4) LiDAR poses (z up) of a KITTI odometry poses file, via ``Tr`` of its calib.txt."""
    poses_path = Path(poses_path)
    calib = Path(calib_path) if calib_path is not None else default_calib_path(poses_path)
    if not calib.is_file():
        raise DataError(
            calib, f"calibration of trajectory {poses_path.name} not found (give it with --trajectory-calib)"
        )
    camera_poses = read_camera_poses(poses_path)
    if len(camera_poses) < 2:
        raise DataError(poses_path, f"a trajectory needs at least 2 poses, found {len(camera_poses)}")
    return camera_poses_to_lidar(camera_poses, read_tr(calib))


def flatten(lidar_poses: np.ndarray) -> np.ndarray:
    """Poses on a flat road: same x, y and heading, LiDAR at its mounting height, no tilt.

    Synthetic towns are flat; the real trajectory's slopes (KITTI 00 climbs about 20 m) are dropped.
    """
    forward = lidar_poses[:, :3, 0]
    yaw = np.arctan2(forward[:, 1], forward[:, 0])
    n = len(lidar_poses)
    x, y = lidar_poses[:, 0, 3], lidar_poses[:, 1, 3]
    return pose_matrices(x, y, np.full(n, LIDAR_HEIGHT_M), yaw, np.zeros(n), np.zeros(n))


def street_centre_line(flat_poses: np.ndarray) -> np.ndarray:
    """(N, 2) street centre under a car that keeps to the right lane: half a lane to its left."""
    yaw = np.arctan2(flat_poses[:, 1, 0], flat_poses[:, 0, 0])
    left = np.column_stack([-np.sin(yaw), np.cos(yaw)])
    return flat_poses[:, :2, 3] + 0.5 * LANE_WIDTH_M * left
