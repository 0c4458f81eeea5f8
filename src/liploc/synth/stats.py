"""Realism statistics of scans in the paper's range image: valid-pixel ratio and mean range.

Computed the same way for any dataset folder a reader opens (synthetic or real), so the synthetic
drives can be compared with real KITTI: ``liploc synth --stats REAL_ROOT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liploc.config import ProjectionConfig
from liploc.datasets import open_dataset
from liploc.datasets.scan import load_scan
from liploc.errors import DataError
from liploc.lidar.range_image import crop_range_image, paper_crop_window, project_to_range_image


@dataclass(frozen=True)
class ScanStatistics:
    """Statistics over sampled scans of a folder.

    Attributes:
        root: the folder.
        layout: its dataset layout.
        scans: scans measured.
        valid_ratio: mean share of pixels with a return in the paper's crop (upper rows, front third).
        mean_range_m: mean range of those pixels (metres).
        points_per_scan: mean number of points in a scan.
        mean_intensity: mean intensity of the points.
    """

    root: Path
    layout: str
    scans: int
    valid_ratio: float
    mean_range_m: float
    points_per_scan: float
    mean_intensity: float


def crop_statistics(points: np.ndarray, cfg: ProjectionConfig | None = None) -> tuple[float, float]:
    """(valid ratio, mean range of valid pixels) of one scan in the paper's range-image crop."""
    cfg = cfg or ProjectionConfig()
    image = project_to_range_image(points, cfg)
    window = paper_crop_window(cfg)
    valid = crop_range_image(image.valid, window)
    ranges = crop_range_image(image.range, window)
    mean = float(ranges[valid].mean()) if valid.any() else 0.0
    return float(valid.mean()), mean


def scan_statistics(
    root: str | Path, max_scans: int = 40, cfg: ProjectionConfig | None = None
) -> ScanStatistics:
    """Statistics of up to ``max_scans`` scans spread evenly over all sequences of ``root``."""
    reader = open_dataset(root)
    frames = [f for seq in reader.sequences() for f in reader.frames(seq)]
    if not frames:
        raise DataError(Path(root), "no frames with a scan found")
    pick = np.unique(np.linspace(0, len(frames) - 1, min(max_scans, len(frames))).round().astype(int))
    valid, ranges, counts, intensity = [], [], [], []
    for i in pick:
        points = load_scan(frames[i].scan_path)
        v, r = crop_statistics(points, cfg)
        valid.append(v)
        ranges.append(r)
        counts.append(len(points))
        intensity.append(float(points[:, 3].mean()))
    return ScanStatistics(
        root=Path(root),
        layout=reader.name,
        scans=len(pick),
        valid_ratio=float(np.mean(valid)),
        mean_range_m=float(np.mean(ranges)),
        points_per_scan=float(np.mean(counts)),
        mean_intensity=float(np.mean(intensity)),
    )
