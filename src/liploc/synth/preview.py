"""A preview picture of a written drive: the image with its scan projected onto it, and the range
image under it (the paper's crop outlined). It shows at a glance that calibration and poses agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from liploc.atomic import atomic_write
from liploc.config import ProjectionConfig
from liploc.datasets import Frame, open_dataset
from liploc.datasets.scan import load_image, load_scan
from liploc.errors import DataError
from liploc.lidar.range_image import paper_crop_window, project_to_range_image

_MAX_RANGE_M = 50.0


def project_scan(points: np.ndarray, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """(uv (M, 2) pixel coordinates, depth (M,)) of the points in front of the camera and inside
    the image, by the frame's calibration."""
    xyz1 = np.column_stack([points[:, :3], np.ones(len(points))])
    pix = xyz1 @ frame.calib.lidar_to_image.T
    depth = pix[:, 2]
    front = depth > 0.5
    uv = pix[front, :2] / depth[front, None]
    width, height = frame.calib.image_size or (np.inf, np.inf)
    inside = (uv[:, 0] >= -0.5) & (uv[:, 0] < width - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < height - 0.5)
    return uv[inside], depth[front][inside]


def preview_image(frame: Frame, cfg: ProjectionConfig | None = None) -> Image.Image:
    """The preview of one frame as a PIL image."""
    image = load_image(frame.image_path)
    points = load_scan(frame.scan_path)
    height, width = image.shape[:2]
    uv, depth = project_scan(points, frame)
    cmap = colormaps["turbo"]
    overlay = image.copy()
    colours = (cmap(np.clip(depth / _MAX_RANGE_M, 0, 1))[:, :3] * 255).astype(np.uint8)
    order = np.argsort(-depth)  # near points drawn last
    px = np.round(uv[order]).astype(int)
    dot = 1 if width < 600 else 2
    for dy in range(dot):
        for dx in range(dot):
            x = np.clip(px[:, 0] + dx, 0, width - 1)
            y = np.clip(px[:, 1] + dy, 0, height - 1)
            overlay[y, x] = colours[order]

    cfg = cfg or ProjectionConfig()
    ri = project_to_range_image(points, cfg)
    ranged = (cmap(np.clip(ri.range / _MAX_RANGE_M, 0, 1))[..., :3] * 255).astype(np.uint8)
    ranged[~ri.valid] = 0
    rows, columns = ri.range.shape
    # Rows drawn 3 pixels high per column pixel: the 64 x 900 panorama is very wide.
    panel = Image.fromarray(ranged).resize((width, max(1, round(width * rows / columns * 3))), Image.NEAREST)
    sx = panel.width / ri.range.shape[1]
    sy = panel.height / ri.range.shape[0]
    crop = paper_crop_window(cfg)
    ImageDraw.Draw(panel).rectangle(
        [crop.col0 * sx, crop.row0 * sy, crop.col1 * sx - 1, crop.row1 * sy - 1], outline=(255, 255, 255)
    )
    sheet = Image.new("RGB", (width, height + panel.height), (0, 0, 0))
    sheet.paste(Image.fromarray(overlay), (0, 0))
    sheet.paste(panel, (0, height))
    return sheet


def write_preview(root: str | Path, out_path: str | Path | None = None, sequence: str | None = None,
                  index: int | None = None) -> Path:  # fmt: skip
    """Save the preview of a frame of ``root`` (default: the middle frame of the first sequence)."""
    root = Path(root)
    reader = open_dataset(root)
    sequences = reader.sequences()
    if not sequences:
        raise DataError(root, "no sequence to preview")
    sequence = sequence or sequences[0]
    frames = reader.frames(sequence)
    if not frames:
        raise DataError(root, f"sequence {sequence} has no frames")
    frame = frames[len(frames) // 2 if index is None else index]
    out = Path(out_path) if out_path is not None else root / "preview.png"
    sheet = preview_image(frame)
    atomic_write(out, lambda p: sheet.save(p, format="PNG"))
    return out
