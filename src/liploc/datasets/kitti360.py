"""KITTI-360 folders (perspective camera 0 and the Velodyne).

Layout::

    data_3d_raw/<drive>/velodyne_points/data/NNNNNNNNNN.bin   (+ velodyne_points/timestamps.txt)
    data_2d_raw/<drive>/image_00/data_rect/NNNNNNNNNN.png
    data_poses/<drive>/poses.txt        frame id + 3x4 IMU-to-world pose; only some frames
    calibration/calib_cam_to_velo.txt   3x4 camera 0 -> Velodyne (numbers only)
    calibration/calib_cam_to_pose.txt   image_00: 3x4 camera 0 -> IMU
    calibration/perspective.txt         S_rect_00, R_rect_00, P_rect_00

The LiDAR pose in the (z-up) world is ``T_world_imu @ T_imu_cam0 @ inv(T_velo_cam0)``.

World frame: all drives share one. The documentation describes ``poses.txt`` as the transform
from the IMU to "a world coordinate system", and the devkit's OXTS <-> pose conversions
(``convertOxtsToPose`` / ``convertPoseToOxts``) use one fixed Mercator origin for every sequence
(lat 48.9843445, lon 8.4295857, "lake in Karlsruhe"), so poses of different drives are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from liploc.datasets.calibration_files import (
    homogeneous,
    read_calibration_file,
    read_matrix_file,
    read_number_table,
    timestamps_by_frame,
)
from liploc.datasets.frame import Calibration
from liploc.datasets.paired_reader import PairedFramesReader, SequenceFiles
from liploc.errors import DataError

_DATA_FOLDERS = ("data_3d_raw", "data_2d_raw")


@dataclass(frozen=True, eq=False)
class Kitti360Calibration:
    """The KITTI-360 transforms the reader needs (one set for all drives).

    Attributes:
        T_velo_cam0: 4x4 camera 0 (unrectified) -> Velodyne.
        T_imu_cam0: 4x4 camera 0 (unrectified) -> GPS/IMU (the frame of ``poses.txt``).
        R_rect_00: 3x3 rectifying rotation of camera 0.
        P_rect_00: 3x4 projection of rectified camera 0.
        image_size: (width, height) of the rectified images (``S_rect_00``).
    """

    T_velo_cam0: np.ndarray
    T_imu_cam0: np.ndarray
    R_rect_00: np.ndarray
    P_rect_00: np.ndarray
    image_size: tuple[int, int]

    @property
    def T_imu_lidar(self) -> np.ndarray:
        """4x4 Velodyne -> IMU: ``T_imu_cam0 @ inv(T_velo_cam0)``."""
        return self.T_imu_cam0 @ np.linalg.inv(self.T_velo_cam0)

    @property
    def T_cam_lidar(self) -> np.ndarray:
        """4x4 Velodyne -> rectified camera 0: ``R_rect_00 @ inv(T_velo_cam0)``."""
        return homogeneous(self.R_rect_00) @ np.linalg.inv(self.T_velo_cam0)


def read_kitti360_calibration(folder: Path) -> Kitti360Calibration:
    """Read the three KITTI-360 calibration files of ``folder`` (DataError naming file and key)."""
    T_velo_cam0 = homogeneous(read_matrix_file(folder / "calib_cam_to_velo.txt", (3, 4)))
    cam_to_pose = read_calibration_file(folder / "calib_cam_to_pose.txt")
    T_imu_cam0 = homogeneous(cam_to_pose.matrix("image_00", (3, 4)))
    perspective = read_calibration_file(folder / "perspective.txt")
    width, height = perspective.matrix("S_rect_00", (2,))
    return Kitti360Calibration(
        T_velo_cam0=T_velo_cam0,
        T_imu_cam0=T_imu_cam0,
        R_rect_00=perspective.matrix("R_rect_00", (3, 3)),
        P_rect_00=perspective.matrix("P_rect_00", (3, 4)),
        image_size=(round(width), round(height)),
    )


def read_kitti360_poses(path: Path) -> dict[int, np.ndarray]:
    """4x4 IMU-to-world poses by frame id from a KITTI-360 ``poses.txt`` (13 columns per line)."""
    rows = read_number_table(path, 13, "pose file")
    poses: dict[int, np.ndarray] = {}
    for line, row in enumerate(rows, start=1):
        frame_id = int(row[0])
        if frame_id != row[0] or frame_id < 0:
            raise DataError(path, f"line {line}: first column {row[0]} is not a frame number")
        if frame_id in poses:
            raise DataError(path, f"line {line}: frame {frame_id} appears twice")
        poses[frame_id] = homogeneous(row[1:].reshape(3, 4))
    return poses


class Kitti360Reader(PairedFramesReader):
    """KITTI-360: Velodyne scans with perspective camera 0 (``image_00/data_rect``)."""

    name: ClassVar[str] = "kitti360"
    description: ClassVar[str] = "KITTI-360 (data_3d_raw, data_2d_raw/image_00, data_poses, calibration)"

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self._sensor_calibration: Kitti360Calibration | None = None

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any((root / folder).is_dir() for folder in _DATA_FOLDERS)

    def _find_sequences(self) -> list[str]:
        names: list[str] = []
        for name in _DATA_FOLDERS:
            folder = self.root / name
            if folder.is_dir():
                names += [d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
        return names

    def world_frame(self, sequence: str) -> str:
        """Every drive's poses are in the one KITTI-360 world frame (see the module docstring)."""
        return "KITTI-360 world (Mercator, devkit origin)"

    def scan_folder(self, sequence: str) -> Path:
        return self.root / "data_3d_raw" / sequence / "velodyne_points" / "data"

    def image_folder(self, sequence: str) -> Path:
        return self.root / "data_2d_raw" / sequence / "image_00" / "data_rect"

    def pose_file(self, sequence: str) -> Path:
        """``data_poses/<drive>/poses.txt`` (it may not exist)."""
        return self.root / "data_poses" / sequence / "poses.txt"

    def sensor_calibration(self) -> Kitti360Calibration:
        """The transforms of ``calibration/`` (read once)."""
        if self._sensor_calibration is None:
            self._sensor_calibration = read_kitti360_calibration(self.root / "calibration")
        return self._sensor_calibration

    def _read_calibration(self, sequence: str, files: SequenceFiles) -> Calibration:
        sensors = self.sensor_calibration()
        return Calibration(
            T_cam_lidar=sensors.T_cam_lidar, P=sensors.P_rect_00, image_size=sensors.image_size
        )

    def _pose_source(self, sequence: str) -> str:
        path = self.pose_file(sequence)
        return str(path) if path.is_file() else f"{path} (missing)"

    def _poses(self, sequence: str, files: SequenceFiles, calib: Calibration) -> dict[int, np.ndarray]:
        path = self.pose_file(sequence)
        if not path.is_file():
            return {}
        T_imu_lidar = self.sensor_calibration().T_imu_lidar
        imu_poses = read_kitti360_poses(path)
        return {i: imu_poses[i] @ T_imu_lidar for i in files.paired if i in imu_poses}

    def _timestamps(self, sequence: str, files: SequenceFiles) -> dict[int, float]:
        path = self.scan_folder(sequence).parent / "timestamps.txt"
        if not path.is_file():
            return {}
        return timestamps_by_frame(path, files.paired, self.report)
