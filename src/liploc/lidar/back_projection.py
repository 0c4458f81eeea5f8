"""Depth image -> points in the LiDAR frame: the inverse of :mod:`liploc.lidar.camera_depth`.

:func:`liploc.lidar.camera_depth.camera_depth_image` puts a LiDAR point ``X`` at
``uvw = P @ T_cam_lidar @ X`` (homogeneous), into pixel ``(row, col) = (floor(v + 0.5),
floor(u + 0.5))`` with ``u = uvw[0] / uvw[2]``, ``v = uvw[1] / uvw[2]``, and stores the depth
``d = uvw[2]``. Here a pixel ``(row, col)`` with depth ``d`` goes back to the point on its centre
ray (``u = col``, ``v = row``) at that depth::

    P = [M | p]              (M: 3x3, p: the last column, e.g. KITTI P2's baseline offset)
    X_cam   = M^-1 @ ([u * d, v * d, d] - p)
    X_lidar = T_lidar_cam @ [X_cam, 1]

so that ``X_lidar = d * ray(u, v) + origin`` with ``ray = R_lidar_cam @ M^-1 @ [u, v, 1]`` and
``origin = R_lidar_cam @ (-M^-1 @ p) + t_lidar_cam``: linear in the depth, hence the torch version
is differentiable with respect to the depth with the ray as gradient. Projecting the points again
gives back the same depth image (exactly, up to float rounding); a single point comes back on its
pixel's centre ray, so it moves sideways by at most half a pixel (``0.5 * d / f`` metres).

The image may be resized for the network (no crop): use the calibration scaled to the depth
image's size (:func:`liploc.lidar.camera_depth.scale_calibration`, or
:func:`calibration_for_depth`), as the LiDAR data loader does when it projects at the network size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from liploc.datasets.frame import Calibration
from liploc.lidar.camera_depth import scale_calibration

if TYPE_CHECKING:  # torch is imported by the torch functions only: the ONNX runtime's rays are NumPy's
    import torch
    from torch import Tensor


def _projection_3x4(P: np.ndarray) -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    if P.shape == (3, 3):
        return np.hstack([P, np.zeros((3, 1))])
    if P.shape != (3, 4):
        raise ValueError(f"expected 3x3 intrinsics or a 3x4 projection matrix, got shape {P.shape}")
    return P


def _check_transform(T: np.ndarray) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"expected a 4x4 camera-from-LiDAR transform, got shape {T.shape}")
    return T


def ray_parameters(P: np.ndarray, T_cam_lidar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(A, origin)`` with ``X_lidar = d * (A @ [u, v, 1]) + origin`` for depth ``d`` at pixel ``(u, v)``.

    Args:
        P: 3x3 intrinsics or 3x4 projection matrix (its last column may hold an offset).
        T_cam_lidar: 4x4 transform from the LiDAR frame to the camera frame ``P`` projects from.

    Returns:
        float64 (3, 3) ``A`` and (3,) ``origin`` (the point of depth 0: the camera centre when
        ``p`` is zero).
    """
    P = _projection_3x4(P)
    T_lidar_cam = np.linalg.inv(_check_transform(T_cam_lidar))
    M_inv = np.linalg.inv(P[:, :3])
    rotation, translation = T_lidar_cam[:3, :3], T_lidar_cam[:3, 3]
    return rotation @ M_inv, rotation @ (-M_inv @ P[:, 3]) + translation


