"""Depth image -> LiDAR points: hand-computed pixels, the exact inverse of camera_depth, torch = numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bev_scene import calibration, lidar_scan
from conftest import SHARED_DATA, skip_unless_ci

from liploc.datasets.frame import Calibration
from liploc.lidar.back_projection import (
    back_project_depth,
    back_project_depth_calib,
    back_project_depth_torch,
    calibration_for_depth,
    pixel_rays,
    pixel_rays_torch,
)
from liploc.lidar.camera_depth import camera_depth_image, scale_calibration

POSED = SHARED_DATA / "kitti-raw-posed"

# Camera x = -LiDAR y, camera y = -LiDAR z, camera z = LiDAR x; X_cam = R X_lidar + t with
# t = (0, -0.08, -0.27): the LiDAR 0.27 m behind and 0.08 m above the camera.
T_CAM_LIDAR = np.array([[0, -1, 0, 0], [0, 0, -1, -0.08], [1, 0, 0, -0.27], [0, 0, 0, 1]], dtype=float)
# f = 10 px, principal point (2, 1.5), a baseline column p = (5, 0, 0) as KITTI's P2 has.
P_SMALL = np.array([[10.0, 0.0, 2.0, 5.0], [0.0, 10.0, 1.5, 0.0], [0.0, 0.0, 1.0, 0.0]])


def small_depth() -> np.ndarray:
    depth = np.zeros((4, 5), dtype=np.float32)  # H = 4, W = 5
    depth[0, 0] = 2.0
    depth[1, 3] = 10.0
    depth[3, 2] = 4.0
    return depth


def test_hand_computed_points() -> None:
    # X_cam = M^-1 (d (u, v, 1) - p); X_lidar = (z_c + 0.27, -x_c, -(y_c + 0.08)).
    # (row 0, col 0), d = 2:  d(u,v,1) - p = (-5, 0, 2): x_c = (-5 - 2*2)/10 = -0.9,
    #     y_c = (0 - 1.5*2)/10 = -0.3, z_c = 2            -> (2.27, 0.9, 0.22)
    # (row 1, col 3), d = 10: (30 - 5, 10, 10): x_c = (25 - 20)/10 = 0.5, y_c = (10 - 15)/10 = -0.5
    #                                                      -> (10.27, -0.5, 0.42)
    # (row 3, col 2), d = 4:  (8 - 5, 12, 4): x_c = (3 - 8)/10 = -0.5, y_c = (12 - 6)/10 = 0.6
    #                                                      -> (4.27, 0.5, -0.68)
    expected = np.array([[2.27, 0.9, 0.22], [10.27, -0.5, 0.42], [4.27, 0.5, -0.68]])
    points, pixels = back_project_depth(small_depth(), P_SMALL, T_CAM_LIDAR, return_pixels=True)
    np.testing.assert_allclose(points, expected, atol=1e-12)
    np.testing.assert_array_equal(pixels, [[0, 0], [1, 3], [3, 2]])


def test_hand_computed_points_with_3x3_intrinsics() -> None:
    # Without the baseline column, (row 1, col 3), d = 10: x_c = (30 - 20)/10 = 1.0 -> y = -1.0.
    points = back_project_depth(small_depth(), P_SMALL[:, :3], T_CAM_LIDAR)
    np.testing.assert_allclose(points[1], [10.27, -1.0, 0.42], atol=1e-12)


def test_torch_matches_the_hand_computed_points() -> None:
    depth = torch.tensor(small_depth())[None]
    points, valid = back_project_depth_torch(depth.double(), P_SMALL, T_CAM_LIDAR)
    assert points.shape == (1, 20, 3) and valid.shape == (1, 20)
    assert valid.sum() == 3
    expected = back_project_depth(small_depth(), P_SMALL, T_CAM_LIDAR)
    np.testing.assert_allclose(points[valid].numpy(), expected, atol=1e-12)


def _round_trip(points: np.ndarray, calib: Calibration) -> None:
    depth = camera_depth_image(points, calib)
    back = back_project_depth(depth, calib.P, calib.T_cam_lidar)
    assert len(back) == np.count_nonzero(depth) > 1000
    again = camera_depth_image(back, calib)
    # Every back-projected point lands on its own pixel again, with its depth (float32 rounding).
    np.testing.assert_array_equal(again > 0, depth > 0)
    np.testing.assert_allclose(again, depth, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("size", [None, (224, 224), (640, 192)])
def test_exact_inverse_of_camera_depth_on_the_scene(size) -> None:
    calib = calibration()  # KITTI's P2 with its baseline column
    if size is not None:
        calib = scale_calibration(calib, size)  # the network input: the image resized, no crop
    _round_trip(lidar_scan()[:, :3], calib)


@pytest.mark.parametrize("size", [None, (224, 224)])
def test_exact_inverse_of_camera_depth_on_real_kitti(size) -> None:
    if not POSED.is_dir():
        skip_unless_ci(f"shared data not found at {POSED}")
    from liploc.datasets import open_dataset
    from liploc.datasets.scan import load_scan

    reader = open_dataset(POSED)
    frame = reader.frames(reader.sequences()[0])[3]
    calib = frame.calib  # P_rect_02 @ R_rect_00 @ [R|T] of the real drive
    if size is not None:
        calib = scale_calibration(calib, size)
    _round_trip(load_scan(frame.scan_path), calib)


def test_a_point_moves_at_most_half_a_pixel_sideways() -> None:
    calib = calibration()
    scan = lidar_scan()[:, :3].astype(np.float64)
    depth = camera_depth_image(scan, calib)
    back, pixels = back_project_depth(depth, calib.P, calib.T_cam_lidar, return_pixels=True)
    # The winning point of each pixel is the nearest one there; find it by depth (all distinct).
    from liploc.lidar.camera_depth import project_to_camera

    u, v, d = project_to_camera(scan, calib)
    row, col = np.floor(v + 0.5), np.floor(u + 0.5)
    lookup = {(int(r), int(c), np.float32(z)): i for i, (r, c, z) in enumerate(zip(row, col, d, strict=True))}
    source = np.array([lookup[(r, c, depth[r, c])] for r, c in pixels])
    error = np.linalg.norm(back - scan[source], axis=1)
    f = calib.P[0, 0]
    bound = np.sqrt(0.5) * depth[pixels[:, 0], pixels[:, 1]] / f  # half a pixel diagonal at that depth
    assert (error <= bound * (1 + 1e-4) + 1e-5).all()
    assert np.median(error / bound) > 0.2  # the points did move: the bound is not loose by chance


def test_calibration_for_depth_scales_to_the_depth_image() -> None:
    calib = calibration()
    assert calibration_for_depth(calib, (375, 1242)) is calib
    scaled = calibration_for_depth(calib, (224, 224))
    assert scaled.image_size == (224, 224)
    np.testing.assert_allclose(scaled.P, scale_calibration(calib, (224, 224)).P)
    depth = camera_depth_image(lidar_scan(), scaled)
    np.testing.assert_allclose(
        back_project_depth_calib(depth, calib), back_project_depth(depth, scaled.P, scaled.T_cam_lidar)
    )


def test_torch_batch_matches_numpy_per_image() -> None:
    scan = lidar_scan()
    base = scale_calibration(calibration(), (224, 96))
    # A second camera: turned 5 degrees to the left and 0.3 m higher.
    a = np.deg2rad(5.0)
    c, s = np.cos(a), np.sin(a)
    turn = np.array([[c, 0, -s, 0], [0, 1, 0, 0.3], [s, 0, c, 0], [0, 0, 0, 1]])
    calibs = [base, Calibration(T_cam_lidar=turn @ base.T_cam_lidar, P=base.P, image_size=(224, 96))]
    depths = np.stack([camera_depth_image(scan, c) for c in calibs])
    P = torch.tensor(np.stack([c.P for c in calibs]))
    T = torch.tensor(np.stack([c.T_cam_lidar for c in calibs]))
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        points, valid = back_project_depth_torch(torch.tensor(depths, dtype=dtype), P, T)
        assert points.dtype == dtype
        for k, c in enumerate(calibs):
            expected = back_project_depth(depths[k], c.P, c.T_cam_lidar)
            np.testing.assert_allclose(points[k][valid[k]].double().numpy(), expected, atol=tol)


def test_rays_worked_out_beforehand_give_the_same_points() -> None:
    # A fixed camera (a map's queries) works its pixel rays out once: the points are the ones
    # each call would compute, bit for bit, for one camera or one per image.
    depth = torch.tensor(np.stack([small_depth(), 2 * small_depth()]))
    P, T = torch.tensor(P_SMALL), torch.tensor(T_CAM_LIDAR)
    fresh, valid = back_project_depth_torch(depth, P, T)
    rays = pixel_rays_torch(P, T, 4, 5)
    float32_rays = (rays[0].float(), rays[1].float())  # as CalibratedImageTower keeps them
    for given in (rays, float32_rays, pixel_rays_torch(P, T, 4, 5, batch=2)):
        points, same_valid = back_project_depth_torch(depth, "unused", "unused", rays=given)  # type: ignore[arg-type]
        assert torch.equal(points, fresh) and torch.equal(same_valid, valid)
    with pytest.raises(ValueError, match="20 pixels for a 4 x 4"):
        back_project_depth_torch(depth[:, :, :4], P, T, rays=rays)


def test_torch_gradient_is_the_pixel_ray() -> None:
    calib = scale_calibration(calibration(), (64, 24))
    depth = torch.full((1, 1, 24, 64), 7.0, dtype=torch.float64, requires_grad=True)
    points, valid = back_project_depth_torch(depth, calib.P, calib.T_cam_lidar)
    assert valid.all()
    weights = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    (points * weights).sum().backward()
    rays, _ = pixel_rays(calib.P, calib.T_cam_lidar, 24, 64)
    np.testing.assert_allclose(depth.grad[0, 0].numpy(), rays @ weights.numpy(), atol=1e-12)


def test_empty_and_bad_pixels_are_invalid() -> None:
    depth = torch.tensor([[[0.0, -1.0, float("nan"), 5.0]]])
    _, valid = back_project_depth_torch(depth, P_SMALL, T_CAM_LIDAR)
    assert valid.tolist() == [[False, False, False, True]]
    assert len(back_project_depth(depth[0].numpy(), P_SMALL, T_CAM_LIDAR)) == 1


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="3x4"):
        back_project_depth(small_depth(), np.eye(4), T_CAM_LIDAR)
    with pytest.raises(ValueError, match="4x4"):
        back_project_depth(small_depth(), P_SMALL, np.eye(3))
    with pytest.raises(ValueError, match="H, W"):
        back_project_depth(small_depth()[None], P_SMALL, T_CAM_LIDAR)
    with pytest.raises(ValueError, match="batch"):
        back_project_depth_torch(torch.ones(2, 4, 5), np.stack([P_SMALL] * 3), T_CAM_LIDAR)
