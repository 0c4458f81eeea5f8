"""Spherical range image of a LiDAR scan and its crop to the camera's view (the LiDAR tower input).

Conventions (those of the reference code, RangeNet++/OverlapNet style, used by LIP-Loc):

- The LiDAR frame is x forward, y left, z up.
- Column ``c`` covers azimuth from the back through the left, forward and the right: a point's
  column coordinate is ``0.5 * (1 - atan2(y, x) / pi) * width``, so the forward direction (+x) is at
  ``width / 2`` (the middle of the image), +y (left) at ``width / 4`` and -y (right) at
  ``3 * width / 4``; the image reads left to right like the camera image.
- Row ``r`` covers elevation from ``fov_up`` (row 0) down to ``fov_down`` (last row): the row
  coordinate is ``(fov_up - elevation) / (fov_up - fov_down) * height``.
- Pixel = floor of the coordinates. Points above or below the vertical field of view go to the
  first or last row (``outside_fov="clamp"``, the reference behaviour) or are dropped (``"drop"``).
- Points with range ``<= min_range`` or ``>= max_range`` are dropped; the nearest point wins a
  pixel; among points at exactly the same range the one listed first wins (deterministic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from liploc.config import ProjectionConfig
from liploc.datasets.frame import Calibration
from liploc.errors import ConfigError, LiplocError

_EMPTY_KEY = np.iinfo(np.uint64).max
"""Key of a pixel no point reached (larger than every (range, index) key)."""
_KEY_LO, _KEY_HI = (0, 1) if np.little_endian else (1, 0)
"""Positions of the index (low) and depth (high) uint32 halves of a uint64 key in memory."""


@dataclass(frozen=True, eq=False)
class RangeImage:
    """A spherical projection of a scan.

    Attributes:
        range: (H, W) float32 range in metres of the nearest point of each pixel; 0 where empty.
        valid: (H, W) bool, True where a point landed.
        point_index: (H, W) int32 index into ``points`` of the winning point; -1 where empty.
        points: the (N, C) float32 scan the image was made from (not copied); the intensity and
            height channels are read from it on first access.
    """

    range: np.ndarray
    valid: np.ndarray
    point_index: np.ndarray
    points: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.range.shape  # type: ignore[return-value]

    @cached_property
    def intensity(self) -> np.ndarray:
        """(H, W) float32 intensity (reflectance) of each pixel's point; 0 where empty or unknown."""
        if self.points.shape[1] < 4:
            return np.zeros(self.shape, dtype=np.float32)
        return self._gather(3)

    @cached_property
    def height(self) -> np.ndarray:
        """(H, W) float32 z (LiDAR frame, metres) of each pixel's point; 0 where empty."""
        return self._gather(2)

    def _gather(self, column: int) -> np.ndarray:
        if len(self.points) == 0:
            return np.zeros(self.shape, dtype=np.float32)
        # Index -1 (empty) reads the last point; those pixels are zeroed after the gather.
        values = self.points[:, column].take(self.point_index)
        values[~self.valid] = 0.0
        return values

    def channel(self, name: str) -> np.ndarray:
        """The (H, W) array of channel ``name`` (``range``, ``intensity`` or ``height``)."""
        if name not in ("range", "intensity", "height"):
            raise ValueError(f"unknown range-image channel '{name}' (range, intensity, height)")
        return getattr(self, name)


