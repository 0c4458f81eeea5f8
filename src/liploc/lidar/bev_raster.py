"""Bird's-eye-view (BEV) raster of points in the LiDAR frame, one for both modalities.

The scan's points (restricted to the camera's view) and the points of a depth image turned back
into 3-D (:mod:`liploc.lidar.back_projection`) go through the same rasteriser, so the two BEV
encoders see the same kind of picture, and a sideways move of the vehicle is a sideways
translation of the picture.

Grid (LiDAR frame: x forward, y left, z up): cells of ``cell`` metres over ``x_range`` forward and
``-half_width .. half_width`` sideways. The raster is (C, rows, cols), drawn as seen from above
with the vehicle at the bottom looking up: row 0 is the far edge (largest x), column 0 the left
edge (largest y). A point at ``(x, y)`` with ``i = floor((x - x_min) / cell)`` and
``j = floor((y + half_width) / cell)`` lands in ``row = rows - 1 - i``, ``col = cols - 1 - j``;
the grid holds ``x_min <= x < x_max`` and ``-half_width <= y < half_width``.

Channels (every value in 0..1, empty cells 0):
- ``height``: the highest point of the cell, ``(z - ground_z - min_height) / (max_height -
  min_height)``. Only points with ``min_height < z - ground_z <= max_height`` count: lower ones
  are noise below the road, higher ones are what the LiDAR hardly sees (its top beam is about 2
  degrees up) while the camera does, and the unsupervised sky of a predicted depth map.
  An occupied cell is never 0 (a road cell is ``-min_height / (max_height - min_height)``).
- ``density``: ``log1p(count) / log1p(density_norm)``, clipped to 1.
- ``intensity`` (only with ``intensity=True``; the scan has it, an image does not, so it is off by
  default): the mean intensity of the cell's points.

Deterministic: the numpy raster is exact; the torch raster uses a scatter-max (order-free) and
sums of ones (exact in float32 up to 2**24 points a cell); only the soft splat's and the
intensity's float sums can differ in the last bits on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from liploc.datasets.frame import Calibration
from liploc.lidar.back_projection import (
    back_project_depth,
    back_project_depth_torch,
    calibration_for_depth,
)
from liploc.lidar.camera_depth import DEFAULT_MAX_DEPTH, DEFAULT_MIN_DEPTH, project_to_camera

KITTI_LIDAR_HEIGHT = 1.73
"""Height of the KITTI Velodyne above the road (metres): the road is at z = -1.73 in its frame."""


@dataclass(frozen=True)
class BevSettings:
    """Grid and channels of a BEV raster (see the module docstring for the conventions).

    Attributes:
        x_range: (x_min, x_max) forward extent in metres (LiDAR x).
        half_width: lateral half extent in metres (LiDAR y from -half_width to half_width).
        cell: cell size in metres.
        ground_z: z of the road in the LiDAR frame (heights are taken relative to it).
        min_height: points at or below ``ground_z + min_height`` are dropped.
        max_height: points above ``ground_z + max_height`` are dropped.
        density_norm: a cell with this many points (or more) has density 1.
        max_range: when set, points farther than this horizontally (sqrt(x^2 + y^2)) are dropped.
        intensity: add the mean-intensity channel (scan only; off so that both modalities match).
    """

    x_range: tuple[float, float] = (0.0, 51.2)
    half_width: float = 25.6
    cell: float = 0.4
    ground_z: float = -KITTI_LIDAR_HEIGHT
    min_height: float = -0.5
    max_height: float = 2.0
    density_norm: float = 16.0
    max_range: float | None = None
    intensity: bool = False

    def __post_init__(self) -> None:
        x_min, x_max = self.x_range
        if not (x_max > x_min and self.half_width > 0 and self.cell > 0):
            raise ValueError(f"empty BEV grid: x_range {self.x_range}, half_width {self.half_width}")
        if not self.max_height > self.min_height:
            raise ValueError(f"max_height {self.max_height} must exceed min_height {self.min_height}")
        if not self.density_norm > 0:
            raise ValueError(f"density_norm must be positive, got {self.density_norm}")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols): ``rows`` along x, ``cols`` along y (rounded to whole cells)."""
        x_min, x_max = self.x_range
        return round((x_max - x_min) / self.cell), round(2 * self.half_width / self.cell)

    @property
    def channels(self) -> tuple[str, ...]:
        """Channel names, in raster order."""
        return ("height", "density", "intensity") if self.intensity else ("height", "density")

    @property
    def num_channels(self) -> int:
        """Number of raster channels."""
        return len(self.channels)


