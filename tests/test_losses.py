"""Contrastive losses in a single process: values against independent formulas, behaviour, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from liploc.config import LossConfig
from liploc.errors import ConfigError
from liploc.training.losses import (
    ClipLoss,
    SigLipLoss,
    SoftTargetLoss,
    build_loss,
    in_batch_accuracy,
    positive_mask,
)


def random_unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


def reference_clip(image: torch.Tensor, lidar: torch.Tensor, tau: float) -> torch.Tensor:
    """CLIP's symmetric loss written with F.cross_entropy over the full matrix."""
    logits = image @ lidar.T / tau
    labels = torch.arange(image.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def reference_soft(image: torch.Tensor, lidar: torch.Tensor, tau: float) -> torch.Tensor:
    """The LIP-Loc reference code's loss (soft targets), at tau where it divides like ours."""
    logits = lidar @ image.T / tau
    targets = F.softmax((image @ image.T + lidar @ lidar.T) / 2 / tau, dim=-1)
    lidar_loss = (-targets * F.log_softmax(logits, dim=-1)).sum(1)
    camera_loss = (-targets.T * F.log_softmax(logits.T, dim=-1)).sum(1)
    return ((camera_loss + lidar_loss) / 2).mean()


def test_random_embeddings_give_about_log_n_at_tau_1() -> None:
    # Unit vectors in 256-d have cosines of ~1/16, so at tau = 1 all logits are nearly equal and
    # the cross-entropy is close to log N (it is log N + var/2 to first order, var = 1/256).
    n = 64
    image, lidar = random_unit(n, 256, 0), random_unit(n, 256, 1)
    loss = build_loss(LossConfig(kind="clip", temperature=1.0))(image, lidar)
    assert abs(loss.item() - math.log(n)) < 0.02
    assert loss.item() == pytest.approx(reference_clip(image, lidar, 1.0).item(), abs=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.07])
def test_clip_matches_cross_entropy_formula(tau: float) -> None:
    image, lidar = random_unit(16, 32, 2), random_unit(16, 32, 3)
    loss = build_loss(LossConfig(kind="clip", temperature=tau))(image, lidar)
    assert loss.item() == pytest.approx(reference_clip(image, lidar, tau).item(), rel=1e-6)


def test_perfect_pairs_give_low_loss_and_random_pairs_do_not() -> None:
    n, d = 16, 32
    basis = torch.eye(d)[:n]  # orthogonal unit vectors: pair i matches only itself
    loss_fn = build_loss(LossConfig(kind="clip", temperature=0.05))
    perfect = loss_fn(basis, basis).item()
    shuffled = loss_fn(basis, basis[torch.roll(torch.arange(n), 1)]).item()
    assert perfect < 1e-6
    assert shuffled > 10.0


def test_soft_matches_reference_code() -> None:
    image, lidar = random_unit(12, 16, 4), random_unit(12, 16, 5)
    for tau in (1.0, 0.5):
        loss = build_loss(LossConfig(kind="soft", temperature=tau))(image, lidar)
        assert isinstance(build_loss(LossConfig(kind="soft")), SoftTargetLoss)
        assert loss.item() == pytest.approx(reference_soft(image, lidar, tau).item(), rel=1e-6)


def test_siglip_init_and_formula() -> None:
    loss_fn = build_loss(LossConfig(kind="siglip"))
    assert isinstance(loss_fn, SigLipLoss)
    assert loss_fn.scale().item() == pytest.approx(10.0)
    assert loss_fn.bias.item() == pytest.approx(-10.0)
    assert {name for name, _ in loss_fn.named_parameters()} == {"log_scale", "bias"}
    image, lidar = random_unit(10, 16, 6), random_unit(10, 16, 7)
    logits = 10.0 * image @ lidar.T - 10.0
    labels = 2 * torch.eye(10) - 1
    expected = -F.logsigmoid(labels * logits).sum() / 10
    assert loss_fn(image, lidar).item() == pytest.approx(expected.item(), rel=1e-6)
    basis = torch.eye(16)[:10]
    assert loss_fn(basis, basis).item() < loss_fn(image, lidar).item()