@dataclass(frozen=True)
class CropWindow:
    """Rows ``row0:row1`` and columns ``col0:col1`` of a range image (half-open ranges).

    Columns may run past either edge of the panorama (``col0 < 0`` or ``col1 > width``) when the
    window straddles the back direction; :func:`crop_range_image` wraps them around.
    """

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the cropped image."""
        return self.row1 - self.row0, self.col1 - self.col0

    def as_tuple(self) -> tuple[int, int, int, int]:
        """``(row0, row1, col0, col1)``."""
        return self.row0, self.row1, self.col0, self.col1


def as_point_array(points: np.ndarray) -> np.ndarray:
    """``points`` as a float32 (N, C) array with C >= 3 (x, y, z[, intensity, ...]).

    Raises ValueError with the offending shape when it is not a point array.
    """
    arr = np.asarray(points)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"expected points of shape (N, 3) or (N, 4) (x, y, z[, intensity]), got {arr.shape}")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr


def spherical_coordinates(
    points: np.ndarray, cfg: ProjectionConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float32 column and row coordinates (before flooring) and range of every point.

    Returns ``(col, row, range)``, each (N,) float32; see the module docstring for the mapping.
    """
    pts = as_point_array(points)
    n = len(pts)
    xyz = np.array(pts[:, :3].T, order="C")
    col, row, rng = (np.empty(n, dtype=np.float32) for _ in range(3))
    _spherical_coordinates_into(xyz, cfg, col, row, rng)
    return col, row, rng


def _spherical_coordinates_into(
    xyz: np.ndarray, cfg: ProjectionConfig, col: np.ndarray, row: np.ndarray, rng: np.ndarray
) -> None:
    """Fill ``col``, ``row``, ``rng`` from the contiguous (3, N) ``xyz`` (left unchanged).

    The arithmetic is the reference code's, operation for operation in float32, so that every
    point falls in the same pixel as there (an equivalent formula rounded differently would move
    points lying on a pixel edge).
    """
    x, y, z = xyz
    # x*x + y*y + z*z summed in this order (as np.linalg.norm does), in one pass.
    np.einsum("ij,ij->j", xyz, xyz, out=rng)
    np.sqrt(rng, out=rng)
    # Degrees to radians as the reference writes it (deg / 180 * pi), for bit-identical angles.
    fov_down = cfg.fov_down / 180.0 * math.pi
    fov = cfg.fov_up / 180.0 * math.pi - fov_down
    # Reference: yaw = -atan2(y, x); col = 0.5 * (yaw / pi + 1) * W.
    np.arctan2(y, x, out=col)
    np.negative(col, out=col)
    col /= np.float32(math.pi)
    col += np.float32(1.0)
    col *= np.float32(0.5)
    col *= np.float32(cfg.width)
    # Reference: pitch = asin(z / range); row = (1 - (pitch + |fov_down|) / fov) * H (the same as
    # subtracting fov_down when fov_down <= 0). A zero-range point (always dropped) gives NaN.
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(z, rng, out=row)
        np.arcsin(row, out=row)
    row -= np.float32(fov_down)
    row /= np.float32(fov)
    np.subtract(np.float32(1.0), row, out=row)
    row *= np.float32(cfg.height)


