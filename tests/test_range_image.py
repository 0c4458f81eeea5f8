"""Spherical range image: pixel mapping, nearest-wins, range limits, model input, crops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import require_shared_data

from liploc.config import ProjectionConfig, load_config
from liploc.datasets import Calibration, open_dataset
from liploc.datasets.scan import load_scan
from liploc.errors import ConfigError, LiplocError
from liploc.lidar import (
    CropWindow,
    RangeProjector,
    camera_crop_window,
    crop_range_image,
    lidar_input_channels,
    lidar_range_input,
    nearest_point_per_pixel,
    paper_crop_window,
    project_to_range_image,
)


@pytest.fixture(scope="module")
def sample_frames():
    reader = open_dataset(require_shared_data() / "kitti-raw-sample")
    return reader.frames(reader.sequences()[0])


@pytest.fixture(scope="module")
def sample_scans(sample_frames):
    return [load_scan(f.scan_path) for f in sample_frames]


def point_at(range_m: float, azimuth_deg: float, elevation_deg: float, intensity: float = 0.5) -> list[float]:
    """A LiDAR point (x forward, y left, z up) at the given range, azimuth atan2(y, x), elevation."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return [
        range_m * math.cos(el) * math.cos(az),
        range_m * math.cos(el) * math.sin(az),
        range_m * math.sin(el),
        intensity,
    ]


def expected_pixel(cfg: ProjectionConfig, azimuth_deg: float, elevation_deg: float) -> tuple[int, int]:
    """(row, col) from the documented mapping, in float64 (test points avoid pixel edges)."""
    col = (0.5 - azimuth_deg / 360.0) * cfg.width
    row = (cfg.fov_up - elevation_deg) / (cfg.fov_up - cfg.fov_down) * cfg.height
    return min(max(math.floor(row), 0), cfg.height - 1), min(max(math.floor(col), 0), cfg.width - 1)


def reference_range_image(points: np.ndarray, cfg: ProjectionConfig) -> tuple[np.ndarray, np.ndarray]:
    """The reference code's approach: sort far to near (stable), write in that order."""
    h, w = cfg.height, cfg.width
    fov_down = cfg.fov_down / 180.0 * np.pi
    fov = abs(fov_down) + abs(cfg.fov_up / 180.0 * np.pi)
    depth = np.linalg.norm(points[:, :3], 2, axis=1)
    keep = np.nonzero((depth > cfg.min_range) & (depth < cfg.max_range))[0]
    pts, depth = points[keep], depth[keep]
    proj_x = 0.5 * (-np.arctan2(pts[:, 1], pts[:, 0]) / np.pi + 1.0) * w
    proj_y = (1.0 - (np.arcsin(pts[:, 2] / depth) + abs(fov_down)) / fov) * h
    cols = np.clip(np.floor(proj_x), 0, w - 1).astype(int)
    rows = np.clip(np.floor(proj_y), 0, h - 1).astype(int)
    order = np.argsort(depth, kind="stable")[::-1]
    rng = np.zeros((h, w), dtype=np.float32)
    idx = np.full((h, w), -1)
    rng[rows[order], cols[order]] = depth[order]
    idx[rows[order], cols[order]] = keep[order]
    return rng, idx


# --- pixel mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("azimuth", "elevation"),
    [(0.1, 0.1), (0.1, -10.1), (90.1, -5.1), (-90.1, 1.1), (179.9, -20.1), (-179.9, -24.1), (45.3, -2.2)],
)
def test_known_point_lands_in_expected_pixel(azimuth: float, elevation: float) -> None:
    cfg = ProjectionConfig()
    image = project_to_range_image(np.array([point_at(10.0, azimuth, elevation)], dtype=np.float32), cfg)
    row, col = expected_pixel(cfg, azimuth, elevation)
    assert image.valid.sum() == 1
    assert image.valid[row, col]
    assert image.range[row, col] == pytest.approx(10.0, abs=1e-4)
    assert image.point_index[row, col] == 0


