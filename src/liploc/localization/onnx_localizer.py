"""Localization on onnxruntime: a map and the ONNX export of its model, no torch in the loop.

The counterpart of :class:`liploc.localization.localize.Localizer` for ``--backend onnx``. The export
defaults to the map's ``model/onnx`` folder (``liploc export MAP/model/model.safetensors --format
onnx --out MAP/model/onnx`` makes it); an export of another model than the map's is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from liploc.datasets import load_image
from liploc.errors import DataError
from liploc.interop.onnx_encoder import OnnxImageEncoder
from liploc.localization.lidar_map import LidarMap, Match
from liploc.localization.map_folder import MapFolder

if TYPE_CHECKING:
    from liploc.config import Config
    from liploc.localization.localize import Localizer


@dataclass
class OnnxLocalizer:
    """A map and the onnxruntime image encoder of its model."""

    lidar_map: LidarMap
    encoder: OnnxImageEncoder

    @classmethod
    def open(
        cls, map_dir: str | Path, onnx_dir: str | Path | None = None, *, threads: int | None = None
    ) -> OnnxLocalizer:
        """Load a map folder and an ONNX export of its model (default ``MAP/model/onnx``)."""
        map_dir = Path(map_dir)
        lidar_map = LidarMap.load(map_dir)
        if onnx_dir is None:
            onnx_dir = MapFolder(map_dir).onnx_dir
            if not onnx_dir.is_dir():
                raise DataError(
                    onnx_dir,
                    "no ONNX export of the map's model; make it with `liploc export "
                    f"{MapFolder(map_dir).checkpoint} --format onnx --out {onnx_dir}` "
                    "or pass --onnx DIR",
                )
        # A geometry-bridge export back-projects with the map's camera (one rig made the map).
        encoder = OnnxImageEncoder(onnx_dir, threads=threads, camera=lidar_map.camera)
        lidar_map.check_query_model(encoder.fingerprint)  # refuse another model's export up front
        return cls(lidar_map, encoder)

    def localize_images(self, images: Sequence[np.ndarray], k: int = 5) -> list[list[Match]]:
        """Top-``k`` map entries for each RGB image array."""
        emb = self.encoder.embed(images)
        return self.lidar_map.localize(emb, k, query_fingerprint=self.encoder.fingerprint)

    def localize(self, images: Sequence[str | Path], k: int = 5) -> list[list[Match]]:
        """Top-``k`` map entries (poses and scores) for each camera image file."""
        return self.localize_images([load_image(Path(p)) for p in images], k)

    def sequence_localizer(self) -> Localizer:
        """A ``Localizer`` whose ``localize_sequence`` runs this export's network (its
        preprocessing and the sequence matching import torch; timm and the towers are not loaded)."""
        return onnx_sequence_localizer(self.lidar_map, self.encoder, export_config(self.encoder.folder))


class OnnxImageEmbedder:
    """The :class:`liploc.localization.localize.ImageEmbedder` seam on onnxruntime: lets a
    ``Localizer`` (its sequence localization) run the camera tower of an ONNX export.

    The Localizer hands over images already resized to the network's input (uint8 scale), so the
    export's own resize is the identity here and only its normalisation applies.
    """

    def __init__(self, encoder: OnnxImageEncoder) -> None:
        self.encoder = encoder
        self.fingerprint = encoder.fingerprint

    def embed(self, images: Any) -> np.ndarray:
        """(B, 3, H, W) torch tensor in the 0..255 scale -> (B, D) float32 unit-norm."""
        batch = np.asarray(images.cpu().numpy())
        return self.encoder.embed_prepared([self.encoder.prepare(x.transpose(1, 2, 0)) for x in batch])


def export_config(folder: str | Path) -> Config:
    """The training configuration an ONNX export records (its preprocessing settings)."""
    from liploc.config import config_from_dict
    from liploc.interop.onnx_encoder import SPEC_FILE, read_export_spec

    spec = read_export_spec(folder)
    if not isinstance(spec.get("config"), dict):
        raise DataError(Path(folder) / SPEC_FILE, "export description lacks the model's configuration")
    return config_from_dict(spec["config"], source=str(folder))


def onnx_sequence_localizer(lidar_map: LidarMap, encoder: OnnxImageEncoder, config: Config) -> Localizer:
    """A ``Localizer`` of ``lidar_map`` whose network is ``encoder`` (for ``localize_sequence``).

    ``config`` is the export's training configuration (``preprocessing.json``): the Localizer
    resizes with it. The Localizer's preprocessing and sequence matching import torch; the
    network runs on onnxruntime.
    """
    from liploc.localization.localize import Localizer

    return Localizer(
        lidar_map,
        None,
        config,
        "cpu",
        fingerprint=encoder.fingerprint,
        embedder=OnnxImageEmbedder(encoder),
    )