def _scatter_min_keys(
    pixel: np.ndarray, keys: np.ndarray, image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel nearest point by one scatter-min of (depth, index) keys.

    Each uint64 key holds a point's float32 depth bit pattern (monotone for non-negative floats)
    in its high half and the point's index in its low half, so the per-pixel minimum key is the
    nearest point, equal depths going to the lower index: deterministic, and no sort.

    Args:
        pixel: (N,) int64 in ``0 .. len(image) - 1``; the last pixel of ``image`` is the discard
            slot of dropped points.
        keys: (N,) uint64 keys.
        image: (P + 1,) uint64 work image, overwritten.

    Returns:
        Views of ``image`` without the discard slot: the int32 index of each pixel's point (-1
        where empty) and its float32 depth (NaN where empty).
    """
    image.fill(_EMPTY_KEY)
    np.minimum.at(image, pixel, keys)
    # An empty pixel keeps the all-ones key: index 0xFFFFFFFF is -1 as int32, the depth bits NaN.
    halves = image[:-1].view(np.uint32).reshape(len(image) - 1, 2)
    return halves[:, _KEY_LO].view(np.int32), halves[:, _KEY_HI].view(np.float32)


def nearest_point_per_pixel(pixel: np.ndarray, depth: np.ndarray, num_pixels: int) -> np.ndarray:
    """Index of the nearest point in each pixel (-1 where none), by one scatter-min.

    Args:
        pixel: (N,) integer flat pixel index of each point; values outside ``0 .. num_pixels - 1``
            mark points to ignore.
        depth: (N,) non-negative depth (range) of each point, compared as float32; the smallest
            wins, and among equal depths the point with the smallest index.
        num_pixels: number of pixels of the image.

    Returns:
        (num_pixels,) int32 point index per pixel, -1 where no point landed.
    """
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    n = len(depth)
    _check_point_count(n)
    pixel = np.asarray(pixel, dtype=np.int64)
    pixel = np.where((pixel >= 0) & (pixel < num_pixels), pixel, num_pixels)
    keys = np.empty(n, dtype=np.uint64)
    halves = keys.view(np.uint32).reshape(n, 2)
    halves[:, _KEY_LO] = np.arange(n, dtype=np.uint32)
    halves[:, _KEY_HI] = depth.view(np.uint32)
    winner, _ = _scatter_min_keys(pixel, keys, np.empty(num_pixels + 1, dtype=np.uint64))
    return winner.copy()


def _check_point_count(n: int) -> None:
    if n >= 2**31 - 1:
        raise ValueError(f"at most 2**31 - 2 points per image, got {n}")


class RangeProjector:
    """Projects scans into range images with one configuration, reusing its work memory.

    A projection needs about 40 bytes of temporaries per point; a projector keeps them between
    calls (keep one per data-loading worker), which spares the allocation and, when the
    allocator has returned the memory to the system, its page faults (they can double the time
    of a call). Not thread-safe: give each thread its own. The returned arrays are always new.
    """

    def __init__(self, cfg: ProjectionConfig | None = None) -> None:
        self.cfg = cfg or ProjectionConfig()
        self._capacity = -1
        self._window: tuple[Calibration | None, CropWindow] | None = None

    def _reserve(self, n: int) -> None:
        """Work buffers for ``n`` points, carved from one allocation.

        One block, not a dozen arrays: once freed, glibc keeps a block this size in the heap for
        the next call instead of returning it to the system, so even a one-shot projector
        mostly avoids fresh pages.
        """
        if n <= self._capacity:
            return
        _check_point_count(n)
        cap = max(n, int(self._capacity * 1.25))
        num_pixels = self.cfg.height * self.cfg.width
        layout = (  # 8-byte types first keeps every view aligned
            ("_pixel", np.int64, (cap,)),
            ("_keys", np.uint64, (cap,)),
            ("_image", np.uint64, (num_pixels + 1,)),
            ("_xyz", np.float32, (3, cap)),
            ("_col", np.float32, (cap,)),
            ("_row", np.float32, (cap,)),
            ("_rng", np.float32, (cap,)),
            ("_keep", np.bool_, (cap,)),
            ("_mask", np.bool_, (cap,)),
        )
        sizes = [np.dtype(dt).itemsize * math.prod(shape) for _, dt, shape in layout]
        block = np.empty(sum(sizes), dtype=np.uint8)
        offset = 0
        for (name, dt, shape), size in zip(layout, sizes, strict=True):
            setattr(self, name, block[offset : offset + size].view(dt).reshape(shape))
            offset += size
        # The index half of every key never changes: write it once.
        self._key_halves = self._keys.view(np.uint32).reshape(cap, 2)
        self._key_halves[:, _KEY_LO] = np.arange(cap, dtype=np.uint32)
        self._capacity = cap

    def project(self, points: np.ndarray) -> RangeImage:
        """Range image of ``points`` ((N, 4) x, y, z, intensity or (N, 3)); see the module doc."""
        cfg = self.cfg
        pts = as_point_array(points)
        n = len(pts)
        self._reserve(n)
        h, w = cfg.height, cfg.width
        xyz = self._xyz[:, :n]
        col, row, rng = self._col[:n], self._row[:n], self._rng[:n]
        keep, mask, pixel = self._keep[:n], self._mask[:n], self._pixel[:n]
        np.copyto(xyz, pts[:, :3].T)
        _spherical_coordinates_into(xyz, cfg, col, row, rng)

        # Pixel: floor, then clamp into the image (reference); computed in float32 (exact for
        # integers below 2**24) and cast once. Dropped points go to the discard slot h * w.
        np.greater(rng, np.float32(cfg.min_range), out=keep)
        keep &= np.less(rng, np.float32(cfg.max_range), out=mask)
        np.floor(row, out=row)
        if cfg.outside_fov == "drop":
            keep &= np.greater_equal(row, np.float32(0.0), out=mask)
            keep &= np.less(row, np.float32(h), out=mask)
        np.clip(row, np.float32(0.0), np.float32(h - 1), out=row)
        np.floor(col, out=col)
        np.minimum(col, np.float32(w - 1), out=col)  # col is in [0, w]: only w itself is out
        row *= np.float32(w)
        row += col
        np.logical_not(keep, out=mask)
        np.putmask(row, mask, np.float32(h * w))
        np.copyto(pixel, row, casting="unsafe")

        np.copyto(self._key_halves[:n, _KEY_HI], rng.view(np.uint32))
        winner, nearest = _scatter_min_keys(pixel, self._keys[:n], self._image)
        point_index = winner.copy()
        valid = point_index >= 0
        range_img = np.where(valid, nearest, np.float32(0.0))
        return RangeImage(
            range=range_img.reshape(h, w),
            valid=valid.reshape(h, w),
            point_index=point_index.reshape(h, w),
            points=pts,
        )

    def crop_window(self, calib: Calibration | None = None) -> CropWindow:
        """The crop of ``cfg.crop`` (see :func:`crop_window`), kept for the last calibration."""
        if self._window is None or self._window[0] is not calib:
            self._window = (calib, crop_window(self.cfg, calib))
        return self._window[1]

    def model_input(self, points: np.ndarray, calib: Calibration | None = None) -> np.ndarray:
        """The LiDAR tower's input for ``points``; see :func:`lidar_range_input`."""
        return range_image_to_input(self.project(points), self.cfg, window=self.crop_window(calib))