def test_forward_point_is_in_the_middle_of_the_paper_crop() -> None:
    cfg = ProjectionConfig()
    ahead = np.array([[10.0, 0.0, 0.0, 0.3]], dtype=np.float32)  # straight ahead, elevation 0
    image = project_to_range_image(ahead, cfg)
    rows, cols = np.nonzero(image.valid)
    assert cols.tolist() == [cfg.width // 2]  # +x is the middle column of the panorama
    assert rows.tolist() == [math.floor(cfg.fov_up / (cfg.fov_up - cfg.fov_down) * cfg.height)]
    crop = lidar_range_input(ahead, cfg)
    assert crop.shape == (3, 32, 300)
    hit = np.argwhere(crop[0] != cfg.empty_value)
    assert hit.tolist() == [[rows[0], 150]]  # middle column of the 300-column crop


def test_left_is_left_of_right_as_in_the_camera_image() -> None:
    cfg = ProjectionConfig()
    left, right = point_at(10, 30, -5), point_at(10, -30, -5)  # +y is left
    image = project_to_range_image(np.array([left, right], dtype=np.float32), cfg)
    col_of = {int(image.point_index[r, c]): c for r, c in np.argwhere(image.valid)}
    assert col_of[0] < cfg.width // 2 < col_of[1]


def test_points_above_the_field_of_view_are_clamped_or_dropped() -> None:
    pts = np.array([point_at(10, 5, 10.0), point_at(10, 5, -40.0)], dtype=np.float32)
    clamped = project_to_range_image(pts, ProjectionConfig())
    assert clamped.valid[0].sum() == 1 and clamped.valid[-1].sum() == 1
    dropped = project_to_range_image(pts, ProjectionConfig(outside_fov="drop"))
    assert not dropped.valid.any()


def test_configurable_size_and_field_of_view() -> None:
    cfg = ProjectionConfig(height=32, width=1024, fov_up=10.0, fov_down=-30.0)
    az, el = 20.3, 5.3  # above the paper's fov_up, inside this one
    image = project_to_range_image(np.array([point_at(7, az, el)], dtype=np.float32), cfg)
    assert image.shape == (32, 1024)
    assert image.valid[expected_pixel(cfg, az, el)]


# --- nearest wins, limits ----------------------------------------------------------------------


def test_nearest_point_wins_whatever_the_order() -> None:
    far, near = point_at(20, 10.1, -3.1, 0.9), point_at(5, 10.1, -3.1, 0.2)
    for pts, near_index in (([far, near], 1), ([near, far], 0)):
        image = project_to_range_image(np.array(pts, dtype=np.float32))
        (r, c), *_ = np.argwhere(image.valid)
        assert image.valid.sum() == 1
        assert image.range[r, c] == pytest.approx(5.0, abs=1e-4)
        assert image.point_index[r, c] == near_index
        assert image.intensity[r, c] == pytest.approx(0.2)


def test_equal_ranges_go_to_the_first_point() -> None:
    p = point_at(12, -33.3, -7.7)
    pts = np.array([p, p, p], dtype=np.float32)
    pts[:, 3] = [0.1, 0.2, 0.3]
    image = project_to_range_image(pts)
    assert image.point_index[image.valid].tolist() == [0]
    assert image.intensity[image.valid].tolist() == [pytest.approx(0.1)]


def test_ranges_outside_min_and_max_are_dropped() -> None:
    cfg = ProjectionConfig(min_range=2.0)
    ranges = [1.0, 2.0, 2.5, 49.9, 50.0, 60.0]
    axes = np.array([[1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])  # 6 pixels
    pts = np.concatenate([axes * np.array(ranges)[:, None], np.zeros((6, 1))], axis=1).astype(np.float32)
    pts = np.vstack([pts, np.zeros((1, 4), dtype=np.float32)])  # a zero-range point
    image = project_to_range_image(pts, cfg)
    kept = sorted(image.range[image.valid].tolist())
    assert kept == [pytest.approx(2.5, abs=1e-4), pytest.approx(49.9, abs=1e-3)]


def test_non_finite_points_are_dropped() -> None:
    pts = np.array([point_at(10, 1.1, -1.1), [np.nan, 1, 1, 0], [np.inf, 0, 0, 0]], dtype=np.float32)
    image = project_to_range_image(pts)
    assert image.valid.sum() == 1


def test_matches_reference_approach_on_real_scans(sample_scans) -> None:
    cfg = ProjectionConfig()
    for points in sample_scans[:3]:
        ours = project_to_range_image(points, cfg)
        ref_range, ref_index = reference_range_image(points, cfg)
        np.testing.assert_array_equal(ours.point_index, ref_index)
        np.testing.assert_array_equal(ours.range, ref_range)


def test_matches_reference_approach_with_many_ties() -> None:
    rng = np.random.default_rng(3)
    base = np.concatenate([rng.normal(0, 15, (4000, 3)), rng.random((4000, 1))], axis=1).astype(np.float32)
    pts = base[rng.integers(0, len(base), 20000)]  # duplicated points: equal ranges in a pixel
    cfg = ProjectionConfig(height=16, width=90)  # coarse: many points per pixel
    ours = project_to_range_image(pts, cfg)
    ref_range, ref_index = reference_range_image(pts, cfg)
    np.testing.assert_array_equal(ours.point_index, ref_index)
    np.testing.assert_array_equal(ours.range, ref_range)


def test_nearest_point_per_pixel_ignores_out_of_range_pixels() -> None:
    winner = nearest_point_per_pixel(np.array([0, 0, 2, 5, -1]), np.array([3.0, 1.0, 2.0, 0.5, 0.1]), 4)
    assert winner.tolist() == [1, -1, 2, -1]


# --- channels and model input ------------------------------------------------------------------


def test_channels_hold_the_winning_point() -> None:
    pts = np.array([point_at(10, 5.3, -4.4, 0.25), point_at(30, 5.3, -4.4, 0.75)], dtype=np.float32)
    image = project_to_range_image(pts)
    (r, c), *_ = np.argwhere(image.valid)
    assert image.height[r, c] == pytest.approx(pts[0, 2])
    assert image.intensity[r, c] == pytest.approx(0.25)
    assert image.channel("range")[r, c] == pytest.approx(10.0, abs=1e-4)
    assert (image.height[~image.valid] == 0).all() and (image.intensity[~image.valid] == 0).all()
    with pytest.raises(ValueError, match="unknown range-image channel"):
        image.channel("colour")


def test_three_column_points_have_zero_intensity() -> None:
    image = project_to_range_image(np.array([point_at(8, 1.3, -2.2)[:3]], dtype=np.float64))
    assert image.valid.sum() == 1 and not image.intensity.any()


def test_model_input_scaling_and_empty_value() -> None:
    cfg = ProjectionConfig()
    pts = np.array([point_at(10, 0.2, -3.1), point_at(33.3, 20.2, -6.1)], dtype=np.float32)
    image = project_to_range_image(pts, cfg)
    x = lidar_range_input(pts, cfg)
    assert x.shape == (3, 32, 300) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], x[1])
    np.testing.assert_array_equal(x[0], x[2])  # one channel repeated to 3
    window = paper_crop_window(cfg)
    valid = crop_range_image(image.valid, window)
    ranges = crop_range_image(image.range, window)[valid]
    # 8 bits as the reference: range * 5.1 in float32, truncated like a uint8 cast.
    expected = (ranges * np.float32(cfg.range_scale)).astype(np.uint8).astype(np.float32)
    np.testing.assert_array_equal(x[0][valid], expected)
    assert valid.sum() == 2
    assert (x[0][~valid] == 251).all()
    custom = lidar_range_input(pts, ProjectionConfig(empty_value=0.0, quantize=False))
    assert (custom[0][~valid] == 0).all()
    assert sorted(custom[0][valid].tolist()) == pytest.approx(sorted(ranges * 5.1), rel=1e-5)


