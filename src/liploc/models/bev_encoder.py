"""BEV encoder of the geometry bridge: a BEV raster -> an embedding, and its fusion with appearance.

Both modalities' BEV rasters (:mod:`liploc.lidar.bev_raster`) go through an encoder of this kind
(one each, like the two towers), then the contrastive loss. A sideways move of the vehicle is a
sideways translation of the raster; the encoder is fully convolutional and pools globally, so a
translation of the content that stays inside the raster changes the embedding only through the
convolutions' stride (exactly invariant for shifts by a multiple of :attr:`BevEncoder.stride`
cells, away from the edges) and through what enters or leaves the raster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from liploc.models.heads import ProjectionHead

BevPooling = Literal["gem", "max", "avg"]


class GeM(nn.Module):
    """Generalised-mean pooling ``mean(x^p)^(1/p)`` over H, W (Radenovic et al.); learnable ``p``.

    ``p = 1`` is average pooling, large ``p`` approaches max pooling; both, and everything in
    between, ignore where in the map a feature is.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C)."""
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class BlurPool(nn.Module):
    """Anti-aliased downsampling by 2 (Zhang, "Making convolutional networks shift-invariant
    again", 2019): a [1, 2, 1] x [1, 2, 1] / 16 blur, then every second pixel.

    Why: a strided convolution samples its input's features on a grid of the stride, so a shift by
    one cell changes them as much as different content does. Measured with a random-init encoder
    on sparse blobs: a 1-cell shift moved the pooled features by 10 % of their distance to the
    empty raster's (another scene of the same kind: 12 %); with this blur, by 0.8 % (other scene 19 %).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = (k[:, None] * k[None, :]) / 16.0
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone(), persistent=False)
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, ceil(H / 2), ceil(W / 2))."""
        # Zero padding: the raster's outside is empty (0), and the features of empty cells are
        # what every empty part of the raster looks like anyway.
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.kernel, stride=2, groups=self.channels)


def _stage(in_ch: int, out_ch: int, downsample: bool, antialias: bool) -> nn.Sequential:
    stride = 2 if downsample and not antialias else 1
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]
    if downsample and antialias:
        layers.append(BlurPool(out_ch))
    layers += [
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]
    return nn.Sequential(*layers)


class BevEncoder(nn.Module):
    """BEV raster (B, C, rows, cols) -> (B, embed_dim) embedding (not normalised).

    Backbone: by default a small CNN (a stride-1 stage, then one stage per further width that
    halves the resolution, anti-aliased with :class:`BlurPool` unless ``antialias=False``: total
    stride ``2 ** (len(widths) - 1)``); or any timm model by name (``backbone``),
    built with ``in_chans`` = the raster's channels, no classifier, no pooling. Then a
    translation-tolerant global pooling (GeM by default, or max/avg) and LIP-Loc's projection head.
    """

    def __init__(
        self,
        in_chans: int = 2,
        embed_dim: int = 256,
        widths: Sequence[int] = (32, 64, 128, 256),
        pooling: BevPooling = "gem",
        backbone: str | None = None,
        dropout: float = 0.1,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        if backbone is not None:
            self.backbone = timm.create_model(
                backbone, pretrained=False, in_chans=in_chans, num_classes=0, global_pool=""
            )
            self.num_features = int(self.backbone.num_features)
            info = getattr(self.backbone, "feature_info", None) or [{"reduction": 1}]
            self.stride = int(info[-1]["reduction"])
        else:
            if not widths:
                raise ValueError("BevEncoder needs at least one width")
            stages, prev = [], in_chans
            for k, width in enumerate(widths):
                stages.append(_stage(prev, width, downsample=k > 0, antialias=antialias))
                prev = width
            self.backbone = nn.Sequential(*stages)
            self.num_features = int(widths[-1])
            self.stride = 2 ** (len(widths) - 1)
        if pooling == "gem":
            self.pool: nn.Module = GeM()
        elif pooling == "max":
            self.pool = nn.AdaptiveMaxPool2d(1)
        elif pooling == "avg":
            self.pool = nn.AdaptiveAvgPool2d(1)
        else:
            raise ValueError(f"pooling must be 'gem', 'max' or 'avg', got {pooling!r}")
        self.head = ProjectionHead(self.num_features, embed_dim, dropout)

    def features(self, bev: Tensor) -> Tensor:
        """(B, C, rows, cols) -> pooled (B, num_features)."""
        return self.pool(self.backbone(bev)).flatten(1)

    def forward(self, bev: Tensor) -> Tensor:
        """(B, C, rows, cols) raster -> (B, embed_dim) embedding (not normalised)."""
        return self.head(self.features(bev))


def fuse_embeddings(appearance: Tensor | None, bev: Tensor | None, bev_weight: float = 0.5) -> Tensor:
    """The retrieval embedding of the geometry bridge: appearance and BEV, or BEV alone.

    Both are L2-normalised, scaled by ``sqrt(1 - w)`` and ``sqrt(w)`` (``w = bev_weight``) and
    concatenated: the result has unit norm and the dot product of two fused embeddings is
    ``(1 - w) * cos(appearance) + w * cos(bev)``. ``w = 1`` (or ``appearance=None``) gives the
    normalised BEV embedding alone, ``w = 0`` (or ``bev=None``) the appearance alone: a smaller
    embedding, not zero-padded.
    """
    if not 0.0 <= bev_weight <= 1.0:
        raise ValueError(f"bev_weight must be in 0..1, got {bev_weight}")
    if appearance is None and bev is None:
        raise ValueError("fuse_embeddings needs an appearance or a BEV embedding")
    if bev is None or bev_weight == 0.0:
        if appearance is None:
            raise ValueError("bev_weight 0 keeps the appearance embedding, but none was given")
        return F.normalize(appearance, dim=-1)
    if appearance is None or bev_weight == 1.0:
        return F.normalize(bev, dim=-1)
    a = F.normalize(appearance, dim=-1) * (1.0 - bev_weight) ** 0.5
    g = F.normalize(bev, dim=-1) * bev_weight**0.5
    return torch.cat([a, g], dim=-1)