def test_pose_aware_targets_spread_over_nearby_pairs() -> None:
    n, d = 4, 8
    basis = torch.eye(d)[:n]
    image = basis.clone()
    image[0] = F.normalize(basis[0] + 2 * basis[1], dim=0)  # frame 0's image resembles scan 1 (1 m away)
    positions = torch.tensor([[0.0, 0.0], [1.0, 0.0], [50.0, 0.0], [100.0, 0.0]])
    plain = build_loss(LossConfig(kind="clip", temperature=0.1))
    aware = build_loss(LossConfig(kind="clip", temperature=0.1, pose_aware=True, positive_radius_m=2.0))
    # Expected: rows 0 and 1 have targets [0.5, 0.5, 0, 0]; the others one-hot.
    targets = torch.eye(n)
    targets[:2, :2] = 0.5
    logits = image @ basis.T / 0.1
    expected = (
        (-targets * F.log_softmax(logits, 1)).sum(1) + (-targets * F.log_softmax(logits.T, 1)).sum(1)
    ).mean() / 2
    value = aware(image, basis, positions)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert value.item() != pytest.approx(plain(image, basis).item(), rel=1e-3)
    # Far apart, the same embeddings give the plain loss again.
    far = positions * 100
    assert aware(image, basis, far).item() == pytest.approx(plain(image, basis).item(), rel=1e-6)


def test_pose_aware_siglip_labels_nearby_pairs_positive() -> None:
    image = lidar = torch.eye(8)[:4]
    lidar = lidar.clone()
    lidar[1] = image[0]  # two scans at the same place look the same
    positions = torch.tensor([[0.0, 0.0], [0.5, 0.0], [30.0, 0.0], [60.0, 0.0]])
    plain = build_loss(LossConfig(kind="siglip"))
    aware = build_loss(LossConfig(kind="siglip", pose_aware=True, positive_radius_m=1.0))
    logits = 10.0 * image @ lidar.T - 10.0
    labels = -torch.ones(4, 4)
    labels[:2, :2] = 1.0
    labels.fill_diagonal_(1.0)
    expected = -F.logsigmoid(labels * logits).sum() / 4
    assert aware(image, lidar, positions).item() == pytest.approx(expected.item(), rel=1e-6)
    assert aware(image, lidar, positions).item() != pytest.approx(plain(image, lidar).item(), rel=1e-3)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_pose_aware_gradient_pulls_nearby_frames_together(kind: str) -> None:
    # Frames 0 and 1 are 1 m apart and look alike. One gradient step of the plain loss makes
    # image 0 and scan 1 less similar (a negative pair); the pose-aware loss makes them more similar.
    positions = torch.tensor([[0.0, 0.0], [1.0, 0.0], [50.0, 0.0], [100.0, 0.0]])

    def similarity_after_step(cfg: LossConfig) -> float:
        image = torch.eye(8)[:4]
        image[1] = F.normalize(image[0] + image[1], dim=0)
        lidar = image.clone()
        image.requires_grad_()
        lidar.requires_grad_()
        build_loss(cfg)(image, lidar, positions).backward()
        with torch.no_grad():
            new_image = F.normalize(image - 0.01 * image.grad, dim=1)
            new_lidar = F.normalize(lidar - 0.01 * lidar.grad, dim=1)
        return (new_image[0] @ new_lidar[1]).item()

    before = 1 / math.sqrt(2)
    assert similarity_after_step(LossConfig(kind=kind, temperature=0.1)) < before - 1e-4
    aware = LossConfig(kind=kind, temperature=0.1, pose_aware=True, positive_radius_m=2.0)
    assert similarity_after_step(aware) > before + 1e-4


def test_positive_mask_handles_offsets_and_missing_poses() -> None:
    positions = torch.tensor([[0.0, 0.0], [float("nan"), float("nan")], [3.0, 4.0]])
    mask = positive_mask(3, 0, 3, positions, positions, radius_m=5.0)
    assert mask.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    # Local rows 2..3 of a global batch of 4 without poses: only their own columns.
    assert positive_mask(2, 2, 4).tolist() == [[False, False, True, False], [False, False, False, True]]


def test_gradients_flow_to_embeddings_and_learnable_temperature() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 16)
    x = torch.randn(8, 6)
    for kind in ("clip", "soft", "siglip"):
        loss_fn = build_loss(LossConfig(kind=kind, learnable_temperature=True, temperature=0.1))
        layer.zero_grad()
        emb = F.normalize(layer(x), dim=-1)
        image, lidar = emb, F.normalize(emb + 0.1 * torch.randn_like(emb), dim=-1)
        loss_fn(image, lidar).backward()
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
        assert torch.isfinite(layer.weight.grad).all()
        assert loss_fn.log_scale.grad is not None and loss_fn.log_scale.grad.abs() > 0
        assert loss_fn.param_groups(1e-3)[0]["weight_decay"] == 0.0


