"""Metric depth from the camera tower: an FPN-like decoder over a timm encoder's feature maps, its loss
and its metrics.

The camera tower of the geometry bridge predicts the depth of every pixel; the scan projected into
the image (:func:`liploc.lidar.camera_depth.camera_depth_image`, 0 where no point landed) supervises
it at the pixels with a LiDAR return only. The prediction then becomes points in the LiDAR frame
(:func:`liploc.lidar.back_projection.back_project_depth_torch`) and a BEV raster.

:class:`CameraDepthModel` runs the backbone once for both the pooled appearance features (the same
ones the tower's ``encoder(images)`` gives) and the multi-scale maps the :class:`DepthHead`
decodes, through timm's ``forward_intermediates``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DepthActivation = Literal["sigmoid", "softplus"]


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _group_norm(channels: int) -> nn.GroupNorm:
    # GroupNorm: depth batches are small (a few images a GPU), where BatchNorm statistics are poor.
    for groups in (8, 4, 2, 1):
        if channels % groups == 0:
            return nn.GroupNorm(groups, channels)
    return nn.GroupNorm(1, channels)


def _conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), _group_norm(out_ch), nn.ReLU(inplace=True)
    )


class DepthHead(nn.Module):
    """FPN-like decoder: feature maps (fine to coarse) -> metric depth (B, H, W) in metres.

    Each map gets a 1x1 lateral convolution to ``width`` channels; from the coarsest up, the
    running map is upsampled (bilinear) to the next finer map's size, added to its lateral, and
    smoothed by a 3x3 conv + GroupNorm + ReLU; after the finest map, ``refine`` more such blocks
    each double the resolution; a 3x3 conv predicts one channel, resized (bilinear) to
    ``output_size`` and turned into depth by the activation:

    - ``sigmoid``: ``min_depth + (max_depth - min_depth) * sigmoid(x)``, bounded (the scan's
      projected depth stops at 80 m by default);
    - ``softplus``: ``min_depth + softplus(x)``, unbounded above.

    The bias of the last convolution starts at the depth ``init_depth`` (a typical street depth),
    so that an untrained head predicts a plausible plane of depth instead of the middle of the range.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        width: int = 64,
        refine: int = 1,
        min_depth: float = 0.1,
        max_depth: float = 80.0,
        activation: DepthActivation = "sigmoid",
        init_depth: float = 15.0,
    ) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("DepthHead needs at least one feature map")
        if not 0 <= min_depth < init_depth < max_depth:
            raise ValueError(
                f"need 0 <= min_depth < init_depth < max_depth, got {min_depth}, {init_depth}, {max_depth}"
            )
        if activation not in ("sigmoid", "softplus"):
            raise ValueError(f"activation must be 'sigmoid' or 'softplus', got {activation!r}")
        self.min_depth, self.max_depth, self.activation = float(min_depth), float(max_depth), activation
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.smooth = nn.ModuleList(_conv_block(width, width) for _ in in_channels)
        self.refine = nn.ModuleList(_conv_block(width, width) for _ in range(refine))
        self.predict = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.normal_(self.predict.weight, std=1e-3)
        nn.init.constant_(self.predict.bias, self._inverse_activation(init_depth))

    def _inverse_activation(self, depth: float) -> float:
        if self.activation == "sigmoid":
            p = (depth - self.min_depth) / (self.max_depth - self.min_depth)
            return math.log(p / (1.0 - p))
        return math.log(math.expm1(depth - self.min_depth))

    def to_depth(self, logits: Tensor) -> Tensor:
        """The activation: raw output -> depth in metres."""
        if self.activation == "sigmoid":
            return self.min_depth + (self.max_depth - self.min_depth) * torch.sigmoid(logits)
        return self.min_depth + F.softplus(logits)

    def forward(self, features: Sequence[Tensor], output_size: tuple[int, int] | None = None) -> Tensor:
        """Feature maps, finest first ((B, C_i, H_i, W_i)), -> (B, H, W) depth.

        ``output_size`` (height, width): the resolution of the depth (e.g. the network's input
        size, or the size of the sparse target); by default that of the decoder's last map.
        """
        if len(features) != len(self.lateral):
            raise ValueError(f"DepthHead built for {len(self.lateral)} feature maps, got {len(features)}")
        x = None
        for level in reversed(range(len(features))):
            lateral = self.lateral[level](features[level])
            if x is not None:
                lateral = lateral + _resize(x, lateral.shape[-2:])
            x = self.smooth[level](lateral)
        assert x is not None
        for block in self.refine:
            x = block(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        logits = self.predict(x)
        if output_size is not None and tuple(logits.shape[-2:]) != tuple(output_size):
            logits = _resize(logits, output_size)
        return self.to_depth(logits)[:, 0]


def intermediate_channels(encoder: nn.Module, levels: int) -> list[int]:
    """Channels of the last ``levels`` feature maps of a timm encoder (finest first).

    These are the maps ``encoder.forward_intermediates(x, indices=levels)`` returns (timm lists
    them in ``feature_info``; for a ViT every map has the same width and stride).
    """
    info = getattr(encoder, "feature_info", None)
    if not info:
        raise ValueError(f"{type(encoder).__name__} has no feature_info; it cannot feed a DepthHead")
    entries = list(info) if not hasattr(info, "channels") else [{"num_chs": c} for c in info.channels()]
    if levels > len(entries):
        raise ValueError(f"{type(encoder).__name__} has {len(entries)} feature levels, asked for {levels}")
    return [int(e["num_chs"]) for e in entries[-levels:]]


class CameraDepthModel(nn.Module):
    """A timm encoder (``num_classes=0``) and a :class:`DepthHead` over its last ``levels`` maps.

    One pass of the backbone gives both the pooled features the camera tower feeds its projection
    head (the same as ``encoder(images)``) and the depth, by default at the input's resolution
    divided by ``output_stride``.
    """

    def __init__(
        self, encoder: nn.Module, levels: int = 4, output_stride: int = 1, **head_args: object
    ) -> None:
        super().__init__()
        if output_stride < 1:
            raise ValueError(f"output_stride must be a positive integer, got {output_stride}")
        self.output_stride = int(output_stride)
        if not hasattr(encoder, "forward_intermediates"):
            raise ValueError(f"{type(encoder).__name__} has no forward_intermediates (timm >= 1.0 models do)")
        self.encoder = encoder
        self.levels = levels
        self.head = DepthHead(intermediate_channels(encoder, levels), **head_args)  # type: ignore[arg-type]

    def forward(self, images: Tensor, output_size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) images -> ((B, F) pooled features, (B, h, w) depth).

        ``output_size`` (h, w) defaults to ``(ceil(H / output_stride), ceil(W / output_stride))``.
        """
        final, maps = self.encoder.forward_intermediates(images, indices=self.levels)
        pooled = self.encoder.forward_head(final)
        if output_size is None:
            h, w = images.shape[-2:]
            output_size = (-(-h // self.output_stride), -(-w // self.output_stride))
        return pooled, self.head(maps, output_size)


# --- loss and metrics ----------------------------------------------------------------------------

DepthLossKind = Literal["l1", "silog"]


def _match_target(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if pred.dim() == 4:
        pred = pred[:, 0]
    if target.dim() == 4:
        target = target[:, 0]
    if pred.shape[-2:] != target.shape[-2:]:
        # Resize the dense prediction, never the sparse target (a resize would blend depths with
        # the zeros of empty pixels).
        pred = _resize(pred[:, None], target.shape[-2:])[:, 0]
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} do not match")
    return pred, target


def valid_depth_mask(target: Tensor, max_depth: float | None = None) -> Tensor:
    """Pixels with a LiDAR return: ``0 < target`` (``< max_depth`` when given), finite."""
    valid = torch.isfinite(target) & (target > 0)
    if max_depth is not None:
        valid &= target < max_depth
    return valid


def depth_loss(
    pred: Tensor,
    target: Tensor,
    kind: DepthLossKind = "silog",
    silog_lambda: float = 0.85,
    max_depth: float | None = None,
) -> Tensor:
    """Depth loss over the pixels with a LiDAR return only (empty target pixels carry no loss).

    Args:
        pred: (B, H, W) or (B, 1, H, W) predicted depth in metres (> 0); resized (bilinear) to the
            target's size when it differs.
        target: sparse depth of the same layout, 0 where no point landed.
        kind: ``l1``: mean absolute error in metres over the valid pixels of the batch.
            ``silog``: the scale-invariant log loss (Eigen et al. 2014, as in BTS),
            ``sqrt(mean(g^2) - lambda * mean(g)^2)`` with ``g = log(pred) - log(target)`` per
            image, averaged over the images that have a valid pixel; ``lambda = 1`` would make it
            blind to a global scale, 0.85 keeps most of the metric scale the BEV needs.
        silog_lambda: ``lambda`` above.
        max_depth: targets at or beyond this are ignored too.

    Returns:
        A scalar; 0 (with a zero gradient) when no pixel of the batch is valid. At the target's
        resolution, predictions at empty pixels get exactly zero gradient: they are selected out
        before any arithmetic (a prediction resized to the target spreads each of its pixels over
        neighbouring target pixels, valid ones included).
    """
    if kind not in ("l1", "silog"):
        raise ValueError(f"depth loss must be 'l1' or 'silog', got {kind!r}")
    pred, target = _match_target(pred, target)
    valid = valid_depth_mask(target, max_depth)
    if not valid.any():
        return pred.sum() * 0.0
    if kind == "l1":
        return (pred[valid] - target[valid]).abs().mean()
    b = pred.shape[0]
    # Select before the log: a log of a masked-out pixel could be inf/NaN, and where()'s gradient
    # of an unused inf branch is NaN.
    g = torch.log(pred[valid].clamp_min(1e-6)) - torch.log(target[valid])
    image = torch.arange(b, device=pred.device)[:, None, None].expand_as(valid)[valid]
    n = torch.zeros(b, dtype=g.dtype, device=g.device).index_add(0, image, torch.ones_like(g))
    s1 = torch.zeros_like(n).index_add(0, image, g)
    s2 = torch.zeros_like(n).index_add(0, image, g * g)
    has = n > 0
    mean, mean_sq = s1[has] / n[has], s2[has] / n[has]
    # The clamp keeps sqrt's gradient finite when an image's errors are all equal (variance 0).
    return torch.sqrt((mean_sq - silog_lambda * mean * mean).clamp_min(1e-12)).mean()


@torch.no_grad()
def depth_metrics(pred: Tensor, target: Tensor, max_depth: float | None = None) -> dict[str, float]:
    """AbsRel, RMSE (metres), delta < 1.25 and the pixel count over the valid pixels of a batch.

    Every valid pixel counts once (pixels of all images pooled), as in the KITTI depth benchmark's
    per-pixel averages over a set. NaN metrics when no pixel is valid.
    """
    pred, target = _match_target(pred, target)
    valid = valid_depth_mask(target, max_depth)
    n = int(valid.sum())
    if n == 0:
        return {"abs_rel": math.nan, "rmse": math.nan, "delta1": math.nan, "n_pixels": 0}
    p, t = pred[valid].double(), target[valid].double()
    ratio = torch.maximum(p / t, t / p.clamp_min(1e-12))
    return {
        "abs_rel": float(((p - t).abs() / t).mean()),
        "rmse": float(torch.sqrt(((p - t) ** 2).mean())),
        "delta1": float((ratio < 1.25).double().mean()),
        "n_pixels": n,
    }


def depth_error_sums(pred: Tensor, target: Tensor, max_depth: float | None = None) -> list[float]:
    """AbsRel, squared error and delta < 1.25 summed over a batch's valid pixels, and their count:
    what adds up over batches (and processes) into :func:`pooled_depth_metrics`."""
    m = depth_metrics(pred, target, max_depth)
    n = m["n_pixels"]
    if n == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [m["abs_rel"] * n, m["rmse"] ** 2 * n, m["delta1"] * n, float(n)]


def pooled_depth_metrics(sums: Sequence[float]) -> dict[str, float]:
    """AbsRel, RMSE (metres) and delta < 1.25 of added-up :func:`depth_error_sums`, every pixel
    once; NaN when no pixel was valid."""
    abs_rel, squared, delta1, pixels = (float(x) for x in sums)
    if pixels == 0:
        return {"abs_rel": math.nan, "rmse": math.nan, "delta1": math.nan}
    return {"abs_rel": abs_rel / pixels, "rmse": math.sqrt(squared / pixels), "delta1": delta1 / pixels}