def project_to_range_image(points: np.ndarray, cfg: ProjectionConfig | None = None) -> RangeImage:
    """Spherical range image of a scan (all of ``cfg``'s projection parameters; paper defaults).

    One-shot convenience around :class:`RangeProjector`, which allocates its work memory on
    every call; for many scans keep a projector (it reuses that memory).

    Args:
        points: (N, 4) x, y, z, intensity (or (N, 3), intensity then 0) in the LiDAR frame.
        cfg: projection parameters; ``ProjectionConfig()`` (the paper's) when None.

    Returns:
        The full (uncropped) :class:`RangeImage`; nearest point per pixel.
    """
    return RangeProjector(cfg).project(points)


def column_of_azimuth(azimuth: np.ndarray | float, width: int) -> np.ndarray:
    """Column coordinate (float, before flooring) of an azimuth ``atan2(y, x)`` in radians."""
    return 0.5 * (1.0 - np.asarray(azimuth, dtype=np.float64) / math.pi) * width


def row_of_elevation(elevation: np.ndarray | float, cfg: ProjectionConfig) -> np.ndarray:
    """Row coordinate (float, before flooring) of an elevation in radians (not clamped)."""
    fov_up = math.radians(cfg.fov_up)
    fov = fov_up - math.radians(cfg.fov_down)
    return (fov_up - np.asarray(elevation, dtype=np.float64)) / fov * cfg.height