def test_fixed_temperature_is_a_buffer_and_learnable_scale_is_clamped() -> None:
    fixed = build_loss(LossConfig(kind="clip", temperature=0.5))
    assert list(fixed.parameters()) == [] and fixed.param_groups(1e-3) == []
    assert "log_scale" in fixed.state_dict()
    assert fixed.temperature == pytest.approx(0.5)
    hot = build_loss(
        LossConfig(kind="clip", temperature=1e-4, learnable_temperature=True, max_logit_scale=100)
    )
    assert isinstance(hot, ClipLoss)
    assert hot.scale().item() == pytest.approx(100.0, rel=1e-5)


def test_loss_runs_in_float32_for_low_precision_embeddings() -> None:
    image, lidar = random_unit(8, 16, 8), random_unit(8, 16, 9)
    loss_fn = build_loss(LossConfig(kind="clip", temperature=0.07))
    low = loss_fn(image.bfloat16(), lidar.bfloat16())
    assert low.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = loss_fn(image, lidar)  # matmuls inside stay float32: same value as outside
    assert autocast.item() == pytest.approx(loss_fn(image, lidar).item(), rel=1e-6)
    assert low.item() == pytest.approx(loss_fn(image, lidar).item(), abs=0.05)


def test_bad_configurations_and_inputs_are_clear() -> None:
    with pytest.raises(ConfigError, match="pose_aware"):
        build_loss(LossConfig(kind="soft", pose_aware=True))
    aware = build_loss(LossConfig(kind="clip", pose_aware=True))
    with pytest.raises(ValueError, match="positions_xy"):
        aware(random_unit(4, 8, 0), random_unit(4, 8, 1))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        aware(random_unit(4, 8, 0), random_unit(3, 8, 1))


def test_in_batch_accuracy() -> None:
    basis = torch.eye(8)[:6]
    assert in_batch_accuracy(basis, basis) == (1.0, 1.0)
    shifted = basis[torch.roll(torch.arange(6), 1)]
    assert in_batch_accuracy(basis, shifted) == (0.0, 0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_losses_run_on_cuda_like_on_cpu() -> None:
    image, lidar = random_unit(8, 16, 10), random_unit(8, 16, 11)
    positions = torch.arange(16, dtype=torch.float32).reshape(8, 2)
    for kind in ("clip", "soft", "siglip"):
        cfg = LossConfig(kind=kind, temperature=0.1, pose_aware=kind != "soft", positive_radius_m=3.0)
        cpu = build_loss(cfg)(image, lidar, positions)
        gpu = build_loss(cfg).cuda()(image.cuda(), lidar.cuda(), positions.cuda())
        assert gpu.device.type == "cuda"
        assert gpu.item() == pytest.approx(cpu.item(), rel=1e-4)


@pytest.mark.parametrize("shared_world", [False, True])
def test_pose_aware_positives_only_within_one_world(tmp_path, shared_world: bool) -> None:
    # Two KITTI odometry sequences both start at (0, 0) in their own frames: their first frames
    # are not the same place, so they must stay negatives. Written by `synth --pose-frame town`,
    # the same numbers are one world and the first frames are positives of each other.
    from conftest import write_kitti_odometry
    from torch.utils.data import default_collate

    from liploc.config import Config
    from liploc.datasets import open_dataset
    from liploc.runtime.frame_dataset import PairDataset

    for name in ("00", "01"):
        write_kitti_odometry(tmp_path, name, n_frames=3)
    if shared_world:
        (tmp_path / "synth.json").write_text('{"pose_frame": "town"}')
    reader = open_dataset(tmp_path)
    frames = [reader.frames("00")[0], reader.frames("01")[0], reader.frames("00")[2]]
    batch = default_collate([PairDataset(frames, Config(), modalities=("image",))[i] for i in range(3)])
    assert batch["position_xy"][0].tolist() == batch["position_xy"][1].tolist() == [0.0, 0.0]

    image = lidar = torch.eye(4)[:3]
    aware = build_loss(LossConfig(kind="clip", temperature=0.1, pose_aware=True, positive_radius_m=1.0))
    targets = torch.eye(3)
    if shared_world:
        targets[:2, :2] = 0.5
    logits = image @ lidar.T / 0.1
    expected = (
        (-targets * F.log_softmax(logits, 1)).sum(1) + (-targets * F.log_softmax(logits.T, 1)).sum(1)
    ).mean() / 2
    value = aware(image, lidar, batch["position_xy"], batch["world"])
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    mask = positive_mask(
        3, 0, 3, batch["position_xy"], batch["position_xy"], 1.0, "cpu", batch["world"], batch["world"]
    )
    assert mask[0, 1].item() is shared_world
