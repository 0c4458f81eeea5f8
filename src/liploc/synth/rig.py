"""The sensor rig of the synthetic car: KITTI's cameras, Velodyne mounting and calibration.

The default calibration is that of KITTI odometry sequence 00 (``calib.txt``): rectified projection
matrices P0..P3 at 1241 x 376 and ``Tr`` (Velodyne -> camera 0). Smaller images scale the
projection matrices, so a scan projected with the written calibration lands where it should.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liploc.datasets.calibration_files import homogeneous, read_calibration_file
from liploc.datasets.frame import Calibration

KITTI_IMAGE_SIZE = (1241, 376)
"""(width, height) of KITTI odometry's rectified images."""

LIDAR_HEIGHT_M = 1.73
"""Height of the Velodyne above the road on the KITTI car."""

_KITTI_00_CALIB = {
    "P0": (718.856, 0.0, 607.1928, 0.0, 0.0, 718.856, 185.2157, 0.0, 0.0, 0.0, 1.0, 0.0),
    "P1": (718.856, 0.0, 607.1928, -386.1448, 0.0, 718.856, 185.2157, 0.0, 0.0, 0.0, 1.0, 0.0),
    "P2": (718.856, 0.0, 607.1928, 45.38225, 0.0, 718.856, 185.2157, -0.1130887, 0.0, 0.0, 1.0, 0.003779761),
    "P3": (718.856, 0.0, 607.1928, -337.2877, 0.0, 718.856, 185.2157, 2.369057, 0.0, 0.0, 1.0, 0.004915215),
    "Tr": (
        4.276802385584e-04,
        -9.999672484946e-01,
        -8.084491683471e-03,
        -1.198459927713e-02,
        -7.210626507497e-03,
        8.081198471645e-03,
        -9.999413164504e-01,
        -5.403984729748e-02,
        9.999738645903e-01,
        4.859485810390e-04,
        -7.206933692422e-03,
        -2.921968648686e-01,
    ),
}
"""KITTI odometry sequence 00 ``calib.txt`` (public KITTI calibration values)."""


@dataclass(frozen=True, eq=False)
class SensorRig:
    """Cameras and LiDAR of the synthetic car.

    Attributes:
        projections: rectified 3x4 projection matrices ``P0``..``P3`` for ``image_size``.
        T_cam_lidar: 4x4 ``Tr``, Velodyne -> rectified camera 0.
        image_size: (width, height) of the written images.
        lidar_height: height of the LiDAR above the road (metres).
    """

    projections: dict[str, np.ndarray]
    T_cam_lidar: np.ndarray
    image_size: tuple[int, int]
    lidar_height: float = LIDAR_HEIGHT_M

    @property
    def P2(self) -> np.ndarray:
        """Projection matrix of the left colour camera (``image_2``)."""
        return self.projections["P2"]

    def calibration(self) -> Calibration:
        """The Calibration a KITTI reader gives for ``image_2`` of the written sequences."""
        return Calibration(T_cam_lidar=self.T_cam_lidar.copy(), P=self.P2.copy(), image_size=self.image_size)

    def camera_centre_lidar(self) -> np.ndarray:
        """Optical centre of camera 2 in the LiDAR frame (metres)."""
        K = self.P2[:, :3]
        centre_cam0 = -np.linalg.solve(K, self.P2[:, 3])
        T_lidar_cam = np.linalg.inv(self.T_cam_lidar)
        return T_lidar_cam[:3, :3] @ centre_cam0 + T_lidar_cam[:3, 3]

    def pixel_directions_lidar(self, supersample: int = 1) -> np.ndarray:
        """Unit view directions (LiDAR frame) through the pixels of camera 2.

        Returns an (H * s, W * s, 3) float32 array for supersampling factor ``s``: sub-pixel
        samples centred on each pixel, whose pixel centres sit at integer coordinates (KITTI).
        """
        width, height = self.image_size
        s = supersample
        offsets = (np.arange(s) + 0.5) / s - 0.5
        us = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
        vs = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)
        uu, vv = np.meshgrid(us, vs)
        pixels = np.stack([uu, vv, np.ones_like(uu)], axis=-1)
        K_inv = np.linalg.inv(self.P2[:, :3])
        dirs_cam = pixels @ K_inv.T
        R_lidar_cam = np.linalg.inv(self.T_cam_lidar)[:3, :3]
        dirs = dirs_cam @ R_lidar_cam.T
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        return dirs.astype(np.float32)

    def calib_text(self) -> str:
        """KITTI odometry ``calib.txt`` content (P0..P3 and Tr, 12 numbers each)."""
        lines = []
        for key in ("P0", "P1", "P2", "P3"):
            lines.append(f"{key}: " + " ".join(f"{v:.12e}" for v in self.projections[key].reshape(-1)))
        lines.append("Tr: " + " ".join(f"{v:.12e}" for v in self.T_cam_lidar[:3].reshape(-1)))
        return "\n".join(lines) + "\n"


def kitti_rig(image_scale: float = 1.0) -> SensorRig:
    """KITTI's rig (sequence 00 calibration) with images scaled by ``image_scale``."""
    projections = {
        k: np.array(v, dtype=np.float64).reshape(3, 4) for k, v in _KITTI_00_CALIB.items() if k != "Tr"
    }
    T_cam_lidar = homogeneous(np.array(_KITTI_00_CALIB["Tr"], dtype=np.float64).reshape(3, 4))
    return scaled_rig(projections, T_cam_lidar, image_scale)


def scaled_rig(projections: dict[str, np.ndarray], T_cam_lidar: np.ndarray, image_scale: float) -> SensorRig:
    """A rig whose images are ``image_scale`` times KITTI's size (projection rows scaled to match)."""
    width = max(8, round(KITTI_IMAGE_SIZE[0] * image_scale))
    height = max(8, round(KITTI_IMAGE_SIZE[1] * image_scale))
    scale = np.diag([image_scale, image_scale, 1.0])
    scaled = {k: scale @ P for k, P in projections.items()}
    return SensorRig(projections=scaled, T_cam_lidar=T_cam_lidar, image_size=(width, height))


def read_tr(calib_path: str | Path) -> np.ndarray:
    """4x4 ``Tr`` (Velodyne -> camera 0) from a KITTI odometry ``calib.txt``."""
    calib = read_calibration_file(calib_path)
    key = "Tr" if calib.has("Tr") or not calib.has("Tr_velo_to_cam") else "Tr_velo_to_cam"
    return homogeneous(calib.matrix(key, (3, 4)))
