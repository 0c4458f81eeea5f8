"""Models: timm encoders, projection heads, the two-tower model and create_model()."""

from liploc.models.encoders import check_model_name, create_encoder, feature_dim, read_backbone_weights
from liploc.models.factory import create_model, inference_config
from liploc.models.heads import ProjectionHead
from liploc.models.two_tower import ARCHITECTURE_FIELDS, TwoTowerModel

__all__ = [
    "ARCHITECTURE_FIELDS",
    "ProjectionHead",
    "TwoTowerModel",
    "check_model_name",
    "create_encoder",
    "create_model",
    "feature_dim",
    "inference_config",
    "read_backbone_weights",
]