# --- camera view ---------------------------------------------------------------------------------


def camera_view_mask(
    points: np.ndarray,
    calib: Calibration,
    image_size: tuple[int, int] | None = None,
    min_depth: float = DEFAULT_MIN_DEPTH,
    max_depth: float = DEFAULT_MAX_DEPTH,
    vertical: bool = True,
) -> np.ndarray:
    """(N,) bool: the points that :func:`~liploc.lidar.camera_depth.camera_depth_image` puts in the image.

    The same test as the depth image (depth in ``(min_depth, max_depth)``, pixel ``floor(u + 0.5)``,
    ``floor(v + 0.5)`` inside the image), so the scan's BEV holds what the camera's depth image
    can hold. ``vertical=False`` keeps the horizontal field of view only (any row).
    ``image_size`` (width, height) defaults to ``calib.image_size``.
    """
    size = image_size or calib.image_size
    if size is None:
        raise ValueError("calibration has no image size; pass image_size=(width, height)")
    w, h = size
    u, v, depth = project_to_camera(points, calib)
    with np.errstate(invalid="ignore"):
        col = np.floor(u + 0.5)
        keep = (depth > min_depth) & (depth < max_depth) & (col >= 0) & (col < w)
        if vertical:
            row = np.floor(v + 0.5)
            keep &= (row >= 0) & (row < h)
    return keep


def camera_view_mask_torch(
    points: Tensor,
    P: Tensor | np.ndarray,
    T_cam_lidar: Tensor | np.ndarray,
    image_size: tuple[int, int],
    min_depth: float = DEFAULT_MIN_DEPTH,
    max_depth: float = DEFAULT_MAX_DEPTH,
    vertical: bool = True,
) -> Tensor:
    """Batched :func:`camera_view_mask`: (B, N, 3) points -> (B, N) bool.

    ``P`` is (3, 3|4) or (B, 3, 3|4), ``T_cam_lidar`` (4, 4) or (B, 4, 4);
    ``image_size`` is (width, height) of the image ``P`` belongs to. Computed in float64.
    """
    b = points.shape[0]
    w, h = image_size
    P_t = torch.as_tensor(P, dtype=torch.float64, device=points.device)
    if P_t.shape[-1] == 3:  # 3x3 intrinsics: no offset column
        P_t = torch.cat([P_t, torch.zeros(*P_t.shape[:-1], 1, dtype=P_t.dtype, device=P_t.device)], dim=-1)
    P_t = P_t.expand(b, 3, 4)
    T_t = torch.as_tensor(T_cam_lidar, dtype=torch.float64, device=points.device).expand(b, 4, 4)
    m = P_t @ T_t  # (B, 3, 4)
    xyz = points[..., :3].detach().to(torch.float64)
    uvw = xyz @ m[:, :, :3].transpose(1, 2) + m[:, None, :, 3]
    depth = uvw[..., 2]
    col = torch.floor(uvw[..., 0] / depth + 0.5)
    keep = (depth > min_depth) & (depth < max_depth) & (col >= 0) & (col < w)
    if vertical:
        row = torch.floor(uvw[..., 1] / depth + 0.5)
        keep &= (row >= 0) & (row < h)
    return keep


# --- numpy raster --------------------------------------------------------------------------------


def _cells(x: np.ndarray, y: np.ndarray, s: BevSettings) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = s.shape
    i = np.floor((x - s.x_range[0]) / s.cell).astype(np.int64)
    j = np.floor((y + s.half_width) / s.cell).astype(np.int64)
    return rows - 1 - i, cols - 1 - j


def _kept(x, y, height, row, col, s: BevSettings):
    rows, cols = s.shape
    keep = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
    keep &= (height > s.min_height) & (height <= s.max_height)
    if s.max_range is not None:
        keep &= x * x + y * y <= s.max_range**2
    return keep


