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

IMAGE_PREFIXES = ("image_encoder.", "image_fc.", "image_head.")
"""State-dict keys of the two-tower model that belong to the camera tower."""


class ImageTower(nn.Module):
    """Camera images [B, 3, H, W] -> unit-norm embeddings [B, D]; the same module names (and so
    state-dict keys) as the camera half of :class:`~liploc.models.TwoTowerModel`."""

    def __init__(
        self,
        image_encoder: nn.Module,
        image_head: ProjectionHead,
        cfg: ModelConfig,
        image_fc: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = image_encoder
        self.image_fc = image_fc
        self.image_head = image_head

    @property
    def embed_dim(self) -> int:
        """Width of the embeddings."""
        return self.cfg.embed_dim

    def encode_image(self, image: Tensor) -> Tensor:
        """Camera images [B, 3, H, W] -> embeddings [B, D] (unit norm when ``cfg.normalize``)."""
        features = self.image_encoder(image)
        if self.image_fc is not None:
            features = self.image_fc(features)
        embedding = self.image_head(features)
        return F.normalize(embedding, dim=-1) if self.cfg.normalize else embedding

    def forward(self, image: Tensor) -> Tensor:
        return self.encode_image(image)


def _build(cfg: ModelConfig) -> ImageTower:
    from liploc.models.encoders import create_encoder, feature_dim

    encoder, _ = create_encoder(
        cfg.image_encoder, in_chans=3, extra_args=cfg.image_encoder_args, setting="model.image_encoder"
    )
    features = feature_dim(encoder)
    fc = None
    if cfg.encoder_fc_dim is not None:  # the reference code's ViT models: a Linear after the backbone
        fc = nn.Linear(features, cfg.encoder_fc_dim)
        features = cfg.encoder_fc_dim
    head = ProjectionHead(features, cfg.embed_dim, cfg.head_dropout)
    return ImageTower(encoder, head, cfg, fc)


def load_image_tower(cfg: ModelConfig, model_state: Mapping[str, Tensor]) -> ImageTower:
    """The camera tower of ``cfg`` holding the camera tensors of a two-tower ``model_state``
    (keys as in ``TwoTowerModel.state_dict()``), in eval mode on the CPU; for a geometry-bridge
    ``cfg``, the whole :class:`~liploc.models.GeometryBridgeModel` (its ``encode_image`` takes the
    calibration; :class:`~liploc.models.CalibratedImageTower` fills it in).

    Raises KeyError/RuntimeError (from ``load_state_dict``) when the tensors do not fit.
    """
    if cfg.method == "bridge":
        # The camera side of a bridge model is most of it (depth head, BEV encoders) and its BEV
        # encoders' blur kernels are no checkpoint tensors: build the whole model and load it.
        from liploc.models.factory import create_model

        model = create_model(cfg)
        model.load_state_dict(dict(model_state), strict=True)
        return model.eval()  # type: ignore[return-value]
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
