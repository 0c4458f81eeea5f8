"""The two-tower model: camera image encoder and LiDAR encoder, each with a projection head."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import timm
import timm.data
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from liploc.config import ModelConfig
from liploc.models.heads import ProjectionHead

# ModelConfig fields that define what the network computes (not how its weights were obtained).
ARCHITECTURE_FIELDS = (
    "image_encoder",
    "lidar_encoder",
    "image_encoder_args",
    "lidar_encoder_args",
    "embed_dim",
    "lidar_in_chans",
)


class TwoTowerModel(nn.Module):
    """Image tower and LiDAR tower mapping into one L2-normalised embedding space of ``embed_dim``."""

    def __init__(
        self,
        image_encoder: nn.Module,
        image_features: int,
        lidar_encoder: nn.Module,
        lidar_features: int,
        cfg: ModelConfig,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = image_encoder
        self.lidar_encoder = lidar_encoder
        self.image_head = ProjectionHead(image_features, cfg.embed_dim, cfg.head_dropout)
        self.lidar_head = ProjectionHead(lidar_features, cfg.embed_dim, cfg.head_dropout)

    @property
    def embed_dim(self) -> int:
        """Width of the embeddings."""
        return self.cfg.embed_dim

    def encode_image(self, image: Tensor) -> Tensor:
        """Camera images [B, 3, H, W] -> unit-norm embeddings [B, D]."""
        return F.normalize(self.image_head(self.image_encoder(image)), dim=-1)

    def encode_lidar(self, lidar: Tensor) -> Tensor:
        """LiDAR images [B, C, H, W] -> unit-norm embeddings [B, D]."""
        return F.normalize(self.lidar_head(self.lidar_encoder(lidar)), dim=-1)

    def forward(self, image: Tensor, lidar: Tensor) -> tuple[Tensor, Tensor]:
        """Embeddings (image, LiDAR), each [B, D] and unit norm."""
        return self.encode_image(image), self.encode_lidar(lidar)

    def param_groups(
        self,
        lr_head: float = 1e-3,
        lr_image_encoder: float = 1e-4,
        lr_lidar_encoder: float = 1e-5,
        weight_decay: float = 1e-3,
    ) -> list[dict[str, Any]]:
        """AdamW parameter groups (named ``heads``, ``image_encoder``, ``lidar_encoder``).

        Defaults are the paper's. Frozen parameters and empty groups are left out.
        """
        groups = [
            ("heads", [*self.image_head.parameters(), *self.lidar_head.parameters()], lr_head),
            ("image_encoder", list(self.image_encoder.parameters()), lr_image_encoder),
            ("lidar_encoder", list(self.lidar_encoder.parameters()), lr_lidar_encoder),
        ]
        out = []
        for name, params, lr in groups:
            trainable = [p for p in params if p.requires_grad]
            if trainable:
                out.append({"params": trainable, "lr": lr, "weight_decay": weight_decay, "name": name})
        return out

    def data_configs(self) -> dict[str, dict[str, Any]]:
        """timm's input settings of each encoder's pretrained weights (``input_size``, ``mean``,
        ``std``, ...) under ``image`` and ``lidar``. ImageNet statistics are not universal: e.g.
        ``vit_small_patch16_224`` weights expect mean = std = 0.5.
        """
        return {
            "image": timm.data.resolve_model_data_config(self.image_encoder),
            "lidar": timm.data.resolve_model_data_config(self.lidar_encoder),
        }

    def architecture(self) -> dict[str, Any]:
        """The configuration fields that define the network (JSON-compatible)."""
        config = self.cfg.model_dump(mode="json")
        return {name: config[name] for name in ARCHITECTURE_FIELDS}

    @torch.no_grad()
    def fingerprint(self) -> str:
        """sha256 (hex) of the architecture and every tensor of the state dict.

        Equal for the same network with the same weights on any device; used to refuse embeddings
        made by another model. Dropout and how the weights were obtained do not enter.
        """
        return state_fingerprint(self.architecture(), self.state_dict())


def architecture_of(cfg: ModelConfig) -> dict[str, Any]:
    """The fields of ``cfg`` that define the network (JSON-compatible): the model's architecture."""
    config = cfg.model_dump(mode="json")
    return {name: config[name] for name in ARCHITECTURE_FIELDS}


@torch.no_grad()
def state_fingerprint(architecture: dict[str, Any], state: Mapping[str, Tensor]) -> str:
    """:meth:`TwoTowerModel.fingerprint` of a model's architecture and state dict, without the
    model (e.g. from a checkpoint's tensors)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(architecture, sort_keys=True).encode())
    for key, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"\n{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