def paper_crop_window(cfg: ProjectionConfig | None = None) -> CropWindow:
    """The paper's crop: the upper ``crop_rows`` rows and ``crop_azimuth_deg`` of azimuth centred
    on the forward direction (for 64 x 900 and 120 degrees: rows 0:32, columns 300:600)."""
    cfg = cfg or ProjectionConfig()
    if cfg.crop_rows > cfg.height:
        raise ConfigError(f"projection.crop_rows ({cfg.crop_rows}) exceeds projection.height ({cfg.height})")
    n_cols = max(1, round(cfg.width * cfg.crop_azimuth_deg / 360.0))
    col0 = round(cfg.width / 2 - n_cols / 2)
    return CropWindow(0, cfg.crop_rows, col0, col0 + n_cols)


def _image_border_pixels(width: int, height: int, samples: int = 64) -> np.ndarray:
    """(M, 2) pixel coordinates along the outer edges of an image (corners included)."""
    u = np.linspace(-0.5, width - 0.5, samples)
    v = np.linspace(-0.5, height - 0.5, samples)
    top = np.stack([u, np.full_like(u, -0.5)], axis=1)
    bottom = np.stack([u, np.full_like(u, height - 0.5)], axis=1)
    left = np.stack([np.full_like(v, -0.5), v], axis=1)
    right = np.stack([np.full_like(v, width - 0.5), v], axis=1)
    return np.concatenate([top, bottom, left, right])


