"""Oracle check of the geometry bridge on a real posed KITTI drive: how close is the BEV of a depth
image to the BEV of the scan, when the depth image is the scan's own (a perfect depth head)?

For each frame of ``kitti-raw-posed`` (24 frames, 7 m apart): the BEV raster of the scan in the
camera's view (:func:`liploc.lidar.bev_raster.scan_bev`) against the BEV raster of the scan's
projected depth image, back-projected (:func:`liploc.lidar.bev_raster.depth_bev`), at the camera's
size (1242 x 375) and at smaller, network-like sizes (the image resized, no crop). What is lost:
points that share a pixel with a nearer one (the smaller the image, the more), and points moved
onto their pixel's centre ray (half a pixel at most), which may change cell.

Reported per size (means over frames): the points of the camera's view that reach the depth image,
the IoU and the agreement of the occupied cells, the share of the cells occupied in both whose top
height agrees within 0.02 (5 cm) and whose density is equal; and, as a retrieval sanity check,
how often the image BEV of a frame is closest (by occupancy IoU) to its own scan's BEV among all
24 (Recall@1; the frames are 7 m apart).

    python benchmarks/bev_oracle.py [--data /work/shared/data/kitti-raw-posed] [--sizes 1242x375 224x224]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from liploc.datasets import open_dataset
from liploc.datasets.scan import load_scan
from liploc.lidar.bev_raster import BevSettings, camera_view_mask, depth_bev, scan_bev
from liploc.lidar.camera_depth import camera_depth_image, scale_calibration

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kitti-raw-posed"


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def compare(scan_raster: np.ndarray, image_raster: np.ndarray) -> dict[str, float]:
    """Occupancy IoU and agreement, height and density agreement on the cells occupied in both."""
    a, b = scan_raster[1] > 0, image_raster[1] > 0
    both = a & b
    dh = np.abs(scan_raster[0] - image_raster[0])[both]
    same_density = (scan_raster[1] == image_raster[1])[both]
    nan = float("nan")
    return {
        "iou": float(both.sum() / max((a | b).sum(), 1)),
        "same_occupancy": float((a == b).mean()),
        "scan_cells": int(a.sum()),
        "image_cells": int(b.sum()),
        "height_within_0.02": float((dh <= 0.02).mean()) if both.any() else nan,
        "same_density": float(same_density.mean()) if both.any() else nan,
    }


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Occupancy IoU of two rasters."""
    oa, ob = a[1] > 0, b[1] > 0
    return float((oa & ob).sum() / max((oa | ob).sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(1242, 375), (640, 192), (224, 224)])
    args = parser.parse_args()

    settings = BevSettings()
    reader = open_dataset(args.data)
    frames = [f for seq in reader.sequences() for f in reader.frames(seq)]
    start = time.perf_counter()
    scans = [load_scan(f.scan_path) for f in frames]
    scan_rasters = [scan_bev(p, f.calib, settings) for p, f in zip(scans, frames, strict=True)]
    in_view = [int(camera_view_mask(p, f.calib).sum()) for p, f in zip(scans, frames, strict=True)]

    rows: dict[str, dict[str, float]] = {}
    for size in args.sizes:
        per_frame, image_rasters, kept = [], [], []
        for points, frame, scan_raster, n_view in zip(scans, frames, scan_rasters, in_view, strict=True):
            calib = scale_calibration(frame.calib, size)
            depth = camera_depth_image(points, calib)
            image_raster = depth_bev(depth, calib, settings)
            per_frame.append(compare(scan_raster, image_raster))
            image_rasters.append(image_raster)
            kept.append(np.count_nonzero(depth) / max(n_view, 1))
        similarity = np.array([[iou(img, scan) for scan in scan_rasters] for img in image_rasters])
        recall1 = float((similarity.argmax(axis=1) == np.arange(len(frames))).mean())
        row = {k: float(np.mean([m[k] for m in per_frame])) for k in per_frame[0]}
        row["min_iou"] = float(min(m["iou"] for m in per_frame))
        row["points_kept"] = float(np.mean(kept))
        row["recall1_by_iou"] = recall1
        rows[f"{size[0]}x{size[1]}"] = row
    seconds = time.perf_counter() - start

    print(f"BEV oracle on {len(frames)} frames of {args.data.name} ({frames[0].sequence})")
    print(
        f"grid {settings.shape[0]} x {settings.shape[1]} cells of {settings.cell} m "
        f"(x {settings.x_range[0]}..{settings.x_range[1]} m, y +-{settings.half_width} m), "
        f"heights {settings.min_height}..{settings.max_height} m above z = {settings.ground_z}; "
        f"{np.mean(in_view):.0f} scan points in the camera's view on average"
    )
    header = (
        f"{'depth image':>12} {'pts kept':>9} {'IoU':>6} {'min IoU':>8} {'same occ':>9} "
        f"{'h<=0.02':>8} {'same dens':>10} {'R@1 IoU':>8}"
    )
    print(header)
    for name, r in rows.items():
        print(
            f"{name:>12} {r['points_kept']:>9.3f} {r['iou']:>6.3f} {r['min_iou']:>8.3f} "
            f"{r['same_occupancy']:>9.4f} {r['height_within_0.02']:>8.3f} {r['same_density']:>10.3f} "
            f"{r['recall1_by_iou']:>8.3f}"
        )
    print(f"{seconds:.1f} s")
    result = {
        "benchmark": "bev_oracle",
        "data": str(args.data),
        "frames": len(frames),
        "grid": list(settings.shape),
        "cell_m": settings.cell,
        "sizes": rows,
        "seconds": round(seconds, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
