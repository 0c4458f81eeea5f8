"""The LiDAR scan projected into the camera image as a sparse depth image (optional LiDAR input).

A LiDAR point ``X`` lands at ``P @ T_cam_lidar @ X`` (homogeneous); its depth is the third
coordinate (z in the camera frame). Pixel ``(i, j)`` has its centre at ``u = i, v = j`` (the
convention of the calibrated intrinsics), so a point falls in pixel ``floor(u + 0.5)``.
The nearest point wins a pixel (ties: the point listed first).
"""

from __future__ import annotations

import numpy as np

from liploc.config import ProjectionConfig
from liploc.datasets.frame import Calibration
from liploc.errors import LiplocError
from liploc.lidar.range_image import as_point_array, nearest_point_per_pixel

DEFAULT_MIN_DEPTH = 0.1
"""Points closer than this in front of the camera (metres), or behind it, are dropped."""
DEFAULT_MAX_DEPTH = 80.0


def _image_size(calib: Calibration, image_size: tuple[int, int] | None) -> tuple[int, int]:
    size = image_size or calib.image_size
    if size is None:
        raise LiplocError("calibration has no image size; pass image_size=(width, height)")
    w, h = (int(v) for v in size)
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    return w, h


def scale_calibration(
    calib: Calibration, out_size: tuple[int, int], image_size: tuple[int, int] | None = None
) -> Calibration:
    """The calibration of the image resized to ``out_size`` (width, height).

    The projection matrix is scaled so that the resized image's pixel centres map to the same
    rays as a resize of the image would give: ``u' = (u + 0.5) * sx - 0.5`` (likewise ``v``).
    """
    w, h = _image_size(calib, image_size)
    ow, oh = _image_size(calib, out_size)
    sx, sy = ow / w, oh / h
    scale = np.array([[sx, 0.0, (sx - 1.0) / 2.0], [0.0, sy, (sy - 1.0) / 2.0], [0.0, 0.0, 1.0]])
    return Calibration(T_cam_lidar=calib.T_cam_lidar, P=scale @ calib.P, image_size=(ow, oh))


def project_to_camera(points: np.ndarray, calib: Calibration) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coordinates ``(u, v)`` and depth of every point (float64, (N,) each; no filtering)."""
    pts = as_point_array(points)
    m = np.asarray(calib.lidar_to_image, dtype=np.float64)
    uvw = pts[:, :3].astype(np.float64) @ m[:, :3].T + m[:, 3]
    depth = uvw[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = uvw[:, 0] / depth
        v = uvw[:, 1] / depth
    return u, v, depth


def camera_depth_image(
    points: np.ndarray,
    calib: Calibration,
    image_size: tuple[int, int] | None = None,
    out_size: tuple[int, int] | None = None,
    min_depth: float = DEFAULT_MIN_DEPTH,
    max_depth: float = DEFAULT_MAX_DEPTH,
) -> np.ndarray:
    """Sparse depth image of a scan in the camera of ``calib``.

    Args:
        points: (N, 3+) LiDAR points (x, y, z, ...).
        calib: calibration; ``calib.image_size`` gives the image size unless ``image_size`` does.
        image_size: (width, height) of the camera image, when ``calib`` has none.
        out_size: (width, height) of the depth image when smaller (or larger) than the camera
            image; the intrinsics are scaled to it (see :func:`scale_calibration`), so each
            point lands where it would in the resized image.
        min_depth: points with depth ``<= min_depth`` (behind or too close) are dropped.
        max_depth: points with depth ``>= max_depth`` are dropped.

    Returns:
        (H, W) float32 depth in metres (z in the camera frame) of the nearest point per pixel;
        0 where no point landed.
    """
    size = _image_size(calib, image_size)
    if out_size is not None:
        calib = scale_calibration(calib, out_size, size)
        size = _image_size(calib, None)
    w, h = size
    u, v, depth = project_to_camera(points, calib)
    with np.errstate(invalid="ignore"):
        col = np.floor(u + 0.5)
        row = np.floor(v + 0.5)
        keep = (depth > min_depth) & (depth < max_depth)
        keep &= (col >= 0) & (col < w) & (row >= 0) & (row < h)
    pixel = np.where(keep, row * w + col, h * w).astype(np.int64)
    depth32 = depth.astype(np.float32)
    winner = nearest_point_per_pixel(pixel, np.where(keep, depth32, np.float32(0.0)), h * w)
    image = np.zeros(h * w, dtype=np.float32)
    hit = winner >= 0
    image[hit] = depth32[winner[hit]]
    return image.reshape(h, w)


def camera_depth_input(
    points: np.ndarray,
    calib: Calibration,
    cfg: ProjectionConfig | None = None,
    out_size: tuple[int, int] | None = None,
    empty_value: float = 0.0,
) -> np.ndarray:
    """The sparse camera depth image as a LiDAR-tower input: (3, H, W) float32 in 0..255.

    Depth is scaled like the range image (``depth * cfg.range_scale``, clipped to 0..255,
    truncated to whole levels with ``cfg.quantize``), points beyond ``cfg.max_range`` dropped;
    empty pixels get ``empty_value`` (0: most of a sparse image is empty, so no white fill).
    """
    cfg = cfg or ProjectionConfig()
    depth = camera_depth_image(
        points,
        calib,
        out_size=out_size,
        min_depth=max(cfg.min_range, DEFAULT_MIN_DEPTH),
        max_depth=cfg.max_range,
    )
    values = depth * np.float32(cfg.range_scale)
    np.clip(values, 0.0, 255.0, out=values)
    if cfg.quantize:
        np.floor(values, out=values)
    values[depth <= 0] = empty_value
    return np.repeat(values[None], 3, axis=0)
