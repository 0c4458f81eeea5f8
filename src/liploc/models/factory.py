"""create_model(): the model of a ModelConfig (two towers, or the geometry bridge), in the spirit
of timm.create_model."""

from __future__ import annotations

from liploc.config import ModelConfig
from liploc.models.encoders import create_encoder
from liploc.models.geometry_bridge import GeometryBridgeModel
from liploc.models.two_tower import TwoTowerModel


def create_model(cfg: ModelConfig) -> TwoTowerModel | GeometryBridgeModel:
    """Build the model described by ``cfg``: the two towers (timm encoders + projection heads) of
    ``method: appearance``, or the :class:`GeometryBridgeModel` of ``method: bridge`` (the same
    encoders plus a depth head and BEV encoders; ``fusion: bev_only`` builds no LiDAR encoder).

    Encoders come from ``timm.create_model(name, pretrained=cfg.pretrained, num_classes=0)``;
    ``cfg.image_weights`` / ``cfg.lidar_weights`` load a local safetensors backbone or packaged
    ImageNet weights (``efficientnet-lite0``, :mod:`liploc.models.packaged_weights`) instead.
    Unknown names, unreadable or mismatched weight files raise liploc errors with the cause.
    """
    image_encoder, image_features = create_encoder(
        cfg.image_encoder,
        pretrained=cfg.pretrained,
        weights=cfg.image_weights,
        in_chans=3,
        extra_args=cfg.image_encoder_args,
        setting="model.image_encoder",
    )
    if not cfg.has_lidar_tower:
        return GeometryBridgeModel(image_encoder, image_features, None, None, cfg)
    lidar_encoder, lidar_features = create_encoder(
        cfg.lidar_encoder,
        pretrained=cfg.pretrained,
        weights=cfg.lidar_weights,
        in_chans=cfg.lidar_in_chans,
        extra_args=cfg.lidar_encoder_args,
        setting="model.lidar_encoder",
    )
    if cfg.method == "bridge":
        return GeometryBridgeModel(image_encoder, image_features, lidar_encoder, lidar_features, cfg)
    return TwoTowerModel(image_encoder, image_features, lidar_encoder, lidar_features, cfg)


def inference_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` for rebuilding a trained model before loading its checkpoint: no weight loading.

    The weights come from the checkpoint, so pretrained downloads, local backbone files (which
    may not exist on this machine) and packaged weights are skipped; the architecture and
    fingerprint stay the same. Normalise inputs with the original ``cfg`` (``data.normalize: auto``
    follows packaged weights).
    """
    return cfg.model_copy(update={"pretrained": False, "image_weights": None, "lidar_weights": None})