def test_model_input_with_several_channels() -> None:
    cfg = ProjectionConfig(channels=["range", "intensity", "height"], crop="none")
    pts = np.array([point_at(10, 0.2, -5.1, 0.5)], dtype=np.float32)
    x = lidar_range_input(pts, cfg)
    assert x.shape == (3, 64, 900) == (lidar_input_channels(cfg), cfg.height, cfg.width)
    r, c = expected_pixel(cfg, 0.2, -5.1)
    range_m = project_to_range_image(pts, cfg).range[r, c]
    assert x[0, r, c] == math.floor(range_m * np.float32(5.1))
    assert x[1, r, c] == math.floor(0.5 * 255)
    assert x[2, r, c] == math.floor((pts[0, 2] + 3.0) * 25.5)
    assert (x[:, :, :c] == 251).all()
    two = ProjectionConfig(channels=["range", "height"])
    assert lidar_range_input(pts, two).shape == (2, 32, 300) and lidar_input_channels(two) == 2


def test_empty_scan_gives_an_empty_image() -> None:
    image = project_to_range_image(np.zeros((0, 4), dtype=np.float32))
    assert not image.valid.any() and not image.height.any()
    assert (lidar_range_input(np.zeros((0, 4), dtype=np.float32)) == 251).all()


def test_bad_point_array_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"expected points of shape \(N, 3\)"):
        project_to_range_image(np.zeros((10, 2), dtype=np.float32))


def test_projector_reuses_memory_without_touching_earlier_results(sample_scans) -> None:
    projector = RangeProjector()
    small = projector.project(sample_scans[-1])  # the smallest scan first: buffers then grow
    first = small.range.copy()
    big = projector.project(sample_scans[0])
    again = projector.project(sample_scans[-1])
    np.testing.assert_array_equal(small.range, first)
    np.testing.assert_array_equal(again.range, first)
    np.testing.assert_array_equal(big.point_index, project_to_range_image(sample_scans[0]).point_index)


def test_input_points_are_not_modified() -> None:
    pts = np.asfortranarray(np.array([point_at(10, 3.3, -2.2), point_at(20, -3.3, -2.2)], dtype=np.float32))
    before = pts.copy()
    project_to_range_image(pts)
    np.testing.assert_array_equal(pts, before)


def test_config_rejects_inverted_limits() -> None:
    with pytest.raises(ConfigError, match="fov_up"):
        load_config(overrides=["projection.fov_up=-30"])
    with pytest.raises(ConfigError, match="max_range"):
        load_config(overrides=["projection.min_range=60"])


