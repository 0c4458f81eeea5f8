"""KITTI raw recordings (synced drives).

Layout (``root`` is a folder of date folders, or one date folder)::

    <date>/calib_velo_to_cam.txt         R, T: Velodyne -> camera 0 (unrectified)
    <date>/calib_cam_to_cam.txt          R_rect_00, P_rect_02 (, S_rect_02)
    <date>/calib_imu_to_velo.txt         R, T: IMU -> Velodyne (optional; for OXTS poses)
    <date>/<date>_drive_NNNN_sync/image_02/data/NNNNNNNNNN.png
    <date>/<date>_drive_NNNN_sync/velodyne_points/data/NNNNNNNNNN.bin (+ ../timestamps.txt)
    <date>/<date>_drive_NNNN_sync/oxts/data/NNNNNNNNNN.txt          (optional)

Poses come from OXTS as in the KITTI raw devkit (Mercator projection; roll, pitch, yaw give the
IMU orientation), turned into LiDAR poses with ``calib_imu_to_velo.txt``. All drives under one
root share ONE world frame, so drives over the same streets can be compared (cross-drive
evaluation): one Mercator scale and one origin for the whole root, both from the reference record
(the first OXTS record of the lexicographically first drive with OXTS). The frame's axes are
east, north, up (metres); its origin is the reference record's position. The devkit instead
starts every drive at its own first pose, which makes drives incomparable.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from liploc.datasets.calibration_files import (
    homogeneous,
    read_calibration_file,
    read_number_table,
    rigid_transform,
    timestamps_by_frame,
)
from liploc.datasets.frame import Calibration
from liploc.datasets.paired_reader import PairedFramesReader, SequenceFiles, chosen_camera
from liploc.errors import DataError

CAMERAS = ("image_02", "image_03")
"""Colour cameras of a raw drive; ``image_0N`` goes with ``P_rect_0N``."""
EARTH_RADIUS_M = 6378137.0
_KITTI360_FOLDERS = {"data_3d_raw", "data_2d_raw"}


def _is_drive(folder: Path) -> bool:
    if not (folder.is_dir() and "_drive_" in folder.name and folder.name.endswith("_sync")):
        return False
    if folder.parent.name in _KITTI360_FOLDERS:  # KITTI-360 drives share the naming
        return False
    has_data = (folder / "velodyne_points").is_dir() or any((folder / cam).is_dir() for cam in CAMERAS)
    has_calib = (folder.parent / "calib_velo_to_cam.txt").is_file()
    return has_data and (has_calib or (folder / "image_02").is_dir())


def _drives_in(folder: Path) -> list[Path]:
    return [d for d in folder.iterdir() if _is_drive(d)] if folder.is_dir() else []


def find_drives(root: Path) -> dict[str, Path]:
    """Drive folders by name, whether ``root`` is a date folder or holds date folders."""
    drives = _drives_in(root)
    if not drives and root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and not child.name.startswith("."):
                drives += _drives_in(child)
    return {d.name: d for d in drives}


def oxts_to_imu_poses(
    oxts: np.ndarray, reference_lat_deg: float | None = None, origin: np.ndarray | None = None
) -> np.ndarray:
    """(N, 4, 4) IMU poses in a metric east-north-up frame from OXTS rows (KITTI raw devkit).

    ``oxts[:, :6]`` are latitude, longitude (degrees), altitude (m), roll, pitch, yaw (rad). The
    Mercator scale is ``cos(reference_lat_deg)`` (default: the first row's latitude, as the
    devkit does per drive); ``origin`` (3,) is subtracted from the Mercator position (default:
    none). Give both to put several drives in one frame.
    """
    lat, lon, alt, roll, pitch, yaw = (oxts[:, k] for k in range(6))
    scale = np.cos(np.deg2rad(lat[0] if reference_lat_deg is None else reference_lat_deg))
    translation = np.stack(
        [
            scale * EARTH_RADIUS_M * np.deg2rad(lon),
            scale * EARTH_RADIUS_M * np.log(np.tan(np.deg2rad(90.0 + lat) / 2.0)),
            alt,
        ],
        axis=1,
    )
    poses = np.tile(np.eye(4), (len(oxts), 1, 1))
    poses[:, :3, :3] = _rot_z(yaw) @ _rot_y(pitch) @ _rot_x(roll)
    poses[:, :3, 3] = translation - (0.0 if origin is None else np.asarray(origin, dtype=np.float64))
    return poses


def mercator_position(lat_deg: float, lon_deg: float, alt_m: float, reference_lat_deg: float) -> np.ndarray:
    """(3,) Mercator x, y (scaled by ``cos(reference_lat_deg)``) and altitude of one position."""
    row = np.zeros((1, 30))
    row[0, :3] = lat_deg, lon_deg, alt_m
    return oxts_to_imu_poses(row, reference_lat_deg)[0, :3, 3]


def read_oxts_file(path: Path) -> np.ndarray:
    """The 30 numbers of a KITTI raw OXTS file (one line: lat, lon, alt, roll, pitch, yaw, ...)."""
    rows = read_number_table(path, 30, "OXTS file")
    if len(rows) != 1:
        raise DataError(path, f"{len(rows)} lines, expected one line of 30 OXTS values")
    return rows[0]


def _rot_x(a: np.ndarray) -> np.ndarray:
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([o, z, z, z, c, -s, z, s, c], axis=-1).reshape(-1, 3, 3)


def _rot_y(a: np.ndarray) -> np.ndarray:
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([c, z, s, z, o, z, -s, z, c], axis=-1).reshape(-1, 3, 3)


def _rot_z(a: np.ndarray) -> np.ndarray:
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([c, -s, z, s, c, z, z, z, o], axis=-1).reshape(-1, 3, 3)


class KittiRawReader(PairedFramesReader):
    """KITTI raw synced drives: Velodyne scans with ``image_02``, poses from OXTS when present."""

    name: ClassVar[str] = "kitti_raw"
    description: ClassVar[str] = "KITTI raw (<date>/<date>_drive_NNNN_sync, calib_*.txt per date)"

    def __init__(self, root: str | Path, camera: str = "image_02") -> None:
        super().__init__(root)
        self.camera = chosen_camera(self.root, camera, CAMERAS, "KITTI raw")
        self._drives = find_drives(self.root)
        self._reference: tuple[float, np.ndarray, Path] | None = None

    @classmethod
    def detect(cls, root: Path) -> bool:
        return bool(find_drives(root))

    def _find_sequences(self) -> list[str]:
        return list(self._drives)

    def drive_folder(self, sequence: str) -> Path:
        """``<date>/<sequence>``."""
        self._check_sequence(sequence)
        return self._drives[sequence]

    def date_folder(self, sequence: str) -> Path:
        """The date folder holding the calibration files of ``sequence``."""
        return self.drive_folder(sequence).parent

    def scan_folder(self, sequence: str) -> Path:
        return self.drive_folder(sequence) / "velodyne_points" / "data"

    def image_folder(self, sequence: str) -> Path:
        return self.drive_folder(sequence) / self.camera / "data"

    def world_frame(self, sequence: str) -> str:
        """All drives of the root share one Mercator frame (see :meth:`mercator_reference`)."""
        return "Mercator (one scale and origin for the root)"

    def mercator_reference(self) -> tuple[float, np.ndarray, Path]:
        """(reference latitude in degrees, (3,) origin, OXTS file) of the root's world frame.

        The first OXTS record (lowest file name) of the first drive (by name) that has any; the
        same for every drive of the root whatever is read first. A DataError when no drive has OXTS.
        """
        if self._reference is None:
            for name in self.sequences():
                folder = self.oxts_folder(name)
                records = sorted(folder.glob("*.txt")) if folder.is_dir() else []
                if records:
                    row = read_oxts_file(records[0])
                    lat = float(row[0])
                    self._reference = (lat, mercator_position(row[0], row[1], row[2], lat), records[0])
                    break
            else:
                raise DataError(self.root, "no drive has OXTS records to fix the world frame")
        return self._reference

    def oxts_folder(self, sequence: str) -> Path:
        """``<drive>/oxts/data`` (it may not exist)."""
        return self.drive_folder(sequence) / "oxts" / "data"

    def _read_calibration(self, sequence: str, files: SequenceFiles) -> Calibration:
        date = self.date_folder(sequence)
        velo_to_cam = read_calibration_file(date / "calib_velo_to_cam.txt")
        cam_to_cam = read_calibration_file(date / "calib_cam_to_cam.txt")
        T_cam0_velo = rigid_transform(velo_to_cam.matrix("R", (3, 3)), velo_to_cam.matrix("T", (3,)))
        T_cam_lidar = homogeneous(cam_to_cam.matrix("R_rect_00", (3, 3))) @ T_cam0_velo
        P = cam_to_cam.matrix(f"P_rect_{self.camera[-2:]}", (3, 4))
        return Calibration(T_cam_lidar=T_cam_lidar, P=P, image_size=self._first_image_size(files))

    def _pose_source(self, sequence: str) -> str:
        folder = self.oxts_folder(sequence)
        return f"OXTS ({folder})" if folder.is_dir() else f"OXTS ({folder} missing)"

    def _T_velo_imu(self, sequence: str) -> np.ndarray:
        path = self.date_folder(sequence) / "calib_imu_to_velo.txt"
        if not path.is_file():
            self.report(f"{path}: missing; LiDAR poses of {sequence} are the OXTS/IMU poses")
            return np.eye(4)
        calib = read_calibration_file(path)
        return rigid_transform(calib.matrix("R", (3, 3)), calib.matrix("T", (3,)))

    def _poses(self, sequence: str, files: SequenceFiles, calib: Calibration) -> dict[int, np.ndarray]:
        folder = self.oxts_folder(sequence)
        with_oxts = [i for i in files.paired if (folder / f"{files.scans[i].stem}.txt").is_file()]
        if not with_oxts:
            return {}
        oxts = np.stack([read_oxts_file(folder / f"{files.scans[i].stem}.txt") for i in with_oxts])
        reference_lat, origin, _ = self.mercator_reference()
        T_world_imu = oxts_to_imu_poses(oxts, reference_lat, origin)
        T_world_lidar = T_world_imu @ np.linalg.inv(self._T_velo_imu(sequence))
        return dict(zip(with_oxts, T_world_lidar, strict=True))

    def _timestamps(self, sequence: str, files: SequenceFiles) -> dict[int, float]:
        path = self.scan_folder(sequence).parent / "timestamps.txt"
        if not path.is_file():
            return {}
        return timestamps_by_frame(path, files.paired, self.report)
