"""A scan as a LiDAR moved sideways would have seen it: training pairs across lanes.

Pairs of a camera image and the scan of the same spot teach the towers to match one viewpoint
only, but a vehicle in the next lane sees the street about 3 m sideways of the map's scans, and on
the demo's held-out streets the image embedding did not carry across that (one image found the
right place a quarter of the time from the other lane, half the time from the map's lane). Moving
the points by the opposite of a sideways offset gives the scan of a LiDAR (and camera: the rig
moves as one) at that offset, up to what the real LiDAR could not see: surfaces it had behind
nearer ones stay empty, and the one-pixel gaps that a nearer viewpoint opens between
neighbouring returns are closed from their neighbours (:func:`fill_small_gaps`).
"""

from __future__ import annotations

import numpy as np

from liploc.lidar.range_image import CropWindow, RangeImage

GAP_NEIGHBOURS = 3
"""An empty pixel is a gap (closed) when at least this many of its 8 neighbours are filled. On the
demo's held-out drives, a scan moved 3 m to the partner drive's lane is empty where that drive's
real scan is not, or the reverse, on 19 % of the crop's pixels with 3 (25 % with no closing; the
scan as taken, not moved: 13 %)."""


def shift_points_sideways(points: np.ndarray, offset_m: float) -> np.ndarray:
    """The (N, C) points (x forward, y left, z up) as seen from ``offset_m`` metres to the left."""
    moved = np.array(points, dtype=np.float32, copy=True)
    moved[:, 1] -= np.float32(offset_m)
    return moved


def fill_small_gaps(
    image: RangeImage, min_neighbours: int = GAP_NEIGHBOURS, window: CropWindow | None = None
) -> RangeImage:
    """``image`` with each empty pixel that has ``min_neighbours`` of its 8 neighbours filled taking
    the nearest of them (range and point); large empty regions (sky, occlusion shadows) stay.
    Columns wrap around (the image is a panorama); rows do not. With ``window``, only the pixels
    in it are closed (what a cropped input needs, at a fraction of the cost); the rest is as it was.
    """
    h, w = image.shape
    r0, r1, c0, c1 = (0, h, 0, w) if window is None else window.as_tuple()
    # The region and a one-pixel border: rows outside the image are empty, columns wrap.
    rows = np.arange(r0 - 1, r1 + 1)
    cols = np.arange(c0 - 1, c1 + 1) % w
    inside = (rows >= 0) & (rows < h)
    ranges = np.full((len(rows), len(cols)), np.inf, dtype=np.float32)
    index = np.full((len(rows), len(cols)), -1, dtype=image.point_index.dtype)
    valid = np.zeros((len(rows), len(cols)), dtype=bool)
    valid[inside] = image.valid[rows[inside]][:, cols]
    ranges[inside] = np.where(valid[inside], image.range[rows[inside]][:, cols], np.inf)
    index[inside] = image.point_index[rows[inside]][:, cols]
    rh, rw = r1 - r0, c1 - c0
    nearest = np.full((rh, rw), np.inf, dtype=np.float32)
    nearest_index = np.full((rh, rw), -1, dtype=image.point_index.dtype)
    filled = np.zeros((rh, rw), dtype=np.int32)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == 0 and dc == 0:
                continue
            r = ranges[1 + dr : 1 + dr + rh, 1 + dc : 1 + dc + rw]
            filled += r < np.inf
            closer = r < nearest
            np.copyto(nearest, r, where=closer)
            np.copyto(nearest_index, index[1 + dr : 1 + dr + rh, 1 + dc : 1 + dc + rw], where=closer)
    gap = ~valid[1:-1, 1:-1] & (filled >= min_neighbours)
    out_rows, out_cols = np.ix_(rows[1:-1], cols[1:-1])
    out_range, out_valid, out_index = image.range.copy(), image.valid.copy(), image.point_index.copy()
    out_range[out_rows, out_cols] = np.where(gap, nearest, image.range[out_rows, out_cols])
    out_valid[out_rows, out_cols] |= gap
    out_index[out_rows, out_cols] = np.where(gap, nearest_index, image.point_index[out_rows, out_cols])
    return RangeImage(range=out_range, valid=out_valid, point_index=out_index, points=image.points)
