"""Models: timm encoders, projection heads, the two-tower and geometry-bridge models and create_model()."""

from liploc.models.encoders import check_model_name, create_encoder, feature_dim, read_backbone_weights
from liploc.models.factory import create_model, inference_config
from liploc.models.geometry_bridge import CalibratedImageTower, GeometryBridgeModel
from liploc.models.heads import ProjectionHead
from liploc.models.image_tower import ImageTower, load_image_tower
from liploc.models.two_tower import ARCHITECTURE_FIELDS, TwoTowerModel, architecture_of, state_fingerprint

__all__ = [
    "ARCHITECTURE_FIELDS",
    "CalibratedImageTower",
    "GeometryBridgeModel",
    "ImageTower",
    "ProjectionHead",
    "TwoTowerModel",
    "architecture_of",
    "check_model_name",
    "create_encoder",
    "create_model",
    "feature_dim",
    "inference_config",
    "load_image_tower",
    "read_backbone_weights",
    "state_fingerprint",
]
