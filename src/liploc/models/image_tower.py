"""The camera tower alone (encoder + projection head), built straight from checkpoint tensors.

Localization embeds only camera images: building the LiDAR tower, or randomly initialising either
tower before overwriting every weight, is wasted start-up time. :func:`load_image_tower` builds
the modules on torch's ``meta`` device (shapes only, no memory, no initialisation) and then takes
the checkpoint's tensors as its parameters (``load_state_dict(assign=True)``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from liploc.config import ModelConfig
from liploc.models.heads import ProjectionHead

IMAGE_PREFIXES = ("image_encoder.", "image_head.")
"""State-dict keys of the two-tower model that belong to the camera tower."""


class ImageTower(nn.Module):
    """Camera images [B, 3, H, W] -> unit-norm embeddings [B, D]; the same module names (and so
    state-dict keys) as the camera half of :class:`~liploc.models.TwoTowerModel`."""

    def __init__(self, image_encoder: nn.Module, image_head: ProjectionHead, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = image_encoder
        self.image_head = image_head

    @property
    def embed_dim(self) -> int:
        """Width of the embeddings."""
        return self.cfg.embed_dim

    def encode_image(self, image: Tensor) -> Tensor:
        """Camera images [B, 3, H, W] -> unit-norm embeddings [B, D]."""
        return F.normalize(self.image_head(self.image_encoder(image)), dim=-1)

    def forward(self, image: Tensor) -> Tensor:
        return self.encode_image(image)


def _build(cfg: ModelConfig) -> ImageTower:
    from liploc.models.encoders import create_encoder, feature_dim

    encoder, _ = create_encoder(
        cfg.image_encoder, in_chans=3, extra_args=cfg.image_encoder_args, setting="model.image_encoder"
    )
    head = ProjectionHead(feature_dim(encoder), cfg.embed_dim, cfg.head_dropout)
    return ImageTower(encoder, head, cfg)


def load_image_tower(cfg: ModelConfig, model_state: Mapping[str, Tensor]) -> ImageTower:
    """The camera tower of ``cfg`` holding the camera tensors of a two-tower ``model_state``
    (keys as in ``TwoTowerModel.state_dict()``), in eval mode on the CPU.

    Raises KeyError/RuntimeError (from ``load_state_dict``) when the tensors do not fit.
    """
    state = {k: v for k, v in model_state.items() if k.startswith(IMAGE_PREFIXES)}
    with torch.device("meta"):
        tower = _build(cfg)
    tower.load_state_dict(state, strict=True, assign=True)
    leftover = [name for name, t in [*tower.named_parameters(), *tower.named_buffers()] if t.is_meta]
    if leftover:
        # Non-persistent buffers (not in any state dict) cannot come from the checkpoint: build
        # this architecture the ordinary way instead.
        tower = _build(cfg)
        tower.load_state_dict(state, strict=True)
    return tower.eval()
