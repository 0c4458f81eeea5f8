"""The one place that knows a map folder's files, and the JSON record of a match.

A map folder::

    manifest.json        format, version, sizes, the model's fingerprint and config, file checksums
    embeddings.npy       (N, D) float32 LiDAR embeddings
    poses.npy            (N, 4, 4) LiDAR poses in the z-up world frame
    frames.json          sequence, frame index and timestamp of each entry
    index.faiss          the search index over the embeddings
    model/model.safetensors (+ .json)   the checkpoint that embedded the scans
    model/onnx/          the camera tower's ONNX export (``liploc localize`` without torch)

Commands, the service and the ONNX backend ask a :class:`MapFolder` for these paths instead of
spelling them; :func:`match_json` is the one JSON form of a retrieved entry and
:func:`path_json` of a step of a sequence's best path (CLI and service).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liploc.localization.lidar_map import Match

MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
POSES = "poses.npy"
FRAMES = "frames.json"
INDEX = "index.faiss"
DATA_FILES = (EMBEDDINGS, POSES, FRAMES, INDEX)
"""The files the manifest's checksums cover."""
MODEL_DIR = "model"
MAP_ONNX_DIR = Path(MODEL_DIR) / "onnx"
"""Where in a map folder ``--backend onnx`` looks for the export by default."""


@dataclass(frozen=True)
class MapFolder:
    """Paths of one map folder (nothing is read until asked)."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    def file(self, name: str) -> Path:
        """One of the map's data files (:data:`DATA_FILES`)."""
        return self.path / name

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def checkpoint(self) -> Path:
        """The map's copy of the checkpoint that embedded its scans."""
        return self.model_dir / "model.safetensors"

    @property
    def checkpoint_metadata(self) -> Path:
        return self.model_dir / "model.json"

    @property
    def onnx_dir(self) -> Path:
        return self.path / MAP_ONNX_DIR

    def is_map(self) -> bool:
        """True when the folder holds a map's manifest."""
        return self.manifest.is_file()

    def read_manifest(self) -> dict[str, Any]:
        """The manifest as JSON, unchecked (OSError or ValueError when unreadable);
        :meth:`LidarMap.load <liploc.localization.lidar_map.LidarMap.load>` checks it."""
        return json.loads(self.manifest.read_text())

    def read_checkpoint_metadata(self) -> dict[str, Any]:
        """The JSON beside the map's checkpoint copy (its config and step), unchecked."""
        return json.loads(self.checkpoint_metadata.read_text())


def match_json(m: Match) -> dict[str, Any]:
    """One retrieved map entry as JSON: frame id, score, x, y, yaw and the full 4 x 4 pose."""
    return {
        "rank": m.rank,
        "score": round(float(m.score), 6),
        **place_json(m),
    }


def place_json(m: Match) -> dict[str, Any]:
    """Where a map entry is: frame id, sequence, frame, time, x, y, z, yaw and the 4 x 4 pose."""
    return {
        "frame_id": m.frame_id,
        "sequence": m.sequence,
        "frame": m.frame_index,
        "timestamp_s": m.timestamp,
        "x": float(m.pose[0, 3]),
        "y": float(m.pose[1, 3]),
        "z": float(m.pose[2, 3]),
        "yaw_rad": m.yaw,
        "yaw_deg": m.yaw_deg,
        "pose": m.pose.tolist(),
    }


PLACE_KEYS = (
    "frame_id", "sequence", "frame", "timestamp_s", "x", "y", "z", "yaw_rad", "yaw_deg", "pose",
)  # fmt: skip
"""The keys of :func:`place_json`."""


def path_json(image: str, m: Match | None) -> dict[str, Any]:
    """One image's step on a sequence's best path: the image, its map place and its cosine
    similarity to it; every place key None where the path ran off the map."""
    place = place_json(m) if m is not None else dict.fromkeys(PLACE_KEYS)
    similarity = round(float(m.score), 6) if m is not None else None
    return {"image": image, **place, "similarity": similarity}
