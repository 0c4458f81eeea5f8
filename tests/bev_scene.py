"""A hand-made street for the geometry-bridge tests: a road plane and axis-aligned boxes (house
fronts, cars, a pole) in the LiDAR frame, ray-cast exactly by a LiDAR and by a KITTI-like camera.

The LiDAR frame is KITTI's (x forward, y left, z up, the road at z = -1.73); the camera is the
ideal KITTI camera 2: the axes of ``conftest.IDEAL_TR`` (0.27 m ahead, 0.08 m below the LiDAR)
and the intrinsics and baseline column of a real ``P_rect_02`` (1242 x 375 pixels).
"""

from __future__ import annotations

import numpy as np
from conftest import IDEAL_TR

from liploc.datasets.frame import Calibration

ROAD_Z = -1.73
IMAGE_SIZE = (1242, 375)
P2 = np.array(
    [
        [721.5377, 0.0, 609.5593, 44.85728],
        [0.0, 721.5377, 172.854, 0.2163791],
        [0.0, 0.0, 1.0, 0.002745884],
    ]
)

# (x0, x1, y0, y1, z0, z1) in the LiDAR frame. No face lies on a cell edge of the default BEV grid
# (0.4 m cells from x = 0 and y = -25.6): a face on an edge would split its points between two
# cells by float rounding alone, which says nothing about the geometry.
BOXES = np.array(
    [
        [6.13, 45.07, 9.13, 20.0, ROAD_Z, 7.0],  # house fronts on the left
        [2.07, 18.13, -22.07, -10.13, ROAD_Z, 5.0],  # and on the right, with a gap
        [24.27, 48.0, -22.0, -12.27, ROAD_Z, 9.0],
        [10.13, 14.53, -3.67, -1.87, ROAD_Z, -0.2],  # a parked car
        [26.07, 30.53, 2.07, 3.87, ROAD_Z, -0.3],  # another one
        [19.07, 19.33, 4.07, 4.33, ROAD_Z, 2.5],  # a pole
    ]
)


def calibration() -> Calibration:
    """The ideal KITTI camera 2 of the scene."""
    return Calibration(T_cam_lidar=IDEAL_TR.copy(), P=P2.copy(), image_size=IMAGE_SIZE)


def ray_cast(origin: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Distance along each (N, 3) direction (unit or not) from ``origin`` to the first surface.

    In units of each direction's length; inf where the ray hits nothing."""
    d = np.asarray(directions, dtype=np.float64)
    o = np.asarray(origin, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_road = np.where(d[:, 2] < 0, (ROAD_Z - o[2]) / d[:, 2], np.inf)
        best = t_road
        for x0, x1, y0, y1, z0, z1 in BOXES:
            lo = (np.array([x0, y0, z0]) - o) / d
            hi = (np.array([x1, y1, z1]) - o) / d
            t_near = np.nanmax(np.minimum(lo, hi), axis=1)
            t_far = np.nanmin(np.maximum(lo, hi), axis=1)
            hit = (t_near <= t_far) & (t_near > 0)
            best = np.where(hit & (t_near < best), t_near, best)
    return best


def lidar_scan(
    elevation_step_deg: float = 0.42, azimuth_step_deg: float = 0.17, azimuth_range_deg: float = 180.0
) -> np.ndarray:
    """float32 (N, 4) points of a spinning LiDAR at the origin (HDL-64E-like: +2 .. -24.9 degrees,
    one beam per ``elevation_step_deg``, azimuths within +-``azimuth_range_deg`` of forward),
    returns within 80 m; intensity 0.5."""
    elevation = np.deg2rad(np.arange(2.0, -24.9, -elevation_step_deg))
    azimuth = np.deg2rad(np.arange(-azimuth_range_deg, azimuth_range_deg, azimuth_step_deg))
    el, az = np.meshgrid(elevation, azimuth, indexing="ij")
    dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1).reshape(-1, 3)
    t = ray_cast(np.zeros(3), dirs)
    keep = t < 80.0
    pts = dirs[keep] * t[keep, None]
    return np.hstack([pts, np.full((len(pts), 1), 0.5)]).astype(np.float32)


def dense_depth(calib: Calibration) -> np.ndarray:
    """float32 (H, W) true depth of every pixel centre (the third coordinate of ``P @ X_cam``); 0 for sky.

    Written without :mod:`liploc.lidar.back_projection`: with ``P = [M | p]``, the camera point of
    depth ``d`` on pixel ``(u, v)`` is ``d * M^-1 (u, v, 1) - M^-1 p``, a ray from ``-M^-1 p`` whose
    direction has unit depth, so the ray-cast distance along it is the depth.
    """
    w, h = calib.image_size
    M, p = calib.P[:, :3], calib.P[:, 3]
    T_lidar_cam = np.linalg.inv(calib.T_cam_lidar)
    v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    uv1 = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
    direction_cam = np.linalg.solve(M, uv1.T).T
    origin_cam = -np.linalg.solve(M, p)
    origin = T_lidar_cam[:3, :3] @ origin_cam + T_lidar_cam[:3, 3]
    depth = ray_cast(origin, direction_cam @ T_lidar_cam[:3, :3].T)
    depth[~np.isfinite(depth)] = 0.0
    return depth.reshape(h, w).astype(np.float32)
