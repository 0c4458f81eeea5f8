"""The geometry bridge (``model.method: bridge``): a camera tower that also predicts metric depth,
its depth turned into a bird's-eye-view (BEV) raster, and BEV embeddings fused with appearance.

Image side: one backbone pass (timm ``forward_intermediates``) gives the pooled features of the
appearance head and the multi-scale maps of the :class:`~liploc.models.depth_head.DepthHead`;
the depth (at ``bridge.depth_size``, independent of the square network input) goes back to points
in the LiDAR frame with the camera's calibration, those points into a BEV raster, the raster
through a :class:`~liploc.models.bev_encoder.BevEncoder`, and the BEV embedding is fused with the
appearance embedding (:func:`~liploc.models.bev_encoder.fuse_embeddings`).

LiDAR side: the appearance LiDAR tower (as in :class:`~liploc.models.two_tower.TwoTowerModel`)
and a BEV encoder over the scan's raster, made by :func:`depth_image_bev` from the scan's own
depth image at the same ``depth_size``, back-projected and rasterised exactly as the prediction
is: both sides sample the scene the same way (benchmarks/bev_oracle.py: at a 224 x 224 depth image
only half the scan's points in view survive one point per pixel, so the scan's raster is made
from its depth image rather than from all its points).

Module names follow the two-tower model's (``image_encoder``, ``image_head``, ``lidar_encoder``,
...) and add ``depth_head``, ``image_bev`` and ``lidar_bev`` (absent when ``share_bev_encoder``:
one encoder serves both sides).
"""

from __future__ import annotations

from typing import Any

import timm
import timm.data
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from liploc.config import BevGridConfig, BridgeConfig, ModelConfig
from liploc.lidar.back_projection import back_project_depth_torch, camera_rays
from liploc.lidar.bev_raster import BevSettings, rasterize_bev_torch
from liploc.models.bev_encoder import BevEncoder, fuse_embeddings
from liploc.models.depth_head import DepthHead, intermediate_channels
from liploc.models.heads import ProjectionHead
from liploc.models.two_tower import TowerModel

RASTER_CHANNELS = ("height", "density")
"""Channels of :func:`~liploc.lidar.bev_raster.rasterize_bev_torch` without intensity, in order."""


def bev_settings(grid: BevGridConfig) -> BevSettings:
    """The raster settings of ``model.bridge.bev``."""
    return BevSettings(
        x_range=(0.0, grid.forward_m),
        half_width=grid.half_width_m,
        cell=grid.cell_m,
        ground_z=grid.ground_z,
        min_height=grid.min_height,
        max_height=grid.max_height,
        density_norm=grid.density_norm,
        intensity=False,
    )


def bev_shape(bridge: BridgeConfig) -> tuple[int, int, int]:
    """(channels, rows, cols) of the BEV rasters of ``bridge``."""
    rows, cols = bev_settings(bridge.bev).shape
    return len(bridge.bev.channels), rows, cols


