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

from liploc.config import BRIDGE_TRAINING_FIELDS, ModelConfig
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
# Fields added later enter the architecture only when set away from their default, so that the
# fingerprints of models made before they existed (and the maps and caches keyed by them) hold.
OPTIONAL_ARCHITECTURE_FIELDS = {"encoder_fc_dim": None, "normalize": True}


class TowerModel(nn.Module):
    """What both kinds of model (:class:`TwoTowerModel`, the geometry bridge's) share: AdamW
    parameter groups from the subclass's ``_groups``, and the architecture and fingerprint of
    ``self.cfg`` and the weights."""

    cfg: ModelConfig

    def _add_appearance_heads(self, image_features: int, lidar_features: int) -> None:
        """The appearance towers' layers after the backbones: with ``cfg.encoder_fc_dim`` a Linear
        layer each (``image_fc``, ``lidar_fc``, as in the reference code's ViT models), then the
        projection heads into the embedding space (``image_head``, ``lidar_head``)."""
        cfg = self.cfg
        if cfg.encoder_fc_dim is not None:
            self.image_fc = nn.Linear(image_features, cfg.encoder_fc_dim)
            self.lidar_fc = nn.Linear(lidar_features, cfg.encoder_fc_dim)
            image_features = lidar_features = cfg.encoder_fc_dim
        self.image_head = ProjectionHead(image_features, cfg.embed_dim, cfg.head_dropout)
        self.lidar_head = ProjectionHead(lidar_features, cfg.embed_dim, cfg.head_dropout)

    def _groups(
        self, lr_head: float, lr_image_encoder: float, lr_lidar_encoder: float
    ) -> list[tuple[str, list[nn.Parameter], float]]:
        """(name, parameters, learning rate) of each group (see :meth:`param_groups`)."""
        raise NotImplementedError

    def param_groups(
        self,
        lr_head: float = 1e-3,
        lr_image_encoder: float = 1e-4,
        lr_lidar_encoder: float = 1e-5,
        weight_decay: float = 1e-3,
    ) -> list[dict[str, Any]]:
        """AdamW parameter groups (named ``heads``, ``image_encoder``, ``lidar_encoder``, and
        ``bridge`` for the geometry bridge).

        Defaults are the paper's. Frozen parameters and empty groups are left out.
        """
        out = []
        for name, params, lr in self._groups(lr_head, lr_image_encoder, lr_lidar_encoder):
            trainable = [p for p in params if p.requires_grad]
            if trainable:
                out.append({"params": trainable, "lr": lr, "weight_decay": weight_decay, "name": name})
        return out

    def architecture(self) -> dict[str, Any]:
        """The configuration fields that define the network (JSON-compatible)."""
        return architecture_of(self.cfg)

    @torch.no_grad()
    def fingerprint(self) -> str:
        """sha256 (hex) of the architecture and every tensor of the state dict.

        Equal for the same network with the same weights on any device; used to refuse embeddings
        made by another model. Dropout and how the weights were obtained do not enter.
        """
        return state_fingerprint(self.architecture(), self.state_dict())


class TwoTowerModel(TowerModel):
    """Image tower and LiDAR tower mapping into one embedding space of ``embed_dim``.

    Embeddings are L2-normalised unless ``cfg.normalize`` is false (the paper's model, which
    retrieves by the raw dot product). With ``cfg.encoder_fc_dim`` a Linear layer follows each
    backbone (``image_fc``, ``lidar_fc``), as in the reference code's ViT models.
    """

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
        self.image_fc: nn.Linear | None = None
        self.lidar_fc: nn.Linear | None = None
        self._add_appearance_heads(image_features, lidar_features)

    @property
    def embed_dim(self) -> int:
        """Width of the embeddings."""
        return self.cfg.embed_dim

    def _embed(self, features: Tensor, fc: nn.Linear | None, head: ProjectionHead) -> Tensor:
        if fc is not None:
            features = fc(features)
        embedding = head(features)
        return F.normalize(embedding, dim=-1) if self.cfg.normalize else embedding

    def encode_image(self, image: Tensor) -> Tensor:
        """Camera images [B, 3, H, W] -> embeddings [B, D] (unit norm when ``cfg.normalize``)."""
        return self._embed(self.image_encoder(image), self.image_fc, self.image_head)

    def encode_lidar(self, lidar: Tensor) -> Tensor:
        """LiDAR images [B, C, H, W] -> embeddings [B, D] (unit norm when ``cfg.normalize``)."""
        return self._embed(self.lidar_encoder(lidar), self.lidar_fc, self.lidar_head)

    def forward(self, image: Tensor, lidar: Tensor) -> tuple[Tensor, Tensor]:
        """Embeddings (image, LiDAR), each [B, D] (unit norm when ``cfg.normalize``)."""
        return self.encode_image(image), self.encode_lidar(lidar)

    def _groups(
        self, lr_head: float, lr_image_encoder: float, lr_lidar_encoder: float
    ) -> list[tuple[str, list[nn.Parameter], float]]:
        # The reference code's encoder fc belongs to its encoder (encoder learning rate, no decay).
        image_fc = list(self.image_fc.parameters()) if self.image_fc is not None else []
        lidar_fc = list(self.lidar_fc.parameters()) if self.lidar_fc is not None else []
        return [
            ("heads", [*self.image_head.parameters(), *self.lidar_head.parameters()], lr_head),
            ("image_encoder", [*self.image_encoder.parameters(), *image_fc], lr_image_encoder),
            ("lidar_encoder", [*self.lidar_encoder.parameters(), *lidar_fc], lr_lidar_encoder),
        ]

    def data_configs(self) -> dict[str, dict[str, Any]]:
        """timm's input settings of each encoder's pretrained weights (``input_size``, ``mean``,
        ``std``, ...) under ``image`` and ``lidar``. ImageNet statistics are not universal: e.g.
        ``vit_small_patch16_224`` weights expect mean = std = 0.5.
        """
        return {
            "image": timm.data.resolve_model_data_config(self.image_encoder),
            "lidar": timm.data.resolve_model_data_config(self.lidar_encoder),
        }


def architecture_of(cfg: ModelConfig) -> dict[str, Any]:
    """The fields of ``cfg`` that define the network (JSON-compatible): the model's architecture.

    Optional fields enter only when they differ from their default, so that models made before
    they existed keep their fingerprint.
    """
    config = cfg.model_dump(mode="json")
    out = {name: config[name] for name in ARCHITECTURE_FIELDS}
    for name, default in OPTIONAL_ARCHITECTURE_FIELDS.items():
        if config[name] != default:
            out[name] = config[name]
    if cfg.method != "appearance":
        # The bridge's settings enter only for bridge models (appearance fingerprints hold), and
        # only those that change what the network computes (not its losses).
        out["method"] = cfg.method
        out["bridge"] = {k: v for k, v in config["bridge"].items() if k not in BRIDGE_TRAINING_FIELDS}
    return out


@torch.no_grad()
def state_fingerprint(architecture: dict[str, Any], state: Mapping[str, Tensor]) -> str:
    """:meth:`TwoTowerModel.fingerprint` of an architecture and a state dict, without the model
    (tensors on any device; a saver passes the CPU copies it already holds, so nothing is copied
    twice)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(architecture, sort_keys=True).encode())
    for key, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"\n{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
