"""Sparse camera depth image: real KITTI geometry, nearest-wins, scaling, model input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import require_shared_data

from liploc.config import ProjectionConfig
from liploc.datasets import Calibration, open_dataset
from liploc.datasets.scan import load_scan
from liploc.errors import LiplocError
from liploc.lidar import camera_depth_image, camera_depth_input, project_to_camera, scale_calibration

# LiDAR (x forward, y left, z up) -> camera (x right, y down, z forward), no offset.
LIDAR_TO_CAMERA_AXES = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def simple_calib(width: int = 640, height: int = 480, f: float = 500.0) -> Calibration:
    k = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]])
    return Calibration(
        T_cam_lidar=LIDAR_TO_CAMERA_AXES, P=np.hstack([k, np.zeros((3, 1))]), image_size=(width, height)
    )


@pytest.fixture(scope="module")
def sample():
    reader = open_dataset(require_shared_data() / "kitti-raw-sample")
    frames = reader.frames(reader.sequences()[0])
    return frames[0].calib, [load_scan(f.scan_path) for f in frames[:4]]


# --- real KITTI geometry -----------------------------------------------------------------------


def test_forward_points_land_inside_image_02(sample) -> None:
    calib, scans = sample
    w, h = calib.image_size
    assert (w, h) == (1242, 375)
    for points in scans:
        u, v, depth = project_to_camera(points, calib)
        azimuth = np.degrees(np.arctan2(points[:, 1], points[:, 0]))
        elevation = np.degrees(np.arctan2(points[:, 2], np.hypot(points[:, 0], points[:, 1])))
        # Well inside the camera's view: 81 degrees wide, about +14 .. -15 degrees high.
        forward = (points[:, 0] > 3) & (np.abs(azimuth) < 38) & (elevation > -13)
        inside = (depth > 0) & (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)
        assert forward.sum() > 5000
        assert inside[forward].mean() > 0.98


def test_depth_image_covers_the_lower_part_not_the_sky(sample) -> None:
    calib, scans = sample
    h = calib.image_size[1]
    for points in scans:
        depth = camera_depth_image(points, calib)
        assert depth.shape == (375, 1242) and depth.dtype == np.float32
        rows = np.nonzero(depth)[0]
        assert len(rows) > 10_000
        # The HDL-64E sees from +2 degrees down: the upper quarter of the image (sky, high
        # facades) gets (almost) nothing, the points cover the lower two thirds.
        assert (rows < h / 4).mean() < 0.02
        assert np.percentile(rows, 5) > h / 3 - 10
        assert rows.max() > 0.95 * h


def test_near_ground_points_project_below_the_horizon(sample) -> None:
    calib, scans = sample
    horizon_row = calib.P[1, 2]  # principal point row (the camera looks about level)
    for points in scans:
        ground = (points[:, 2] < -1.4) & (points[:, 0] > 5) & (points[:, 0] < 30) & (np.abs(points[:, 1]) < 5)
        _, v, depth = project_to_camera(points[ground], calib)
        assert ground.sum() > 1000
        assert (depth > 0).all()
        assert (v > horizon_row).all()


def test_points_behind_the_camera_are_excluded(sample) -> None:
    calib, scans = sample
    behind = scans[0][scans[0][:, 0] < -0.5]
    assert len(behind) > 10_000
    assert not camera_depth_image(behind, calib).any()
    depth = camera_depth_image(scans[0], calib)
    _, _, z = project_to_camera(scans[0], calib)
    assert depth[depth > 0].min() > 0.1 and depth.max() < z.max() + 1e-3


# --- synthetic geometry ------------------------------------------------------------------------


def test_point_straight_ahead_lands_on_the_principal_point() -> None:
    calib = simple_calib(641, 481)  # odd sizes: the principal point is a pixel centre
    depth = camera_depth_image(np.array([[10.0, 0.0, 0.0, 0.5]], dtype=np.float32), calib)
    assert np.argwhere(depth).tolist() == [[240, 320]]
    assert depth[240, 320] == pytest.approx(10.0)


def test_point_lands_at_its_projection() -> None:
    calib = simple_calib()
    point = np.array([[12.0, 2.0, -1.0]])  # 2 m left, 1 m down, 12 m ahead
    depth = camera_depth_image(point, calib)
    u = 319.5 + 500 * (-2.0) / 12.0  # camera x = -y_lidar
    v = 239.5 + 500 * 1.0 / 12.0  # camera y = -z_lidar
    assert np.argwhere(depth).tolist() == [[math.floor(v + 0.5), math.floor(u + 0.5)]]


def test_nearest_point_wins_and_limits_apply() -> None:
    calib = simple_calib()
    ray = np.array([0.2, 0.1, -0.05])
    points = np.stack([ray * 100, ray * 20, ray * 40])  # same pixel, depth 20, 4 and 8 m
    depth = camera_depth_image(points, calib)
    assert depth[depth > 0].tolist() == [pytest.approx(4.0)]
    assert depth[depth > 0].tolist() == camera_depth_image(points[::-1], calib)[depth > 0].tolist()
    far_only = camera_depth_image(points, calib, min_depth=5.0, max_depth=10.0)
    assert far_only[far_only > 0].tolist() == [pytest.approx(8.0)]


def test_scaled_output_matches_scaled_intrinsics_and_block_minimum(sample) -> None:
    calib, scans = sample
    size = (1242, 374)  # even height so that half size is an exact 2 x 2 block
    full = camera_depth_image(scans[0], calib, image_size=size)
    half = camera_depth_image(scans[0], calib, image_size=size, out_size=(621, 187))
    assert half.shape == (187, 621)
    np.testing.assert_array_equal(
        half, camera_depth_image(scans[0], scale_calibration(calib, (621, 187), size))
    )
    # Each half-size pixel holds the nearest depth of its 2 x 2 block of full-size pixels.
    blocks = np.where(full > 0, full, np.inf).reshape(187, 2, 621, 2).min(axis=(1, 3))
    np.testing.assert_array_equal(half, np.where(np.isfinite(blocks), blocks, 0))


def test_scaled_size_224(sample) -> None:
    calib, scans = sample
    full = camera_depth_image(scans[0], calib)
    small = camera_depth_image(scans[0], calib, out_size=(224, 224))
    assert small.shape == (224, 224)
    assert (small > 0).mean() > 3 * (full > 0).mean()  # 1/5.5 of the columns: much denser
    # The same part of the image is hit: nothing in the upper quarter, much of the lower half.
    assert (small[:56] > 0).mean() < 0.02 and (full[:93] > 0).mean() < 0.02
    assert (small[112:] > 0).mean() > 0.15 > (full[188:] > 0).mean()


def test_model_input() -> None:
    calib = simple_calib()
    points = np.array([[10.0, 0.0, 0.0, 0.1], [60.0, 3.0, 0.0, 0.1]], dtype=np.float32)  # 60 m: dropped
    x = camera_depth_input(points, calib, ProjectionConfig())
    assert x.shape == (3, 480, 640) and x.dtype == np.float32
    hit = x[0] > 0
    assert hit.sum() == 1
    assert x[0][hit].tolist() == [math.floor(np.float32(10.0) * np.float32(5.1))]
    np.testing.assert_array_equal(x[0], x[2])


def test_missing_image_size_is_a_clear_error() -> None:
    calib = Calibration(T_cam_lidar=LIDAR_TO_CAMERA_AXES, P=simple_calib().P, image_size=None)
    with pytest.raises(LiplocError, match="no image size"):
        camera_depth_image(np.zeros((1, 4), dtype=np.float32), calib)
    assert camera_depth_image(np.zeros((1, 4), dtype=np.float32), calib, image_size=(8, 6)).shape == (6, 8)
