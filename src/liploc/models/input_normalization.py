"""Mean and std of each tower's input normalisation: the encoder's pretrained data config from timm.

A pretrained encoder expects its inputs normalised as in its pretraining (ImageNet statistics for
torchvision-style ResNets, 0.5/0.5 for many ViTs); feeding ViT weights ImageNet-normalised inputs
shifts every activation. ``data.normalize: auto`` follows timm's ``pretrained_cfg`` of the encoder
name; ``imagenet`` and ``none`` force a choice (the reference code uses ImageNet's for both towers).
"""

from __future__ import annotations

from functools import lru_cache

from liploc.config import DataConfig, ModelConfig
from liploc.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MeanStd = tuple[tuple[float, ...], tuple[float, ...]]


@lru_cache(maxsize=64)
def pretrained_mean_std(encoder: str) -> MeanStd:
    """(mean, std) of the timm model ``encoder``'s default pretrained data config.

    A ConfigError when timm knows no pretrained config for that name (set ``data.normalize``).
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(encoder)
    if cfg is None or cfg.mean is None or cfg.std is None:
        raise ConfigError(
            f"data.normalize is auto but timm has no pretrained data config for encoder '{encoder}'; "
            "set data.normalize to imagenet or none"
        )
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)


def tower_mean_std(data: DataConfig, model: ModelConfig | None) -> tuple[MeanStd | None, MeanStd | None]:
    """(image tower, LiDAR tower) normalisation: (mean, std) each, or None for no normalisation.

    ``model`` is needed for ``normalize: auto`` (each tower follows its own encoder).
    """
    if data.normalize == "none":
        return None, None
    if data.normalize == "imagenet":
        return (IMAGENET_MEAN, IMAGENET_STD), (IMAGENET_MEAN, IMAGENET_STD)
    if model is None:
        raise ValueError(
            "data.normalize is auto: the model config is needed to find the encoders' statistics"
        )
    return pretrained_mean_std(model.image_encoder), pretrained_mean_std(model.lidar_encoder)
