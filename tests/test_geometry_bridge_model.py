"""The geometry-bridge model on its own: shapes of each fusion, what each training mode lets the
contrastive loss reach, and that appearance models are untouched by the bridge's settings."""

from __future__ import annotations

import pytest
import torch

from liploc.config import ModelConfig
from liploc.models import GeometryBridgeModel, TwoTowerModel, create_model
from liploc.models.geometry_bridge import bev_shape, depth_image_bev

# The ideal KITTI Velodyne -> camera transform of conftest, and a pinhole camera at 48 x 160.
T = torch.tensor(
    [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -0.08], [1.0, 0.0, 0.0, -0.27], [0.0, 0.0, 0.0, 1.0]],
    dtype=torch.float64,
)
P = torch.tensor([[80.0, 0.0, 80.0, 0.0], [0.0, 80.0, 24.0, 0.0], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)


def bridge_config(**bridge: object) -> ModelConfig:
    settings = {"depth_size": (48, 160), "bev_widths": [8, 16], "bev": {"cell_m": 1.6}, **bridge}
    return ModelConfig(
        method="bridge",
        image_encoder="test_efficientnet",
        lidar_encoder="test_efficientnet",
        embed_dim=16,
        head_dropout=0.0,
        bridge=settings,
    )


def inputs(b: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    cfg = bridge_config()
    c, rows, cols = bev_shape(cfg.bridge)
    return {
        "image": torch.randn(b, 3, 32, 32),
        "lidar": torch.randn(b, 3, 32, 32),
        "P": P.expand(b, 3, 4),
        "T_cam_lidar": T.expand(b, 4, 4),
        "bev": torch.rand(b, c, rows, cols),
    }


@pytest.mark.parametrize(
    ("fusion", "dim"), [("fused", 32), ("bev_only", 16), ("depth_aux", 16)], ids=["fused", "bev", "aux"]
)
def test_each_fusion_gives_unit_embeddings_of_its_width(fusion: str, dim: int) -> None:
    model = create_model(bridge_config(fusion=fusion)).eval()
    assert isinstance(model, GeometryBridgeModel) and model.embed_dim == dim
    x = inputs()
    image, lidar, depth = model(x["image"], x["lidar"], P=x["P"], T_cam_lidar=x["T_cam_lidar"], bev=x["bev"])
    assert image.shape == lidar.shape == (2, dim)
    assert torch.allclose(image.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert depth.shape == (2, 48, 160) and bool((depth > 0).all())
    # bev_only builds no LiDAR appearance tower; depth_aux no BEV encoder
    assert (model.lidar_encoder is None) == (fusion == "bev_only")
    assert (model.image_bev is None) == (fusion == "depth_aux")
    with torch.no_grad():
        alone = model.encode_image(x["image"], P=x["P"], T_cam_lidar=x["T_cam_lidar"])
    assert torch.allclose(alone, image, atol=1e-6)


@pytest.mark.parametrize("mode", ["detached", "end_to_end"])
def test_contrastive_gradient_reaches_the_depth_head_only_end_to_end(mode: str) -> None:
    model = create_model(bridge_config(fusion="bev_only", train_bev_on=mode)).train()
    x = inputs()
    image, lidar, _ = model(x["image"], x["lidar"], P=x["P"], T_cam_lidar=x["T_cam_lidar"], bev=x["bev"])
    (image * lidar).sum().backward()  # the contrastive side alone, no depth loss
    grad = model.depth_head.predict.weight.grad
    reached = grad is not None and float(grad.abs().sum()) > 0
    assert reached == (mode == "end_to_end")
    assert model.image_bev.head.projection.weight.grad is not None  # the BEV encoder learns either way


def test_scan_and_prediction_share_one_rasteriser() -> None:
    """A depth image rasterised for the LiDAR side equals the raster of the same depth predicted."""
    cfg = bridge_config()
    depth = torch.zeros(1, 48, 160)
    depth[0, 30:40, 20:140] = 12.0  # a wall 12 m ahead, below the horizon
    raster = depth_image_bev(depth, P[None], T[None], cfg.bridge)
    model = create_model(cfg)
    assert torch.equal(model.image_bev_raster(depth, P[None], T[None]), raster)
    assert raster.shape == (1, *bev_shape(cfg.bridge)) and float(raster.sum()) > 0
    height_only = bridge_config(bev={"cell_m": 1.6, "channels": ["density"]}).bridge
    assert torch.equal(depth_image_bev(depth, P[None], T[None], height_only), raster[:, 1:])


def test_appearance_models_ignore_the_bridge_settings() -> None:
    plain = ModelConfig(image_encoder="test_efficientnet", lidar_encoder="test_efficientnet", embed_dim=16)
    changed = plain.model_copy(update={"bridge": bridge_config(fusion="bev_only").bridge})
    torch.manual_seed(0)
    a = create_model(plain)
    torch.manual_seed(0)
    b = create_model(changed)
    assert isinstance(a, TwoTowerModel) and isinstance(b, TwoTowerModel)
    assert a.fingerprint() == b.fingerprint()
    assert "method" not in a.architecture() and "bridge" not in a.architecture()


def test_training_only_settings_leave_the_fingerprint() -> None:
    torch.manual_seed(0)
    a = create_model(bridge_config(depth_weight=1.0))
    torch.manual_seed(0)
    b = create_model(bridge_config(depth_weight=0.5, depth_loss="l1"))
    torch.manual_seed(0)
    c = create_model(bridge_config(bev_weight=0.3))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