def depth_image_bev(
    depth: Tensor,
    P: Tensor,
    T_cam_lidar: Tensor,
    bridge: BridgeConfig,
    soft: bool | None = None,
    rays: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """BEV rasters (B, C, rows, cols) float32 of depth images (B, H, W) or (B, 1, H, W) in metres
    (0: no depth), ``P`` (B, 3, 3|4) scaled to their size, ``T_cam_lidar`` (B, 4, 4).

    The one rasterisation of both sides: a predicted depth (every pixel) and a scan's sparse depth
    image (pixels with a return). ``soft`` (default: ``bridge.train_bev_on == "end_to_end"``): the
    bilinear splat through which gradients reach the depth; otherwise one cell per point. Runs in
    float32 outside autocast (a bf16 point would be off by up to 0.25 m at 50 m). ``rays``: the
    pixel rays of a fixed camera (:func:`~liploc.lidar.back_projection.camera_rays`).
    """
    soft = bridge.train_bev_on == "end_to_end" if soft is None else soft
    with torch.autocast(depth.device.type, enabled=False):
        points, valid = back_project_depth_torch(depth.float(), P, T_cam_lidar, min_depth=0.0, rays=rays)
        raster = rasterize_bev_torch(points, valid, bev_settings(bridge.bev), soft=soft)
    channels = [RASTER_CHANNELS.index(c) for c in bridge.bev.channels]
    return raster if channels == [0, 1] else raster[:, channels]


class GeometryBridgeModel(TowerModel):
    """Camera tower with depth and BEV, LiDAR tower with BEV; the interface of
    :class:`~liploc.models.two_tower.TwoTowerModel` with the geometry as keyword inputs:

    - ``encode_image(images, P=..., T_cam_lidar=...)``: the projection of the depth images (at
      ``bridge.depth_size``) and the camera-from-LiDAR transform, (B, 3, 4) and (B, 4, 4);
    - ``encode_lidar(lidar, bev=...)``: the scan's BEV raster (:func:`depth_image_bev`);
    - ``forward(image, lidar, P=..., T_cam_lidar=..., bev=...)`` -> (image embeddings, LiDAR
      embeddings, predicted depth (B, h, w) in metres), for training.

    Embeddings are unit norm (``fusion``: see :class:`~liploc.config.BridgeConfig`).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        image_features: int,
        lidar_encoder: nn.Module | None,
        lidar_features: int | None,
        cfg: ModelConfig,
    ) -> None:
        super().__init__()
        b = cfg.bridge
        self.cfg = cfg
        self.bridge = b
        appearance = b.has_appearance
        if appearance and (lidar_encoder is None or lidar_features is None):
            raise ValueError(f"fusion {b.fusion} needs the LiDAR appearance tower")
        self.image_encoder = image_encoder
        self.depth_head = DepthHead(
            intermediate_channels(image_encoder, b.depth_levels),
            width=b.depth_head_width,
            max_depth=b.max_depth,
            init_depth=min(15.0, b.max_depth / 2),
        )
        self.image_fc: nn.Linear | None = None
        self.lidar_fc: nn.Linear | None = None
        self.image_head: ProjectionHead | None = None
        self.lidar_head: ProjectionHead | None = None
        self.lidar_encoder: nn.Module | None = None
        if appearance:
            assert lidar_encoder is not None and lidar_features is not None
            self.lidar_encoder = lidar_encoder
            self._add_appearance_heads(image_features, lidar_features)
        self.image_bev: BevEncoder | None = None
        self.lidar_bev: BevEncoder | None = None
        self.bev_dim = 0
        if b.has_bev:
            self.bev_dim = b.bev_embed_dim or cfg.embed_dim

            def bev_encoder() -> BevEncoder:
                return BevEncoder(
                    in_chans=len(b.bev.channels),
                    embed_dim=self.bev_dim,
                    widths=b.bev_widths,
                    pooling=b.bev_pooling,
                    dropout=cfg.head_dropout,
                )

            self.image_bev = bev_encoder()
            self.lidar_bev = None if b.share_bev_encoder else bev_encoder()

    # --- shape ---------------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        """Width of the (fused) embeddings."""
        if self.bridge.fusion == "depth_aux":
            return self.cfg.embed_dim
        if self.bridge.fusion == "bev_only":
            return self.bev_dim
        return self.cfg.embed_dim + self.bev_dim

    @property
    def depth_size(self) -> tuple[int, int]:
        """(height, width) of the predicted depth."""
        return tuple(self.bridge.depth_size)  # type: ignore[return-value]

    # --- image side ----------------------------------------------------------------------------
    def predict_depth(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) images -> ((B, F) pooled features, (B, h, w) depth in metres, float32)."""
        final, maps = self.image_encoder.forward_intermediates(images, indices=self.bridge.depth_levels)
        pooled = self.image_encoder.forward_head(final)
        return pooled, self.depth_head(maps, self.depth_size).float()

    def image_bev_raster(
        self, depth: Tensor, P: Tensor, T_cam_lidar: Tensor, rays: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """BEV raster of predicted depth: detached (hard raster) or through the soft splat."""
        if self.bridge.train_bev_on == "detached":
            depth = depth.detach()
        return depth_image_bev(depth, P, T_cam_lidar, self.bridge, rays=rays)

    def _image(
        self, images: Tensor, P: Tensor, T_cam_lidar: Tensor, rays: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        pooled, depth = self.predict_depth(images)
        appearance = None
        if self.image_head is not None:
            features = self.image_fc(pooled) if self.image_fc is not None else pooled
            appearance = self.image_head(features)
        bev = None
        if self.image_bev is not None:
            bev = self.image_bev(self.image_bev_raster(depth, P, T_cam_lidar, rays))
        return self._fuse(appearance, bev), depth

    def encode_image(
        self, images: Tensor, *, P: Tensor, T_cam_lidar: Tensor, rays: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """Camera images [B, 3, H, W] and their calibration -> unit-norm embeddings [B, D]
        (``rays``: the depth image's pixel rays worked out beforehand, for a fixed camera)."""
        return self._image(images, P, T_cam_lidar, rays)[0]

    # --- LiDAR side ----------------------------------------------------------------------------
    def encode_lidar(self, lidar: Tensor, *, bev: Tensor) -> Tensor:
        """LiDAR inputs [B, C, H, W] and the scans' BEV rasters [B, C', rows, cols] -> unit-norm
        embeddings [B, D]."""
        appearance = None
        if self.lidar_head is not None:
            assert self.lidar_encoder is not None
            features = self.lidar_encoder(lidar)
            if self.lidar_fc is not None:
                features = self.lidar_fc(features)
            appearance = self.lidar_head(features)
        bev_emb = None
        encoder = self.lidar_bev if self.lidar_bev is not None else self.image_bev
        if encoder is not None:
            bev_emb = encoder(bev.to(dtype=torch.float32))
        return self._fuse(appearance, bev_emb)

    def _fuse(self, appearance: Tensor | None, bev: Tensor | None) -> Tensor:
        if self.bridge.fusion == "fused":
            return fuse_embeddings(appearance, bev, self.bridge.bev_weight)
        return F.normalize((appearance if appearance is not None else bev).float(), dim=-1)  # type: ignore[union-attr]

    def forward(
        self, image: Tensor, lidar: Tensor, *, P: Tensor, T_cam_lidar: Tensor, bev: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(image embeddings, LiDAR embeddings, predicted depth (B, h, w))."""
        image_emb, depth = self._image(image, P, T_cam_lidar)
        return image_emb, self.encode_lidar(lidar, bev=bev), depth

    # --- training and identity -----------------------------------------------------------------
    def _groups(
        self, lr_head: float, lr_image_encoder: float, lr_lidar_encoder: float
    ) -> list[tuple[str, list[nn.Parameter], float]]:
        # The two-tower model's groups plus ``bridge``: the depth head and the BEV encoders, new
        # layers at ``lr_head``.
        def params(*modules: nn.Module | None) -> list[nn.Parameter]:
            return [p for m in modules if m is not None for p in m.parameters()]

        return [
            ("heads", params(self.image_head, self.lidar_head), lr_head),
            ("image_encoder", params(self.image_encoder, self.image_fc), lr_image_encoder),
            ("lidar_encoder", params(self.lidar_encoder, self.lidar_fc), lr_lidar_encoder),
            ("bridge", params(self.depth_head, self.image_bev, self.lidar_bev), lr_head),
        ]

    def data_configs(self) -> dict[str, dict[str, Any]]:
        """timm's input settings of each encoder's pretrained weights (see TwoTowerModel)."""
        out = {"image": timm.data.resolve_model_data_config(self.image_encoder)}
        if self.lidar_encoder is not None:
            out["lidar"] = timm.data.resolve_model_data_config(self.lidar_encoder)
        return out


class CalibratedImageTower(nn.Module):
    """The camera side of a bridge model for one rig: ``encode_image(images)`` with the rig's
    calibration filled in (what a map's queries need: one rig made the map).

    ``P`` (3, 3|4) is the projection of the depth image (scaled to ``bridge.depth_size``),
    ``T_cam_lidar`` (4, 4).
    """

    def __init__(self, model: GeometryBridgeModel, P: Tensor, T_cam_lidar: Tensor) -> None:
        super().__init__()
        self.model = model
        self.cfg = model.cfg
        self.register_buffer("P", torch.as_tensor(P, dtype=torch.float64), persistent=False)
        self.register_buffer(
            "T_cam_lidar", torch.as_tensor(T_cam_lidar, dtype=torch.float64), persistent=False
        )
        # The one camera's pixel rays, worked out once instead of per query (0.6 ms of 8.6 on
        # this project's 2-core CPU), in the float32 that back-projection uses them in.
        h, w = model.depth_size
        rays, origin = camera_rays(self.P.cpu().numpy(), self.T_cam_lidar.cpu().numpy(), h, w)  # type: ignore[operator]
        self.register_buffer("rays", torch.from_numpy(rays), persistent=False)
        self.register_buffer("ray_origin", torch.from_numpy(origin), persistent=False)

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    def encode_image(self, images: Tensor) -> Tensor:
        b = images.shape[0]
        P = self.P.expand(b, *self.P.shape)  # type: ignore[union-attr]
        T = self.T_cam_lidar.expand(b, 4, 4)  # type: ignore[union-attr]
        return self.model.encode_image(images, P=P, T_cam_lidar=T, rays=(self.rays, self.ray_origin))  # type: ignore[arg-type]

    def forward(self, images: Tensor) -> Tensor:
        return self.encode_image(images)
