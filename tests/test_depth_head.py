"""Depth head over timm features, the masked depth losses and the depth metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch

from liploc.models.depth_head import (
    CameraDepthModel,
    DepthHead,
    depth_error_sums,
    depth_loss,
    depth_metrics,
    intermediate_channels,
    pooled_depth_metrics,
)


def sparse_target(seed: int = 0, shape=(2, 12, 16), fill: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(shape, generator=g, dtype=torch.float64) * 40 + 2
    return torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < fill, depth, 0.0)


# --- loss ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["l1", "silog"])
def test_loss_ignores_empty_pixels(kind) -> None:
    target = sparse_target()
    empty = target == 0
    assert 0.5 < empty.double().mean() < 0.9
    g = torch.Generator().manual_seed(1)
    base = torch.rand(target.shape, generator=g, dtype=torch.float64) * 40 + 1
    other = torch.where(empty, torch.rand(target.shape, generator=g, dtype=torch.float64) * 1000 + 1e-3, base)
    losses, grads = [], []
    for pred in (base, other):
        pred = pred.clone().requires_grad_(True)
        loss = depth_loss(pred, target, kind=kind)
        loss.backward()
        losses.append(loss.detach())
        grads.append(pred.grad)
    assert torch.equal(losses[0], losses[1])
    assert torch.equal(grads[0], grads[1])
    assert (grads[0][empty] == 0).all() and (grads[0][~empty] != 0).all()


def test_l1_by_hand() -> None:
    target = torch.tensor([[[0.0, 10.0], [20.0, 0.0]]])
    pred = torch.tensor([[[99.0, 12.0], [17.0, 5.0]]])
    # Valid: 10 (error 2) and 20 (error 3): mean 2.5.
    assert depth_loss(pred, target, kind="l1").item() == pytest.approx(2.5)


def test_silog_by_hand() -> None:
    target = torch.tensor([[[0.0, 10.0], [20.0, 0.0]], [[5.0, 0.0], [0.0, 0.0]]])
    pred = torch.tensor([[[3.0, 20.0], [20.0, 7.0]], [[5.0 * math.e, 1.0], [1.0, 1.0]]])
    # Image 0: g = (log 2, 0): mean(g^2) = log(2)^2 / 2, mean(g) = log(2) / 2.
    g0 = math.sqrt(math.log(2) ** 2 / 2 - 0.85 * (math.log(2) / 2) ** 2)
    # Image 1: g = (1,): sqrt(1 - 0.85).
    g1 = math.sqrt(1 - 0.85)
    assert depth_loss(pred, target, kind="silog").item() == pytest.approx((g0 + g1) / 2, rel=1e-6)
    # lambda = 1: a global scale error of a whole image costs nothing.
    target = target.double()
    assert depth_loss(2.0 * target, target, silog_lambda=1.0).item() == pytest.approx(0.0, abs=1e-5)
    assert depth_loss(2.0 * target, target).item() == pytest.approx(math.log(2) * math.sqrt(0.15))


def test_loss_without_valid_pixels_is_zero_with_zero_gradient() -> None:
    pred = torch.rand(2, 3, 4, requires_grad=True)
    for kind in ("l1", "silog"):
        loss = depth_loss(pred, torch.zeros(2, 3, 4), kind=kind)
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))
        pred.grad = None


def test_loss_max_depth_and_resized_prediction() -> None:
    target = torch.tensor([[[10.0, 90.0]]])
    pred = torch.tensor([[[11.0, 1.0]]])
    assert depth_loss(pred, target, kind="l1", max_depth=80.0).item() == pytest.approx(1.0)
    # A prediction at half the target's size is resized to it, never the sparse target.
    target = sparse_target(shape=(1, 8, 8))
    pred = torch.full((1, 1, 4, 4), 5.0, dtype=torch.float64)
    expected = (target[target > 0] - 5.0).abs().mean()
    assert depth_loss(pred, target, kind="l1").item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="'l1' or 'silog'"):
        depth_loss(pred, target, kind="l2")  # type: ignore[arg-type]


# --- metrics -------------------------------------------------------------------------------------


def test_metrics_by_hand() -> None:
    target = torch.tensor([[[0.0, 10.0, 20.0], [40.0, 0.0, 0.0]]])
    pred = torch.tensor([[[123.0, 12.0, 20.0], [30.0, 7.0, 0.5]]])
    m = depth_metrics(pred, target)
    # Errors 2, 0, -10 on 10, 20, 40: AbsRel = (0.2 + 0 + 0.25) / 3, RMSE = sqrt(104 / 3);
    # ratios 1.2, 1, 1.333: delta1 = 2/3.
    assert m["n_pixels"] == 3
    assert m["abs_rel"] == pytest.approx(0.45 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(104 / 3))
    assert m["delta1"] == pytest.approx(2 / 3)
    assert math.isnan(depth_metrics(pred, torch.zeros_like(target))["abs_rel"])


def test_metrics_pooled_over_batches_count_every_pixel_once() -> None:
    # Two batches of different pixel counts, summed (as validation and the accuracy benchmark do
    # over batches and processes), give the metrics of the two as one batch.
    target = sparse_target(seed=1, shape=(3, 12, 16))
    pred = target + torch.rand(target.shape, generator=torch.Generator().manual_seed(2)) * 4
    a, b = (pred[:1], target[:1]), (pred[1:], target[1:])
    pooled = pooled_depth_metrics(np.add(depth_error_sums(*a), depth_error_sums(*b)))
    whole = depth_metrics(pred, target)
    for key in ("abs_rel", "rmse", "delta1"):
        assert pooled[key] == pytest.approx(whole[key], rel=1e-12)
    assert depth_error_sums(pred, torch.zeros_like(target)) == [0.0, 0.0, 0.0, 0.0]
    assert math.isnan(pooled_depth_metrics([0.0, 0.0, 0.0, 0.0])["rmse"])


# --- head ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()


def test_head_shapes_range_and_initial_depth(encoder) -> None:
    channels = intermediate_channels(encoder, 4)
    assert channels == [32, 48, 192, 96]
    images = torch.randn(2, 3, 64, 96)
    maps = encoder.forward_intermediates(images, indices=4, intermediates_only=True)
    for activation in ("sigmoid", "softplus"):
        head = DepthHead(channels, width=16, activation=activation, init_depth=15.0)
        depth = head(maps, output_size=(48, 80))
        assert depth.shape == (2, 48, 80)
        # The last bias starts at 15 m; weights near 0 leave the start within a few metres.
        assert (depth - 15.0).abs().max() < 2.0
        assert (depth > head.min_depth).all()
        assert head(maps).shape == (2, 32, 48)  # stride 4 maps, one refining x2 stage: stride 2
    assert DepthHead(channels, max_depth=80.0).to_depth(torch.tensor([1e4])).item() == pytest.approx(80.0)


def test_camera_depth_model_shares_the_backbone_pass(encoder) -> None:
    model = CameraDepthModel(encoder, levels=3, width=16).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        pooled, depth = model(images)
        torch.testing.assert_close(pooled, encoder(images))  # what the camera tower pools today
    assert depth.shape == (2, 64, 96)
    with torch.no_grad():
        assert CameraDepthModel(encoder, levels=3, output_stride=2)(images)[1].shape == (2, 32, 48)
    model.train()
    pooled, depth = model(images, output_size=(32, 48))
    assert depth.shape == (2, 32, 48)
    target = sparse_target(shape=(2, 32, 48)).float()
    depth_loss(depth, target).backward()
    assert encoder.conv1[0].weight.grad is not None and encoder.conv1[0].weight.grad.abs().sum() > 0


def test_head_learns_a_depth_ramp(encoder) -> None:
    # Depth grows with the row (like a road): a few steps of the head alone bring it down.
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 48)
    with torch.no_grad():
        maps = encoder.forward_intermediates(images, indices=4, intermediates_only=True)
    ramp = torch.linspace(5.0, 40.0, 32)[None, :, None].expand(4, 32, 48)
    target = torch.where(torch.rand(4, 32, 48) < 0.3, ramp, 0.0)
    head = DepthHead(intermediate_channels(encoder, 4), width=16)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = depth_loss(head(maps, (32, 48)), target, kind="l1")
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.5 * first
    assert depth_metrics(head(maps, (32, 48)), target)["abs_rel"] < 0.35


def test_bad_head_settings_are_refused(encoder) -> None:
    with pytest.raises(ValueError, match="init_depth"):
        DepthHead([8], min_depth=1.0, init_depth=100.0, max_depth=80.0)
    with pytest.raises(ValueError, match="feature maps"):
        DepthHead([8, 16])([torch.zeros(1, 8, 4, 4)])
    with pytest.raises(ValueError, match="feature levels"):
        intermediate_channels(encoder, 9)


def test_metrics_are_pixel_weighted_over_the_batch() -> None:
    target = torch.zeros(2, 2, 2, dtype=torch.float64)
    target[0, 0, 0] = 10.0
    target[1] = 10.0
    pred = torch.full_like(target, 10.0)
    pred[0, 0, 0] = 20.0  # the one pixel of image 0: AbsRel 1; the 4 pixels of image 1: 0
    m = depth_metrics(pred, target)
    assert m["n_pixels"] == 5 and m["abs_rel"] == pytest.approx(0.2)
    np.testing.assert_allclose(m["rmse"], math.sqrt(100 / 5))
