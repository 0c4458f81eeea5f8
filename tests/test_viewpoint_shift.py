"""Scans seen from a LiDAR moved sideways: the geometry, the gap closing, and the training pairs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import write_kitti_odometry

from liploc.config import ProjectionConfig, load_config
from liploc.lidar import (
    CropWindow,
    RangeImage,
    RangeProjector,
    crop_range_image,
    fill_small_gaps,
    shift_points_sideways,
)
from liploc.lidar.range_image import column_of_azimuth, row_of_elevation
from liploc.runtime.data_roots import resolve_data_roots, split_frames
from liploc.runtime.frame_dataset import PairDataset
from liploc.runtime.inputs import lidar_input


def test_points_move_opposite_to_the_lidar_and_keep_their_other_values() -> None:
    points = np.array([[10.0, 0.0, -1.0, 0.25], [-3.0, 4.0, 2.0, 0.75]], dtype=np.float32)
    moved = shift_points_sideways(points, 2.0)  # the LiDAR 2 m to the left
    np.testing.assert_array_equal(moved, [[10.0, -2.0, -1.0, 0.25], [-3.0, 2.0, 2.0, 0.75]])
    assert moved.dtype == np.float32
    assert points[0, 1] == 0.0  # the scan itself is left as it was


def _wall(y: float) -> np.ndarray:
    """A dense wall at y = ``y`` (a street side), 40 m long, 1.5 m below to 2.5 m above the LiDAR."""
    x, z = np.meshgrid(np.linspace(-20.0, 20.0, 2001), np.linspace(-1.5, 2.5, 81))
    wall = np.column_stack([x.ravel(), np.full(x.size, y), z.ravel(), np.full(x.size, 0.5)])
    return wall.astype(np.float32)


@pytest.mark.parametrize(("offset", "expected"), [(2.0, 4.0), (-1.5, 7.5), (0.0, 6.0)])
def test_a_wall_on_the_left_comes_closer_when_the_lidar_moves_left(offset: float, expected: float) -> None:
    cfg = ProjectionConfig()
    image = RangeProjector(cfg).project(shift_points_sideways(_wall(6.0), offset))
    col = int(column_of_azimuth(math.pi / 2, cfg.width))  # straight to the left
    row = int(row_of_elevation(0.0, cfg))  # level with the LiDAR
    assert image.valid[row, col]
    assert image.range[row, col] == pytest.approx(expected, abs=0.02)


def _image(ranges: np.ndarray) -> RangeImage:
    valid = np.isfinite(ranges)
    index = np.where(valid, np.arange(ranges.size).reshape(ranges.shape), -1).astype(np.int64)
    points = np.zeros((ranges.size, 4), dtype=np.float32)
    return RangeImage(np.where(valid, ranges, 0.0).astype(np.float32), valid, index, points)


def test_one_pixel_gaps_take_their_nearest_neighbour_and_large_holes_stay() -> None:
    ranges = np.tile(np.arange(1.0, 11.0, dtype=np.float64), (8, 1))  # range = column + 1
    ranges[0:3] = np.inf  # the sky: three empty rows at the top
    ranges[5, 4] = np.inf  # a gap inside a surface
    ranges[6, 0] = np.inf  # a gap on the panorama's seam: its left neighbours are in column 9
    filled = fill_small_gaps(_image(ranges))

    assert filled.valid[5, 4] and filled.range[5, 4] == 4.0  # nearest of columns 3..5
    assert filled.point_index[5, 4] == 4 * 10 + 3  # row 4, column 3 (the first nearest met)
    assert filled.valid[6, 0] and filled.range[6, 0] == 1.0
    assert not filled.valid[0:2].any()  # the sky's rows with fewer than 3 filled neighbours
    assert filled.valid[2].all()  # its lowest row has 3 filled neighbours below: a closed edge
    assert filled.valid[3:].all()
    # Pixels that were filled keep their range and point.
    was = np.isfinite(ranges)
    np.testing.assert_array_equal(filled.range[was], ranges[was])


def test_closing_gaps_in_a_window_is_closing_them_everywhere_then_cropping() -> None:
    rng = np.random.default_rng(5)
    ranges = rng.uniform(1.0, 50.0, (16, 30))
    ranges[rng.random(ranges.shape) < 0.35] = np.inf
    image = _image(ranges)
    everywhere = fill_small_gaps(image)
    for window in (CropWindow(0, 8, 10, 20), CropWindow(4, 16, -6, 5), CropWindow(0, 16, 25, 34)):
        part = fill_small_gaps(image, window=window)
        for name in ("range", "valid", "point_index"):
            got, expected = getattr(part, name), getattr(everywhere, name)
            np.testing.assert_array_equal(crop_range_image(got, window), crop_range_image(expected, window))
        outside = np.ones(ranges.shape, dtype=bool)
        rows, cols = np.arange(window.row0, window.row1), np.arange(window.col0, window.col1) % 30
        outside[np.ix_(rows, cols)] = False
        np.testing.assert_array_equal(part.valid[outside], image.valid[outside])  # left as it was


def _dataset_root(tmp_path: Path) -> Path:
    root = tmp_path / "kitti"
    write_kitti_odometry(root, "00", 6, image_size=(64, 20), n_points=4000, seed=3)
    return root


def _dataset(root: Path, train: bool, *overrides: str) -> PairDataset:
    cfg = load_config(
        None, ["data.image_size=[24, 40]", "data.cache=false", "data.datasets=[{train: ['00']}]", *overrides]
    )
    cfg = resolve_data_roots(cfg, [root])
    return PairDataset(split_frames(cfg.data, "train"), cfg, train=train, raw=True)


@pytest.mark.parametrize("lidar_kind", ["range", "camera_depth"])
def test_training_pairs_see_some_scans_from_the_side(tmp_path: Path, lidar_kind: str) -> None:
    root = _dataset_root(tmp_path)
    kind = f"data.lidar_input={lidar_kind}"
    moved = _dataset(root, True, kind, "data.lidar_sideways_m=3.5", "data.lidar_sideways_p=0.5")
    plain = _dataset(root, True, kind)
    offsets = []
    for epoch in range(4):
        for index in range(len(moved)):
            key = (epoch, index)
            sample, reference = moved[key], plain[key]
            # The image side and the dropout of both inputs are the same draws as without the move.
            np.testing.assert_array_equal(sample["image"], reference["image"])
            np.testing.assert_array_equal(sample["lidar_holes"], reference["lidar_holes"])
            stream = np.random.SeedSequence([moved.seed, epoch, index]).spawn(3)[2]
            offset = moved.sideways_m(stream)
            offsets.append(offset)
            expected = lidar_input(moved.frames[index], moved.config, sideways_m=offset)
            np.testing.assert_array_equal(sample["lidar"], expected)
            if offset:
                assert not np.array_equal(sample["lidar"], reference["lidar"])
            else:
                np.testing.assert_array_equal(sample["lidar"], reference["lidar"])
            np.testing.assert_array_equal(moved[key]["lidar"], sample["lidar"])  # repeatable
    moved_share = np.mean([o != 0 for o in offsets])
    assert 0.25 < moved_share < 0.75
    assert max(abs(o) for o in offsets) <= 3.5 and min(offsets) < -1.0 < 1.0 < max(offsets)


def test_evaluation_and_the_paper_default_never_move_a_scan(tmp_path: Path) -> None:
    root = _dataset_root(tmp_path)
    evaluation = _dataset(root, False, "data.lidar_sideways_m=3.5", "data.lidar_sideways_p=1.0")
    paper = _dataset(root, True)
    assert paper.config.data.lidar_sideways_m == 0.0
    for index in range(len(evaluation)):
        scan_as_taken = lidar_input(evaluation.frames[index], evaluation.config)
        np.testing.assert_array_equal(evaluation[index]["lidar"], scan_as_taken)
        np.testing.assert_array_equal(paper[(1, index)]["lidar"], scan_as_taken)
