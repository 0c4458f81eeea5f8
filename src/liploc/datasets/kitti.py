"""KITTI odometry and SemanticKITTI folders.

Layout (``root`` may also be the folder holding ``dataset/``)::

    sequences/NN/{image_2/NNNNNN.png, velodyne/NNNNNN.bin, calib.txt, times.txt}
    poses/NN.txt                  KITTI odometry ground truth (sequences 00-10 only)
    sequences/NN/poses.txt        SemanticKITTI (all sequences 00-21)

Pose files hold camera-0 poses in camera 0's first frame (x right, y down, z forward), one line
per frame. The LiDAR pose in a z-up world whose origin is the first LiDAR pose is
``inv(Tr) @ P_i @ Tr`` with ``Tr`` (Velodyne -> camera 0) from ``calib.txt``.

World frames: each sequence is its own world (KITTI's poses start at the identity in every
sequence; positions of two sequences cannot be compared). A folder written by ``liploc synth
--pose-frame town`` says in its ``synth.json`` that all its sequences share the town's frame.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from liploc.datasets.calibration_files import (
    homogeneous,
    read_calibration_file,
    read_number_table,
)
from liploc.datasets.frame import Calibration
from liploc.datasets.paired_reader import PairedFramesReader, SequenceFiles, chosen_camera
from liploc.errors import DataError

SYNTH_MANIFEST = "synth.json"
"""Manifest of a ``liploc synth`` folder; its ``pose_frame`` says whether sequences share a world."""
SHARED_POSE_FRAMES = {"town": "town frame (synth.json)"}
"""``pose_frame`` values of a synth manifest under which all sequences share one world."""

CAMERAS = ("image_0", "image_1", "image_2", "image_3")
"""Camera folders of a KITTI odometry sequence; ``image_N`` goes with projection matrix ``PN``."""


def odometry_base(root: Path) -> Path:
    """The folder holding ``sequences/``: ``root`` itself or ``root/dataset`` (as KITTI unpacks)."""
    if not (root / "sequences").is_dir() and (root / "dataset" / "sequences").is_dir():
        return root / "dataset"
    return root


def _sequence_dirs(root: Path) -> list[Path]:
    folder = odometry_base(root) / "sequences"
    if not folder.is_dir():
        return []
    return [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]


def _looks_like_sequence(folder: Path) -> bool:
    return (folder / "velodyne").is_dir() or any((folder / cam).is_dir() for cam in CAMERAS)


def camera_poses_to_lidar(camera_poses: np.ndarray, T_cam_lidar: np.ndarray) -> np.ndarray:
    """LiDAR poses in a z-up world from KITTI camera-0 poses in a y-down camera world.

    Args:
        camera_poses: (N, 4, 4) poses of camera 0 in camera 0's first frame.
        T_cam_lidar: 4x4 ``Tr`` (Velodyne -> camera 0).

    Returns:
        (N, 4, 4) ``inv(Tr) @ P_i @ Tr``: the LiDAR pose in the world whose axes are those of the
        LiDAR when camera 0 was at the world origin (the first LiDAR pose for the usual
        ``P_0 = I``): x forward, y left, z up.
    """
    return np.linalg.inv(T_cam_lidar) @ camera_poses @ T_cam_lidar


def read_camera_poses(path: Path) -> np.ndarray:
    """(N, 4, 4) poses from a KITTI pose file (12 numbers per line: the 3x4 ``[R|t]``, row-major)."""
    rows = read_number_table(path, 12, "pose file")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :] = rows.reshape(-1, 3, 4)
    return poses


class KittiOdometryReader(PairedFramesReader):
    """KITTI odometry: ``sequences/NN/{velodyne, image_2, calib.txt, times.txt}`` + ``poses/NN.txt``.

    Sequences without ``poses/NN.txt`` (11-21 in the download) give frames with ``pose=None``.
    """

    name: ClassVar[str] = "kitti"
    description: ClassVar[str] = "KITTI odometry (sequences/NN/velodyne + image_2, poses/NN.txt)"
    _semantic_first: ClassVar[bool] = False

    def __init__(self, root: str | Path, camera: str = "image_2") -> None:
        super().__init__(root)
        self.camera = chosen_camera(self.root, camera, CAMERAS, "KITTI")
        self.base = odometry_base(self.root)

    @classmethod
    def detect(cls, root: Path) -> bool:
        dirs = [d for d in _sequence_dirs(root) if _looks_like_sequence(d)]
        # A folder with SemanticKITTI pose files is read as semantickitti (it has poses for 11-21).
        return bool(dirs) and not any((d / "poses.txt").is_file() for d in dirs)

    def _find_sequences(self) -> list[str]:
        return [d.name for d in _sequence_dirs(self.root) if _looks_like_sequence(d)]

    def world_frame(self, sequence: str) -> str:
        """The shared town frame of a ``liploc synth --pose-frame town`` folder, else the sequence's own."""
        shared = self._shared_pose_frame()
        return shared if shared is not None else super().world_frame(sequence)

    def _shared_pose_frame(self) -> str | None:
        for folder in dict.fromkeys((self.root, self.base)):
            path = folder / SYNTH_MANIFEST
            if not path.is_file():
                continue
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise DataError(path, f"cannot read the synth manifest ({err})") from None
            frame = manifest.get("pose_frame") if isinstance(manifest, dict) else None
            return SHARED_POSE_FRAMES.get(frame) if isinstance(frame, str) else None
        return None

    def sequence_folder(self, sequence: str) -> Path:
        """``sequences/<sequence>``."""
        return self.base / "sequences" / sequence

    def scan_folder(self, sequence: str) -> Path:
        return self.sequence_folder(sequence) / "velodyne"

    def image_folder(self, sequence: str) -> Path:
        return self.sequence_folder(sequence) / self.camera

    def pose_file_candidates(self, sequence: str) -> list[Path]:
        """Pose files looked for, in order of preference."""
        odometry = self.base / "poses" / f"{sequence}.txt"
        semantic = self.sequence_folder(sequence) / "poses.txt"
        return [semantic, odometry] if self._semantic_first else [odometry, semantic]

    def pose_file(self, sequence: str) -> Path | None:
        """The pose file used for ``sequence``, or None when there is none."""
        return next((p for p in self.pose_file_candidates(sequence) if p.is_file()), None)

    def _read_calibration(self, sequence: str, files: SequenceFiles) -> Calibration:
        calib = read_calibration_file(self.sequence_folder(sequence) / "calib.txt")
        tr_key = "Tr" if calib.has("Tr") or not calib.has("Tr_velo_to_cam") else "Tr_velo_to_cam"
        T_cam_lidar = homogeneous(calib.matrix(tr_key, (3, 4)))
        P = calib.matrix(f"P{self.camera[-1]}", (3, 4))
        return Calibration(T_cam_lidar=T_cam_lidar, P=P, image_size=self._first_image_size(files))

    def _pose_source(self, sequence: str) -> str:
        path = self.pose_file(sequence)
        if path is None:
            looked = " or ".join(str(p) for p in self.pose_file_candidates(sequence))
            return f"any pose file (no {looked})"
        return str(path)

    def _poses(self, sequence: str, files: SequenceFiles, calib: Calibration) -> dict[int, np.ndarray]:
        path = self.pose_file(sequence)
        if path is None:
            return {}
        camera_poses = read_camera_poses(path)
        if len(camera_poses) != files.n_numbers:
            where = (
                f"line {len(camera_poses) + 1} onward missing"
                if len(camera_poses) < files.n_numbers
                else f"lines {files.n_numbers + 1}-{len(camera_poses)} extra"
            )
            raise DataError(
                path,
                f"{len(camera_poses)} pose lines but the sequence has {files.n_numbers} frames "
                f"(numbered 0-{files.n_numbers - 1}; one line per frame expected, {where})",
            )
        lidar_poses = camera_poses_to_lidar(camera_poses, calib.T_cam_lidar)
        return {i: lidar_poses[i] for i in files.paired}

    def _timestamps(self, sequence: str, files: SequenceFiles) -> dict[int, float]:
        path = self.sequence_folder(sequence) / "times.txt"
        if not path.is_file():
            return {}
        times = read_number_table(path, 1, "times file")[:, 0]
        if len(times) != files.n_numbers:
            # Timestamps are not essential: report and go on without them.
            self.report(
                f"{path}: {len(times)} lines but the sequence has {files.n_numbers} frames; times ignored"
            )
            return {}
        return {i: float(times[i]) for i in files.paired}


class SemanticKittiReader(KittiOdometryReader):
    """SemanticKITTI: KITTI odometry with ``sequences/NN/poses.txt`` (poses for all 22 sequences)."""

    name: ClassVar[str] = "semantickitti"
    description: ClassVar[str] = "SemanticKITTI (sequences/NN/poses.txt, velodyne, image_2)"
    _semantic_first: ClassVar[bool] = True

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any((d / "poses.txt").is_file() and _looks_like_sequence(d) for d in _sequence_dirs(root))
