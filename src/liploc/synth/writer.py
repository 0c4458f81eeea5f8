"""Writing drives in the KITTI odometry layout.

::

    sequences/NN/image_2/NNNNNN.png   left colour camera (8-bit RGB PNG)
    sequences/NN/velodyne/NNNNNN.bin  float32 x, y, z, intensity in the LiDAR frame
    sequences/NN/calib.txt            P0..P3 (rectified, for the written image size) and Tr
    sequences/NN/times.txt            seconds, one line per frame (10 Hz)
    poses/NN.txt                      camera-0 poses, 12 numbers per line (3x4, row-major)

Pose files hold ``P_i = Tr @ L_i @ inv(Tr)`` for LiDAR poses ``L_i``, so that a KITTI reader's
``inv(Tr) @ P_i @ Tr`` gives them back.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from liploc.synth.rig import SensorRig

FRAME_PERIOD_S = 0.1
"""KITTI records at 10 Hz."""


def sequence_dir(root: Path, name: str) -> Path:
    return root / "sequences" / name


def image_path(root: Path, name: str, index: int) -> Path:
    return sequence_dir(root, name) / "image_2" / f"{index:06d}.png"


def scan_path(root: Path, name: str, index: int) -> Path:
    return sequence_dir(root, name) / "velodyne" / f"{index:06d}.bin"


def camera_poses(lidar_poses: np.ndarray, T_cam_lidar: np.ndarray, pose_frame: str) -> np.ndarray:
    """(N, 4, 4) KITTI camera-0 poses of LiDAR poses in the town frame.

    ``pose_frame="first"`` makes the first pose the identity (as in KITTI downloads); ``"town"``
    keeps every sequence in the town's frame (rotated into camera axes), so that poses of different
    sequences compare directly.
    """
    poses = lidar_poses
    if pose_frame == "first":
        poses = np.linalg.inv(lidar_poses[0]) @ lidar_poses
    return T_cam_lidar @ poses @ np.linalg.inv(T_cam_lidar)


def pose_file_text(poses: np.ndarray) -> str:
    """KITTI pose lines (first three rows of each 4x4, row-major)."""
    return "".join(" ".join(f"{v:.9e}" for v in p[:3].reshape(-1)) + "\n" for p in poses)


def times_text(n_frames: int) -> str:
    """``times.txt`` content: 10 Hz timestamps from 0."""
    return "".join(f"{i * FRAME_PERIOD_S:.6e}\n" for i in range(n_frames))


def write_sequence_files(
    root: Path, name: str, rig: SensorRig, lidar_poses: np.ndarray, pose_frame: str
) -> None:
    """calib.txt, times.txt and the pose file of one sequence (frames are written one by one)."""
    folder = sequence_dir(root, name)
    (folder / "image_2").mkdir(parents=True, exist_ok=True)
    (folder / "velodyne").mkdir(parents=True, exist_ok=True)
    (root / "poses").mkdir(parents=True, exist_ok=True)
    (folder / "calib.txt").write_text(rig.calib_text(), encoding="utf-8")
    (folder / "times.txt").write_text(times_text(len(lidar_poses)), encoding="utf-8")
    poses = camera_poses(lidar_poses, rig.T_cam_lidar, pose_frame)
    (root / "poses" / f"{name}.txt").write_text(pose_file_text(poses), encoding="utf-8")


def write_frame(
    root: Path, name: str, index: int, image: np.ndarray, points: np.ndarray, compression: int
) -> None:
    """The PNG image and the .bin scan of one frame, each renamed into place once whole.

    The scan goes last, so a frame whose scan exists is complete (what a resumed run relies on).
    """
    image_file, scan_file = image_path(root, name, index), scan_path(root, name, index)
    image_part, scan_part = (
        image_file.with_name(image_file.name + ".part"),
        scan_file.with_name(scan_file.name + ".part"),
    )
    # OpenCV's PNG encoder: 20 % less CPU than Pillow's at the same zlib level, and the file the
    # same RGB image (it takes BGR).
    ok, png = cv2.imencode(
        ".png", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, compression]
    )
    if not ok:  # pragma: no cover - encoding an 8-bit array does not fail
        raise OSError(f"could not encode {image_file}")
    image_part.write_bytes(png.tobytes())
    os.replace(image_part, image_file)
    np.ascontiguousarray(points, dtype=np.float32).tofile(scan_part)
    os.replace(scan_part, scan_file)