# --- crops -------------------------------------------------------------------------------------


def test_paper_crop_window() -> None:
    assert paper_crop_window(ProjectionConfig()).as_tuple() == (0, 32, 300, 600)
    assert paper_crop_window(ProjectionConfig(width=1024, crop_azimuth_deg=90)).as_tuple() == (
        0,
        32,
        384,
        640,
    )
    with pytest.raises(ConfigError, match="crop_rows"):
        paper_crop_window(ProjectionConfig(crop_rows=65))


def test_crop_wraps_around_the_panorama() -> None:
    image = np.arange(4 * 10).reshape(4, 10)
    cropped = crop_range_image(image, CropWindow(1, 3, -2, 3))
    np.testing.assert_array_equal(cropped, np.roll(image, 2, axis=1)[1:3, :5])


def test_real_scans_fill_about_seventy_percent_of_the_paper_crop(sample_scans) -> None:
    cfg = ProjectionConfig()
    window = paper_crop_window(cfg)
    ratios, mean_ranges = [], []
    for points in sample_scans:
        image = project_to_range_image(points, cfg)
        ratios.append(crop_range_image(image.valid, window).mean())
        mean_ranges.append(image.range[image.valid].mean())
        x = lidar_range_input(points, cfg)
        assert x.shape == (3, 32, 300)
        assert (x[0][~crop_range_image(image.valid, window)] == 251).all()
    assert all(0.6 < r < 0.9 for r in ratios)
    assert 0.65 < np.mean(ratios) < 0.85
    assert 6 < np.mean(mean_ranges) < 16  # an urban street: mean range around 10 m


def test_calib_crop_spans_the_kitti_camera_view(sample_frames) -> None:
    calib = sample_frames[0].calib
    cfg = ProjectionConfig()
    window = camera_crop_window(calib, cfg)
    w, h = calib.image_size
    fx, fy, cx, cy = calib.P[0, 0], calib.P[1, 1], calib.P[0, 2], calib.P[1, 2]
    hfov = math.degrees(math.atan((w - 0.5 - cx) / fx) + math.atan((cx + 0.5) / fx))  # ~81 degrees
    vfov_down = math.degrees(math.atan((h - 0.5 - cy) / fy))  # ~15.7 degrees below the axis
    assert 78 < hfov < 84
    cols_deg = (window.col1 - window.col0) * 360.0 / cfg.width
    assert cols_deg == pytest.approx(hfov, abs=2.0)
    centre_col = (window.col0 + window.col1) / 2
    assert abs(centre_col - cfg.width / 2) < 5  # the camera looks forward (~1 degree off)
    assert window.row0 == 0  # the camera sees above the LiDAR's +3 degrees
    bottom_row = (cfg.fov_up + vfov_down) / (cfg.fov_up - cfg.fov_down) * cfg.height
    assert window.row1 == pytest.approx(bottom_row, abs=2.0)
    x = lidar_range_input(
        np.array([[10.0, 0, -1, 0]], dtype=np.float32), cfg.model_copy(update={"crop": "calib"}), calib
    )
    assert x.shape == (3, *window.shape)


def test_calib_crop_needs_a_calibration() -> None:
    with pytest.raises(LiplocError, match="no calibration"):
        lidar_range_input(np.zeros((1, 4), dtype=np.float32), ProjectionConfig(crop="calib"))


def test_calib_crop_of_a_rear_camera_wraps(sample_frames) -> None:
    calib = sample_frames[0].calib
    turn = np.diag([-1.0, -1.0, 1.0, 1.0])  # LiDAR frame turned 180 degrees about z
    rear = Calibration(T_cam_lidar=calib.T_cam_lidar @ turn, P=calib.P, image_size=calib.image_size)
    cfg = ProjectionConfig()
    window = camera_crop_window(rear, cfg)
    assert window.col0 < 0 < window.col1 < cfg.width  # straddles the back direction
    front = camera_crop_window(calib, cfg)
    assert window.shape[1] == pytest.approx(front.shape[1], abs=1)
    behind = np.array([[-10.0, 0.0, -1.0, 0.5]], dtype=np.float32)  # straight behind
    calib_cfg = cfg.model_copy(update={"crop": "calib"})
    x = lidar_range_input(behind, calib_cfg, rear)
    assert x.shape == (3, *window.shape)
    assert (x[0] != 251).sum() == 1
    projector = RangeProjector(calib_cfg)  # keeps the window of the last calibration
    np.testing.assert_array_equal(projector.model_input(behind, rear), x)
    assert projector.model_input(behind, calib).shape == (3, *front.shape)
    assert (projector.model_input(behind, calib)[0] == 251).all()  # behind is out of the front view
    np.testing.assert_array_equal(projector.model_input(behind, rear), x)
