"""How much synthetic frames look like real ones: image and scan statistics computed alike for both.

Image statistics (per frame, then averaged over frames; values in [0, 1] units of 8-bit sRGB):

- ``brightness``: mean luma (Rec. 601 weights of the sRGB values);
- ``rms_contrast``: standard deviation of luma;
- ``colourfulness``: Hasler and Suesstrunk's metric (2003) on R - G and (R + G) / 2 - B;
- ``gradient_energy``: mean squared luma gradient (central differences), ``edge_density``: share
  of pixels whose Sobel gradient magnitude exceeds ``EDGE_THRESHOLD``, ``spectrum_slope``: slope of log power
  against log frequency of the radially averaged power spectrum (natural images: about -2). These
  depend on the image size, so they are computed at ``EQUAL_SIZE`` (area resampling) whatever the
  size of the image.

Scan statistics, in the paper's range image (64 x 900, crop: upper 32 rows, 120 degrees ahead):
the share of crop pixels with a return, the mean and 90th percentile of their ranges, and the mean
intensity of all points of the scan.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from liploc.config import ProjectionConfig
from liploc.datasets import open_dataset
from liploc.datasets.scan import load_image, load_scan
from liploc.errors import DataError
from liploc.lidar.range_image import crop_range_image, paper_crop_window, project_to_range_image

EQUAL_SIZE = (620, 188)
"""(width, height) at which the size-dependent image statistics are computed (half KITTI's size)."""

EDGE_THRESHOLD = 0.05
"""Luma gradient per pixel (Sobel, normalised to a derivative; luma in [0, 1]) above which a pixel
counts as an edge."""

IMAGE_STATISTICS = (
    "brightness",
    "rms_contrast",
    "colourfulness",
    "gradient_energy",
    "edge_density",
    "spectrum_slope",
)
SCAN_STATISTICS = ("crop_valid", "crop_range_mean_m", "crop_range_p90_m", "intensity_mean")

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ _LUMA


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler-Suesstrunk colourfulness of an (H, W, 3) float image in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    spread = np.sqrt(rg.var() + yb.var())
    centre = np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return float(spread + 0.3 * centre)


def spectrum_slope(luma: np.ndarray, band: tuple[float, float] = (0.02, 0.35)) -> float:
    """Slope of log power against log spatial frequency (cycles per pixel) of the radially averaged
    power spectrum of ``luma`` (Hann-windowed, mean removed), fitted over the frequencies in ``band``."""
    h, w = luma.shape
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    power = np.abs(np.fft.rfft2((luma - luma.mean()) * window)) ** 2
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    edges = np.geomspace(band[0], band[1], 25)
    which = np.digitize(radius.ravel(), edges) - 1
    inside = (which >= 0) & (which < len(edges) - 1)
    sums = np.bincount(which[inside], weights=power.ravel()[inside], minlength=len(edges) - 1)
    counts = np.bincount(which[inside], minlength=len(edges) - 1)
    keep = counts > 0
    centres = np.sqrt(edges[:-1] * edges[1:])[keep]
    mean_power = sums[keep] / counts[keep]
    slope = np.polyfit(np.log(centres), np.log(mean_power + 1e-20), 1)[0]
    return float(slope)


def image_statistics(image: np.ndarray) -> dict[str, float]:
    """Statistics of one (H, W, 3) uint8 RGB image (see the module docstring)."""
    rgb = np.asarray(image, dtype=np.float32) * np.float32(1.0 / 255.0)
    luma = _luma(rgb)
    small = cv2.resize(rgb, EQUAL_SIZE, interpolation=cv2.INTER_AREA)
    small_luma = _luma(small)
    gy, gx = np.gradient(small_luma)
    sx = cv2.Sobel(small_luma, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    sy = cv2.Sobel(small_luma, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    magnitude = np.sqrt(sx * sx + sy * sy)[1:-1, 1:-1]
    return {
        "brightness": float(luma.mean()),
        "rms_contrast": float(luma.std()),
        "colourfulness": colourfulness(rgb),
        "gradient_energy": float((gx * gx + gy * gy).mean()),
        "edge_density": float((magnitude > EDGE_THRESHOLD).mean()),
        "spectrum_slope": spectrum_slope(small_luma),
    }


def scan_statistics(points: np.ndarray, cfg: ProjectionConfig | None = None) -> dict[str, float]:
    """Statistics of one (N, 4) scan in the paper's range-image crop (see the module docstring)."""
    cfg = cfg or ProjectionConfig()
    image = project_to_range_image(points, cfg)
    window = paper_crop_window(cfg)
    valid = crop_range_image(image.valid, window)
    ranges = crop_range_image(image.range, window)[valid]
    return {
        "crop_valid": float(valid.mean()),
        "crop_range_mean_m": float(ranges.mean()) if ranges.size else 0.0,
        "crop_range_p90_m": float(np.percentile(ranges, 90)) if ranges.size else 0.0,
        "intensity_mean": float(points[:, 3].mean()) if len(points) else 0.0,
    }


def mean_statistics(rows: Iterable[dict[str, float]]) -> dict[str, float]:
    """Mean of each statistic over frames."""
    rows = list(rows)
    if not rows:
        return {}
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def dataset_statistics(root: str | Path, max_frames: int | None = None) -> dict[str, float]:
    """Mean image and scan statistics over the frames of every sequence of the dataset folder
    ``root`` (any layout a reader opens; up to ``max_frames``, spread evenly). ``frames``: how many
    frames were measured."""
    reader = open_dataset(root)
    frames = [f for seq in reader.sequences() for f in reader.frames(seq)]
    if not frames:
        raise DataError(Path(root), "no frames found")
    if max_frames is not None and len(frames) > max_frames:
        pick = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in pick]
    images = mean_statistics(image_statistics(load_image(f.image_path)) for f in frames if f.image_path)
    scans = mean_statistics(scan_statistics(load_scan(f.scan_path)) for f in frames)
    return {**images, **scans, "frames": float(len(frames))}