def pixel_rays(
    P: np.ndarray, T_cam_lidar: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Centre ray of every pixel in the LiDAR frame: float64 (H, W, 3) rays and (3,) origin.

    The point of pixel ``(row, col)`` at depth ``d`` is ``d * rays[row, col] + origin``.
    """
    A, origin = ray_parameters(P, T_cam_lidar)
    v, u = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    uv1 = np.stack([u, v, np.ones_like(u)], axis=-1)
    return uv1 @ A.T, origin


def camera_rays(
    P: np.ndarray, T_cam_lidar: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pixel_rays` as a fixed camera's inputs to the bridge's camera tower: float32 rays
    (1, H*W, 3) in row-major pixel order and origin (1, 3). The one computation of the torch
    tower (:class:`~liploc.models.CalibratedImageTower`) and of its ONNX export's runtime, so
    that both back-project with the same numbers."""
    rays, origin = pixel_rays(P, T_cam_lidar, height, width)
    return rays.reshape(1, height * width, 3).astype(np.float32), origin.reshape(1, 3).astype(np.float32)


def back_project_depth(
    depth: np.ndarray,
    P: np.ndarray,
    T_cam_lidar: np.ndarray,
    min_depth: float = 0.0,
    return_pixels: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Points in the LiDAR frame of the pixels of a depth image that hold a depth.

    Args:
        depth: (H, W) depth in metres (the third homogeneous coordinate of ``P @ X_cam``, as
            :func:`~liploc.lidar.camera_depth.camera_depth_image` stores it); 0 (or anything
            ``<= min_depth``, NaN included) marks an empty pixel.
        P: 3x3 intrinsics or 3x4 projection matrix of the depth image (scaled to its size).
        T_cam_lidar: 4x4 camera-from-LiDAR transform.
        min_depth: pixels with depth ``<= min_depth`` are empty.
        return_pixels: also return the (N, 2) int64 ``(row, col)`` of every point.

    Returns:
        float64 (N, 3) points, in row-major pixel order; with ``return_pixels``, ``(points, pixels)``.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"expected an (H, W) depth image, got shape {depth.shape}")
    A, origin = ray_parameters(P, T_cam_lidar)
    with np.errstate(invalid="ignore"):
        rows, cols = np.nonzero(depth > min_depth)
    d = depth[rows, cols].astype(np.float64)
    uv1 = np.stack([cols.astype(np.float64), rows.astype(np.float64), np.ones(len(d))], axis=1)
    points = d[:, None] * (uv1 @ A.T) + origin
    if return_pixels:
        return points, np.stack([rows, cols], axis=1).astype(np.int64)
    return points


def calibration_for_depth(calib: Calibration, depth_hw: tuple[int, int]) -> Calibration:
    """``calib`` scaled to a depth image of ``depth_hw = (height, width)`` (the same when it fits).

    The depth image is the camera image resized (no crop), as the data loader does.
    """
    h, w = (int(v) for v in depth_hw)
    if calib.image_size is not None and tuple(calib.image_size) == (w, h):
        return calib
    return scale_calibration(calib, (w, h))


def back_project_depth_calib(depth: np.ndarray, calib: Calibration, min_depth: float = 0.0) -> np.ndarray:
    """:func:`back_project_depth` with the calibration of the (possibly resized) camera image."""
    depth = np.asarray(depth)
    calib = calibration_for_depth(calib, depth.shape[-2:])
    return back_project_depth(depth, calib.P, calib.T_cam_lidar, min_depth=min_depth)  # type: ignore[return-value]


# --- torch ---------------------------------------------------------------------------------------


def _batched_matrix(
    m: Tensor | np.ndarray, batch: int, shape: tuple[int, ...], device: torch.device
) -> Tensor:
    import torch

    t = torch.as_tensor(m, device=device, dtype=torch.float64)
    if t.dim() == len(shape):
        t = t.expand(batch, *shape)
    if t.shape[0] != batch:
        raise ValueError(f"calibration batch {t.shape[0]} does not match the depth batch {batch}")
    return t


def ray_parameters_torch(
    P: Tensor | np.ndarray, T_cam_lidar: Tensor | np.ndarray, batch: int, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Batched :func:`ray_parameters`: float64 (B, 3, 3) ``A`` and (B, 3) ``origin``.

    ``P``: (3, 3|4) or (B, 3, 3|4); ``T_cam_lidar``: (4, 4) or (B, 4, 4). Computed in float64 (the
    inverse of a matrix holding a focal length of ~700 px loses digits in float32); calibration
    gets no gradient.
    """
    import torch

    device = torch.device(device)
    P_t = torch.as_tensor(P, device=device, dtype=torch.float64)
    if P_t.shape[-2:] == (3, 3):
        P_t = torch.cat([P_t, torch.zeros(*P_t.shape[:-1], 1, dtype=P_t.dtype, device=device)], dim=-1)
    if P_t.shape[-2:] != (3, 4):
        raise ValueError(f"expected 3x3 intrinsics or 3x4 projection matrices, got shape {tuple(P_t.shape)}")
    P_t = _batched_matrix(P_t, batch, (3, 4), device)
    T = _batched_matrix(T_cam_lidar, batch, (4, 4), device)
    T_lidar_cam = torch.linalg.inv(T)
    M_inv = torch.linalg.inv(P_t[:, :, :3])
    rotation, translation = T_lidar_cam[:, :3, :3], T_lidar_cam[:, :3, 3]
    A = rotation @ M_inv
    origin = (rotation @ (-M_inv @ P_t[:, :, 3:]))[..., 0] + translation
    return A, origin


def pixel_rays_torch(
    P: Tensor | np.ndarray,
    T_cam_lidar: Tensor | np.ndarray,
    height: int,
    width: int,
    batch: int = 1,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """float64 ``(rays (B, H*W, 3), origin (B, 3))`` of a ``height`` x ``width`` depth image: its
    pixel ``k`` (row-major) at depth ``d`` is the LiDAR-frame point ``d * rays[:, k] + origin``.

    What :func:`back_project_depth_torch` works out on every call when not given ``rays``; a
    camera whose calibration is fixed (a map's queries) passes the rays of :func:`camera_rays`.
    """
    import torch

    device = torch.device(device)
    A, origin = ray_parameters_torch(P, T_cam_lidar, batch, device)
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=device),
        torch.arange(width, dtype=torch.float64, device=device),
        indexing="ij",
    )
    uv1 = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(1, height * width, 3)
    return uv1 @ A.transpose(1, 2), origin


def back_project_depth_torch(
    depth: Tensor,
    P: Tensor | np.ndarray,
    T_cam_lidar: Tensor | np.ndarray,
    min_depth: float = 0.0,
    rays: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Every pixel of a batch of depth images as a point in the LiDAR frame (differentiable).

    Args:
        depth: (B, H, W) or (B, 1, H, W) depth in metres (predicted or projected).
        P: (3, 3|4) or (B, 3, 3|4) projection of the depth images (scaled to their size).
        T_cam_lidar: (4, 4) or (B, 4, 4) camera-from-LiDAR transforms.
        min_depth: pixels with depth ``<= min_depth`` are marked invalid.
        rays: the pixel rays and origin of ``P`` and ``T_cam_lidar`` at the depth's size, worked
            out beforehand (:func:`camera_rays` or :func:`pixel_rays_torch`, batch 1 or B); then
            ``P`` and ``T_cam_lidar`` are not read.

    Returns:
        ``(points, valid)``: (B, H*W, 3) points in ``depth``'s dtype, row-major pixel order, and
        (B, H*W) bool, False where the depth is ``<= min_depth`` or not finite. Every pixel gets a
        point (a fixed shape that batches); ``points`` is linear in ``depth``, so gradients flow
        to the depth of each pixel whose point is used.
    """
    import torch

    if depth.dim() == 4:
        if depth.shape[1] != 1:
            raise ValueError(f"expected (B, 1, H, W) depth, got {tuple(depth.shape)}")
        depth = depth[:, 0]
    if depth.dim() != 3:
        raise ValueError(f"expected (B, H, W) depth, got {tuple(depth.shape)}")
    b, h, w = depth.shape
    directions, origin = rays if rays is not None else pixel_rays_torch(P, T_cam_lidar, h, w, b, depth.device)
    if directions.shape[-2] != h * w:
        raise ValueError(f"rays of {directions.shape[-2]} pixels for a {h} x {w} depth image")
    dtype = depth.dtype if depth.dtype.is_floating_point else torch.float32
    d = depth.reshape(b, h * w, 1).to(dtype)
    points = d * directions.to(dtype) + origin.to(dtype)[:, None, :]  # (B, H*W, 3)
    valid = torch.isfinite(d[..., 0]) & (d[..., 0] > min_depth)
    return points, valid