def rasterize_bev(points: np.ndarray, settings: BevSettings | None = None) -> np.ndarray:
    """BEV raster of points in the LiDAR frame.

    Args:
        points: (N, 3) x, y, z, or (N, 4+) with intensity in column 3 (needed only when
            ``settings.intensity``).
        settings: grid and channels (default :class:`BevSettings`).

    Returns:
        float32 (C, rows, cols) raster, channels ``settings.channels``.
    """
    s = settings or BevSettings()
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < (4 if s.intensity else 3):
        need = "(N, 4) points with intensity" if s.intensity else "(N, 3) points"
        raise ValueError(f"expected {need}, got shape {pts.shape}")
    rows, cols = s.shape
    x, y = pts[:, 0], pts[:, 1]
    height = pts[:, 2] - s.ground_z
    with np.errstate(invalid="ignore"):
        row, col = _cells(x, y, s) if len(pts) else (np.zeros(0, np.int64), np.zeros(0, np.int64))
        keep = _kept(x, y, height, row, col, s)
    flat = (row * cols + col)[keep]
    n_cells = rows * cols
    count = np.bincount(flat, minlength=n_cells).astype(np.float64)
    top = np.zeros(n_cells, dtype=np.float64)  # every kept height is > min_height, so 0 is "none"
    np.maximum.at(top, flat, (height[keep] - s.min_height) / (s.max_height - s.min_height))
    out = [top, np.minimum(np.log1p(count) / math.log1p(s.density_norm), 1.0)]
    if s.intensity:
        total = np.bincount(flat, weights=pts[keep, 3], minlength=n_cells)
        out.append(np.divide(total, count, out=np.zeros(n_cells), where=count > 0))
    return np.stack(out).reshape(len(out), rows, cols).astype(np.float32)


