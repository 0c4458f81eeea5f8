"""Options of ``liploc synth`` / ``generate_dataset``: one validated, frozen pydantic model."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SIZE_PRESETS: dict[str, dict[str, float | int]] = {
    "kitti": {"image_scale": 1.0, "lidar_columns": 2048, "supersample": 1},
    "small": {"image_scale": 0.25, "lidar_columns": 1024, "supersample": 1},
}
"""``kitti``: 1241 x 376 images, 64 x 2048 scans. ``small``: 310 x 94 images, 64 x 1024 scans."""


class SynthOptions(BaseModel):
    """What to generate. Equal options and seed give byte-identical files (on one machine)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    town_seed: int = Field(0, ge=0)
    """Seed of the town and of everything drawn for its drives."""
    drives: int = Field(4, ge=1, le=99)
    """Number of drives (sequences 00, 01, ...)."""
    frames: int = Field(200, ge=0)
    """Frames per drive; 0 (only with ``trajectory``) takes every pose of the trajectory file."""
    size: Literal["small", "kitti"] = "kitti"
    """Sensor resolution preset (see ``SIZE_PRESETS``)."""
    image_scale: float | None = Field(None, gt=0.0, le=1.0)
    """Image size as a fraction of KITTI's 1241 x 376 (overrides the preset)."""
    lidar_columns: int | None = Field(None, ge=64, le=8192)
    """LiDAR firings per revolution (overrides the preset)."""
    supersample: int | None = Field(None, ge=1, le=4)
    """Camera rays per pixel along each axis, averaged (overrides the preset)."""
    shadows: bool = True
    """Cast sun shadows in the camera images."""
    frame_spacing_m: float = Field(1.0, gt=0.0, le=20.0)
    """Distance driven between frames (grid towns)."""
    held_out_drives: int = Field(0, ge=0)
    """Drives in a held-out part of the town whose streets no training drive uses (role ``test``)."""
    pairs: Literal["none", "same-direction", "reverse", "mixed"] = "mixed"
    """Drives come in pairs over the same streets (other parked cars and light): the second drives
    the same way (another lane where there is one) or the opposite way; ``mixed`` alternates."""
    blocks: tuple[int, int] = (6, 4)
    """Town size in blocks (x, y) of about 100 m."""
    trajectory: Path | None = None
    """KITTI poses file to drive along instead of a grid town (the town is built around it)."""
    trajectory_calib: Path | None = None
    """calib.txt of the trajectory (default: ``<stem>_calib.txt`` or ``calib.txt`` beside it)."""
    pose_frame: Literal["town", "first"] = "town"
    """``town``: poses of all sequences share the town's frame (cross-drive evaluation works as is);
    ``first``: each sequence's first camera pose is the identity, as in KITTI downloads."""
    png_compression: int = Field(1, ge=0, le=9)
    """zlib level of the PNG images (1: fast, larger files)."""

    @model_validator(mode="after")
    def _check(self) -> SynthOptions:
        if self.held_out_drives >= self.drives:
            raise ValueError("held_out_drives must leave at least one training drive")
        if self.frames == 0 and self.trajectory is None:
            raise ValueError("frames must be >= 1 (0 means 'the whole trajectory' and needs --trajectory)")
        if min(self.blocks) < 1:
            raise ValueError("blocks must be at least (1, 1)")
        if self.trajectory is None and self.held_out_drives > 0 and self.blocks[0] < 4:
            raise ValueError("a held-out region needs at least 4 blocks along x (blocks[0] >= 4)")
        return self

    def _or_preset(self, name: str) -> float:
        """The field ``name`` where it is given, else the size preset's value of it."""
        value = getattr(self, name)
        return value if value is not None else SIZE_PRESETS[self.size][name]

    @property
    def resolved_image_scale(self) -> float:
        return float(self._or_preset("image_scale"))

    @property
    def resolved_lidar_columns(self) -> int:
        return int(self._or_preset("lidar_columns"))

    @property
    def resolved_supersample(self) -> int:
        return int(self._or_preset("supersample"))

    @property
    def held_out_columns(self) -> int:
        """Columns of grid nodes given to the held-out region (0 without held-out drives)."""
        return max(2, self.blocks[0] // 2) if self.held_out_drives > 0 else 0