def camera_view_directions(
    calib: Calibration, image_size: tuple[int, int] | None = None, samples: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions in the LiDAR frame of rays through the image's centre and its border.

    Returns ``(centre, border)``: (3,) and (M, 3). The rays start at the LiDAR origin: the
    camera-LiDAR offset (centimetres to decimetres) shifts directions by well under a degree
    beyond a few metres, less than a range-image column.
    """
    size = image_size or calib.image_size
    if size is None:
        raise LiplocError("calibration has no image size; the camera crop needs the image's (width, height)")
    w, h = size
    pixels = np.concatenate([[[(w - 1) / 2.0, (h - 1) / 2.0]], _image_border_pixels(w, h, samples)])
    homog = np.concatenate([pixels, np.ones((len(pixels), 1))], axis=1)
    rays_cam = np.linalg.solve(np.asarray(calib.K, dtype=np.float64), homog.T).T
    rays = rays_cam @ np.asarray(calib.T_lidar_cam, dtype=np.float64)[:3, :3].T
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    return rays[0], rays[1:]


def camera_crop_window(
    calib: Calibration, cfg: ProjectionConfig | None = None, image_size: tuple[int, int] | None = None
) -> CropWindow:
    """Rows and columns of the range image that the camera of ``calib`` sees.

    The azimuth and elevation span of the rays through the image border (in the LiDAR frame),
    rounded outward to whole pixels. Rows are clamped to the range image; columns are not wrapped
    (``col0`` may be negative, ``col1`` may exceed the width; see :class:`CropWindow`).

    Args:
        calib: calibration with ``T_cam_lidar``, ``P`` and ``image_size``.
        cfg: projection parameters (paper defaults when None).
        image_size: (width, height) of the image when ``calib.image_size`` is None.
    """
    cfg = cfg or ProjectionConfig()
    centre, border = camera_view_directions(calib, image_size)
    centre_az = math.atan2(centre[1], centre[0])
    az = np.arctan2(border[:, 1], border[:, 0])
    offset = (az - centre_az + math.pi) % (2 * math.pi) - math.pi  # relative to the optical axis
    elev = np.arcsin(np.clip(border[:, 2], -1.0, 1.0))
    centre_col = float(column_of_azimuth(centre_az, cfg.width))
    # Column coordinate decreases as azimuth increases (left is a lower column).
    cols = centre_col - offset * cfg.width / (2 * math.pi)
    rows = row_of_elevation(elev, cfg)
    eps = 1e-6  # keep an exact pixel edge from adding a column/row
    col0 = math.floor(cols.min() + eps)
    col1 = math.ceil(cols.max() - eps)
    col1 = min(col1, col0 + cfg.width)
    row0 = min(max(math.floor(rows.min() + eps), 0), cfg.height - 1)
    row1 = max(min(math.ceil(rows.max() - eps), cfg.height), row0 + 1)
    return CropWindow(row0, row1, col0, col1)


def crop_window(cfg: ProjectionConfig | None = None, calib: Calibration | None = None) -> CropWindow:
    """The crop of ``cfg.crop``: ``paper``, ``calib`` (needs ``calib``) or ``none`` (everything)."""
    cfg = cfg or ProjectionConfig()
    if cfg.crop == "paper":
        return paper_crop_window(cfg)
    if cfg.crop == "calib":
        if calib is None:
            raise LiplocError("projection.crop is 'calib' but no calibration was given for this scan")
        return camera_crop_window(calib, cfg)
    return CropWindow(0, cfg.height, 0, cfg.width)


def crop_range_image(image: np.ndarray, window: CropWindow) -> np.ndarray:
    """Crop the last two axes (rows, columns) of ``image``, wrapping columns around the panorama."""
    width = image.shape[-1]
    rows = image[..., window.row0 : window.row1, :]
    if window.col0 >= 0 and window.col1 <= width:
        return rows[..., window.col0 : window.col1]
    cols = np.arange(window.col0, window.col1) % width
    return np.take(rows, cols, axis=-1)


def lidar_input_channels(cfg: ProjectionConfig | None = None) -> int:
    """Channels of :func:`lidar_range_input`: 3 for a single channel (repeated), else one per channel."""
    cfg = cfg or ProjectionConfig()
    return 3 if len(cfg.channels) == 1 else len(cfg.channels)


def range_image_to_input(
    image: RangeImage,
    cfg: ProjectionConfig | None = None,
    calib: Calibration | None = None,
    window: CropWindow | None = None,
) -> np.ndarray:
    """Model input of a range image: 8-bit-scaled channels, empty pixels, crop, channel repeat.

    Channel values: range * ``range_scale``; intensity * ``intensity_scale``; (z - ``height_min``)
    * ``height_scale``; each clipped to 0..255 and, with ``quantize``, truncated to whole levels
    as the reference code's uint8 cast does. Empty pixels get ``empty_value``. The crop is
    ``window`` when given, else the one of ``cfg.crop`` (see :func:`crop_window`).

    Returns:
        (C, H', W') float32 in the 0..255 scale (before normalisation), cropped.
    """
    cfg = cfg or ProjectionConfig()
    window = window or crop_window(cfg, calib)
    valid = crop_range_image(image.valid, window)
    scale_offset = {
        "range": (cfg.range_scale, 0.0),
        "intensity": (cfg.intensity_scale, 0.0),
        "height": (cfg.height_scale, -cfg.height_min * cfg.height_scale),
    }
    channels = []
    for name in cfg.channels:
        scale, offset = scale_offset[name]
        values = crop_range_image(image.channel(name), window) * np.float32(scale) + np.float32(offset)
        np.clip(values, 0.0, 255.0, out=values)
        if cfg.quantize:
            np.floor(values, out=values)
        values[~valid] = cfg.empty_value
        channels.append(values)
    stacked = np.stack(channels)
    if len(channels) == 1:
        stacked = np.repeat(stacked, 3, axis=0)
    return stacked.astype(np.float32, copy=False)


def lidar_range_input(
    points: np.ndarray, cfg: ProjectionConfig | None = None, calib: Calibration | None = None
) -> np.ndarray:
    """The LiDAR tower's input for a scan: (C, H', W') float32 in 0..255 (paper: 3 x 32 x 300).

    Projection, 8-bit scaling, empty value and crop as set in ``cfg`` (see
    :func:`project_to_range_image` and :func:`range_image_to_input`); ``calib`` is needed for
    ``crop="calib"``. Resizing to the network's size is left to the data pipeline.
    """
    cfg = cfg or ProjectionConfig()
    return range_image_to_input(project_to_range_image(points, cfg), cfg, calib)
