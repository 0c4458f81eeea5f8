"""Frame and Calibration: what every reader yields, whatever the folder layout."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FALLBACK_FRAME_RATE_HZ = 10.0  # KITTI's LiDAR rate, for sequences without timestamps


@dataclass(frozen=True, eq=False)
class Calibration:
    """Geometry linking the LiDAR to the camera image of a frame.

    A LiDAR point ``X`` (homogeneous, LiDAR frame) lands in the image at
    ``P @ T_cam_lidar @ X`` (homogeneous pixel coordinates).

    Attributes:
        T_cam_lidar: 4x4 rigid transform from the LiDAR frame to the rectified reference camera
            frame (x right, y down, z forward) in which ``P`` is expressed.
        P: 3x4 rectified projection matrix of the camera whose images the frame uses
            (KITTI ``P2`` for ``image_2``); it may hold a baseline offset in its last column.
        image_size: (width, height) of the images in pixels, or None when unknown.
    """

    T_cam_lidar: np.ndarray
    P: np.ndarray
    image_size: tuple[int, int] | None = None

    @property
    def K(self) -> np.ndarray:
        """3x3 intrinsic matrix (the left 3x3 block of ``P``)."""
        return self.P[:, :3]

    @property
    def lidar_to_image(self) -> np.ndarray:
        """3x4 matrix mapping homogeneous LiDAR points to homogeneous pixels."""
        return self.P @ self.T_cam_lidar

    @property
    def T_lidar_cam(self) -> np.ndarray:
        """4x4 transform from the rectified camera frame to the LiDAR frame."""
        return np.linalg.inv(self.T_cam_lidar)

    @classmethod
    def from_json(cls, camera: Mapping[str, Any]) -> Calibration:
        """The calibration of a JSON camera, ``{"P": 3x4, "T_cam_lidar": 4x4, "image_size":
        [width, height]}`` as a geometry-bridge map records it."""
        size = camera.get("image_size")
        return cls(
            T_cam_lidar=np.asarray(camera["T_cam_lidar"], dtype=np.float64),
            P=np.asarray(camera["P"], dtype=np.float64),
            image_size=None if size is None else (int(size[0]), int(size[1])),
        )


@dataclass(frozen=True, eq=False)
class Frame:
    """One synchronised camera image and LiDAR scan.

    Attributes:
        sequence: sequence or drive name as the dataset spells it (``"00"``,
            ``"2013_05_28_drive_0000_sync"``).
        index: frame number within the sequence (the number in the file names).
        image_path: camera image file.
        scan_path: LiDAR scan file (float32 x, y, z, intensity).
        pose: 4x4 pose of the LiDAR in a z-up world frame (metres), or None when the dataset has
            no pose for this frame (such frames are kept out of evaluation).
        calib: calibration of this frame.
        timestamp: seconds since the start of the sequence, when known.
        world: id of the world frame ``pose`` is expressed in (see
            :meth:`~liploc.datasets.base.DatasetReader.world_frame`). Positions of two frames
            can only be compared when their worlds are equal; None (frames made by hand) means
            the sequence's own frame.
    """

    sequence: str
    index: int
    image_path: Path
    scan_path: Path
    pose: np.ndarray | None
    calib: Calibration
    timestamp: float | None = None
    extras: dict = field(default_factory=dict)
    world: str | None = None

    @property
    def world_id(self) -> str:
        """The world frame of ``pose``: ``world``, or the sequence's own frame when unset."""
        return self.world if self.world is not None else f"{self.sequence} (own frame)"

    @property
    def position_xy(self) -> np.ndarray:
        """Ground-plane (x, y) position of the LiDAR in metres; NaN when there is no pose."""
        if self.pose is None:
            return np.array([np.nan, np.nan])
        return np.asarray(self.pose[:2, 3], dtype=np.float64)


def frame_times(frames: list[Frame]) -> np.ndarray:
    """Timestamps of frames; the frame index at 10 Hz where a sequence has none."""
    return np.array(
        [f.timestamp if f.timestamp is not None else f.index / FALLBACK_FRAME_RATE_HZ for f in frames],
        dtype=np.float64,
    )
