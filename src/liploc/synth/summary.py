"""What a ``liploc synth`` run made: the ``synth.json`` manifest at the root of its output.

The manifest says which sequences are for training and which are held out, which share streets
(for the cross-drive protocol), and the seed and options that reproduce the files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from liploc.errors import DataError

MANIFEST_NAME = "synth.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SequenceSummary:
    """One written sequence (drive).

    Attributes:
        name: sequence folder name (``"00"``).
        role: ``train`` or ``test``.
        region: ``train`` or ``held-out`` (grid towns), ``trajectory`` (town around a trajectory).
        variant: ``base``, ``same-direction`` or ``reverse`` (relative to ``partner``).
        partner: the sequence driven over the same streets as this one's pair, or None.
        shares_streets_with: other sequence -> share of this drive's street segments it also drives.
        frames: number of frames.
        length_m: distance driven (metres).
        streets: street segments driven, in order (grid towns).
        lighting: sun elevation and azimuth, clouds and haze of the drive.
        parked_cars: cars parked along the town's streets during the drive.
        traffic_cars: cars standing in the lanes (queues at junctions), off the drive's own path.
    """

    name: str
    role: str
    region: str
    variant: str
    partner: str | None
    shares_streets_with: dict[str, float]
    frames: int
    length_m: float
    streets: list[int]
    lighting: dict[str, float]
    parked_cars: int
    traffic_cars: int


@dataclass(frozen=True)
class SynthSummary:
    """Result of ``generate_dataset``, also stored as ``synth.json`` in the output folder.

    Attributes:
        root: output folder (KITTI odometry layout).
        town_seed: seed of the town.
        options: the SynthOptions as a JSON-ready dict.
        town: kind, bounds, street length and counts of things placed.
        sequences: the written sequences.
        image_size: (width, height) of the images.
        lidar_columns: firings per LiDAR revolution.
        pose_frame: ``town`` (all sequences in one frame) or ``first`` (KITTI style).
        frames_total: frames written.
        seconds: wall time of the generation.
        frames_per_s: frames written per second (rendering and writing).
        reused: True when an identical earlier output was kept instead of generating again.
    """

    root: Path
    town_seed: int
    options: dict[str, Any]
    town: dict[str, Any]
    sequences: list[SequenceSummary]
    image_size: tuple[int, int]
    lidar_columns: int
    pose_frame: str
    frames_total: int
    seconds: float
    frames_per_s: float
    reused: bool = False
    format_version: int = FORMAT_VERSION
    notes: list[str] = field(default_factory=list)

    def sequence(self, name: str) -> SequenceSummary:
        """The sequence called ``name``."""
        for seq in self.sequences:
            if seq.name == name:
                return seq
        raise KeyError(name)

    def train_sequences(self) -> list[str]:
        """Names of the training sequences."""
        return [s.name for s in self.sequences if s.role == "train"]

    def test_sequences(self) -> list[str]:
        """Names of the held-out (test) sequences."""
        return [s.name for s in self.sequences if s.role == "test"]

    def pairs(self, role: str | None = None) -> list[tuple[str, str]]:
        """(base, partner) sequence names of drives over the same streets, optionally of one role."""
        out = []
        for s in self.sequences:
            if s.partner is not None and s.variant == "base" and (role is None or s.role == role):
                out.append((s.name, s.partner))
        return out

    def to_json(self) -> str:
        """The manifest text (the root is not stored: the file sits in it)."""
        data = asdict(self)
        data.pop("root")
        data.pop("reused")
        data.pop("seconds")
        data.pop("frames_per_s")
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @staticmethod
    def from_json(text: str, root: Path) -> SynthSummary:
        """Parse a manifest written by ``to_json``."""
        data = json.loads(text)
        data["sequences"] = [SequenceSummary(**s) for s in data["sequences"]]
        data["image_size"] = tuple(data["image_size"])
        return SynthSummary(root=root, seconds=0.0, frames_per_s=0.0, reused=True, **data)


def load_summary(root: str | Path) -> SynthSummary:
    """The manifest of a ``liploc synth`` output folder."""
    root = Path(root)
    path = root / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "no synth.json: not a folder written by liploc synth") from None
    try:
        summary = SynthSummary.from_json(text, root)
    except (ValueError, TypeError, KeyError) as err:
        raise DataError(path, f"malformed synth manifest ({err})") from None
    if summary.format_version != FORMAT_VERSION:
        raise DataError(path, f"manifest format {summary.format_version}, this liploc reads {FORMAT_VERSION}")
    return summary