def scan_bev(
    points: np.ndarray,
    calib: Calibration,
    settings: BevSettings | None = None,
    image_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """BEV raster of the scan's points in the camera's view (:func:`camera_view_mask`)."""
    pts = np.asarray(points)
    return rasterize_bev(pts[camera_view_mask(pts, calib, image_size)], settings)


def depth_bev(
    depth: np.ndarray, calib: Calibration, settings: BevSettings | None = None, min_depth: float = 0.0
) -> np.ndarray:
    """BEV raster of a depth image (the camera image resized to ``depth``'s size, no crop)."""
    depth = np.asarray(depth)
    c = calibration_for_depth(calib, depth.shape)
    points = back_project_depth(depth, c.P, c.T_cam_lidar, min_depth=min_depth)
    return rasterize_bev(points, settings)  # type: ignore[arg-type]


# --- torch raster --------------------------------------------------------------------------------


def rasterize_bev_torch(
    points: Tensor,
    valid: Tensor | None = None,
    settings: BevSettings | None = None,
    soft: bool = False,
    sharpness: float = 20.0,
) -> Tensor:
    """Batched BEV raster: (B, N, 3|4+) points -> (B, C, rows, cols) in ``points``' float dtype.

    Args:
        points: points in the LiDAR frame; column 3 is the intensity when ``settings.intensity``.
        valid: (B, N) bool, False for points to ignore (empty pixels of a depth image, padding).
        settings: grid and channels.
        soft: bilinear splat instead of one cell per point, differentiable with respect to the
            points' x, y and z (the hard raster passes gradients to the height of each cell's
            highest point only). Each point spreads over the 4 cells whose centres surround it;
            ``density`` counts the weights; ``height`` is a weighted soft maximum,
            ``log(sum w * exp(k h) / sum w) / k`` with ``k = sharpness`` (between the weighted
            mean and the maximum; the maximum for a single point), times ``min(1, sum w)`` so
            that it fades out continuously as a cell empties. Same values as the hard raster for
            a point on a cell centre. Points that the grid's edges, the height band or
            ``max_range`` leave out get no gradient.
        sharpness: ``k`` of the soft maximum.

    The hard raster equals :func:`rasterize_bev` (up to float rounding at cell edges: the cell of
    a point is computed in ``points``' dtype).
    """
    s = settings or BevSettings()
    if points.dim() != 3 or points.shape[-1] < (4 if s.intensity else 3):
        raise ValueError(f"expected (B, N, 3) points (4 with intensity), got {tuple(points.shape)}")
    b = points.shape[0]
    rows, cols = s.shape
    n_cells = rows * cols
    dtype = points.dtype if points.dtype.is_floating_point else torch.float32
    pts = points.to(dtype)
    x, y = pts[..., 0], pts[..., 1]
    height = pts[..., 2] - s.ground_z
    keep = torch.isfinite(pts[..., :3]).all(-1) & (height > s.min_height) & (height <= s.max_height)
    if valid is not None:
        keep &= valid
    if s.max_range is not None:
        keep &= x * x + y * y <= s.max_range**2
    h_norm = (height - s.min_height) / (s.max_height - s.min_height)
    intensity = pts[..., 3] if s.intensity else None
    batch_offset = (torch.arange(b, device=pts.device) * n_cells)[:, None]
    # One cell past the grid takes every point left out, and is dropped at the end: every point
    # is scattered, so no shape depends on the data (what the ONNX export needs), and the cells
    # of the grid get the same sums as from the kept points alone.
    dump = b * n_cells
    zeros = torch.zeros(dump + 1, dtype=dtype, device=pts.device)

    def corner(i: Tensor, j: Tensor) -> Tensor:
        """Flat cell index of each point whose cell is ``(i, j)``; ``dump`` for the points left out."""
        row, col = rows - 1 - i, cols - 1 - j
        ok = keep & (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
        flat = torch.where(ok, row * cols + col, 0).long() + batch_offset
        return torch.where(ok, flat, dump).reshape(-1)

    if not soft:
        i = torch.floor((x - s.x_range[0]) / s.cell).detach()
        flat = corner(i, torch.floor((y + s.half_width) / s.cell).detach())
        w = torch.ones_like(flat, dtype=dtype)
        weight = zeros.index_add(0, flat, w)
        # Kept heights are > 0 after normalisation, so the zero start is "no point".
        top = zeros.scatter_reduce(0, flat, h_norm.reshape(-1), "amax", include_self=True)
        corners = [(flat, w)]
    else:
        # Continuous cell coordinates with integers at cell centres.
        fi = (x - s.x_range[0]) / s.cell - 0.5
        fj = (y + s.half_width) / s.cell - 0.5
        i0, j0 = torch.floor(fi).detach(), torch.floor(fj).detach()
        wi, wj = fi - i0, fj - j0
        # exp(k * (h - 1)) <= 1 keeps the sums in range; the shift is undone after the log.
        e = torch.exp(sharpness * (h_norm.clamp(max=1.0) - 1.0)).reshape(-1)
        weight, weighted_e, corners = zeros, zeros, []
        for di, dj, w_all in (
            (0, 0, (1 - wi) * (1 - wj)),
            (1, 0, wi * (1 - wj)),
            (0, 1, (1 - wi) * wj),
            (1, 1, wi * wj),
        ):
            flat = corner(i0 + di, j0 + dj)
            # Zero weight, and so no gradient (not even a NaN one), for the points left out.
            w = torch.where(flat == dump, 0.0, w_all.reshape(-1))
            weight = weight.index_add(0, flat, w)
            weighted_e = weighted_e.index_add(0, flat, w * e)
            corners.append((flat, w))
        occupied = weight > 0
        ratio = torch.where(occupied, weighted_e / torch.where(occupied, weight, 1.0), 1.0)
        soft_max = 1.0 + torch.log(ratio.clamp_min(torch.finfo(dtype).tiny)) / sharpness
        top = torch.where(occupied, soft_max.clamp(0.0, 1.0) * weight.clamp(max=1.0), 0.0)
    channels = [top, (torch.log1p(weight) / math.log1p(s.density_norm)).clamp(max=1.0)]
    if intensity is not None:
        total = zeros
        for flat, w in corners:
            total = total.index_add(0, flat, w * intensity.reshape(-1))
        channels.append(torch.where(weight > 0, total / torch.where(weight > 0, weight, 1.0), 0.0))
    channels = [c[:dump] for c in channels]
    raster = torch.stack(channels, dim=0).reshape(len(channels), b, rows, cols)
    return raster.transpose(0, 1).contiguous()


def depth_bev_torch(
    depth: Tensor,
    P: Tensor | np.ndarray,
    T_cam_lidar: Tensor | np.ndarray,
    settings: BevSettings | None = None,
    soft: bool = False,
    min_depth: float = 0.0,
) -> Tensor:
    """BEV rasters of a batch of (predicted) depth images: (B, H, W) -> (B, C, rows, cols).

    ``P`` is the projection of the depth images (scaled to their size); see
    :func:`~liploc.lidar.back_projection.back_project_depth_torch` and :func:`rasterize_bev_torch`.
    ``settings.intensity`` must be off (an image has no intensity).
    """
    s = settings or BevSettings()
    if s.intensity:
        raise ValueError("a depth image has no intensity; use BevSettings(intensity=False)")
    points, valid = back_project_depth_torch(depth, P, T_cam_lidar, min_depth=min_depth)
    return rasterize_bev_torch(points, valid, s, soft=soft)
