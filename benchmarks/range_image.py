"""Speed of the spherical range image: ours against the common argsort approach, same run.

Workload: a realistic 120,000-point scan (points drawn from the real KITTI raw sample scans,
kept in their scan order), the paper's projection (64 x 900, 50 m). Three contenders:

- ``project_to_range_image``: the one-shot function (allocates its work memory each call);
- ``RangeProjector.project``: the same with its work memory kept between calls (data loaders);
- naive: the reference code's way (norm, arctan2/arcsin, argsort of all ranges, fancy-index
  writes far to near so the nearest is written last), written here.

Reported: median milliseconds over interleaved repetitions (other processes may load the CPU),
whether ours and the naive images are identical, and as the last line one JSON object.

    python benchmarks/range_image.py [--repeats 300] [--points 120000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from liploc.config import ProjectionConfig
from liploc.lidar.range_image import RangeProjector, project_to_range_image

SAMPLE_SCANS = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "kitti-raw-sample"
    / "2011_09_26"
    / "2011_09_26_drive_0000_sync"
    / "velodyne_points"
    / "data"
)


def load_workload(n_points: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """(n_points, 4) float32 points drawn from the sample scans (in scan order), and a description."""
    rng = np.random.default_rng(seed)
    files = sorted(SAMPLE_SCANS.glob("*.bin"))
    if files:
        scans = np.concatenate([np.fromfile(f, dtype="<f4").reshape(-1, 4) for f in files])
        pick = np.sort(rng.choice(len(scans), size=n_points, replace=len(scans) < n_points))
        return np.ascontiguousarray(scans[pick]), f"{len(files)} KITTI raw sample scans, subsampled"
    # Fallback without the shared data: 64 rings x azimuth steps over a ground plane and walls.
    rings = np.radians(np.linspace(2.0, -24.8, 64))
    az = rng.uniform(-np.pi, np.pi, n_points)
    elev = rings[rng.integers(0, 64, n_points)]
    dist = np.where(elev < -0.03, 1.73 / np.sin(-np.minimum(elev, -0.03)), rng.uniform(5, 60, n_points))
    dist = np.minimum(dist, rng.uniform(3, 70, n_points))
    pts = np.stack(
        [
            dist * np.cos(elev) * np.cos(az),
            dist * np.cos(elev) * np.sin(az),
            dist * np.sin(elev),
            rng.random(n_points),
        ],
        axis=1,
    )
    return pts.astype(np.float32), "synthetic 64-ring scan (shared data not found)"


def naive_range_image(points: np.ndarray, cfg: ProjectionConfig) -> tuple[np.ndarray, np.ndarray]:
    """The common approach: sort all points far to near, write them in that order (nearest last).

    A stable sort makes ties deterministic (the lowest index is written last), as ours is.
    Returns the (H, W) range (-1 where empty, as the reference) and the winning point's index.
    """
    h, w = cfg.height, cfg.width
    fov_up = cfg.fov_up / 180.0 * np.pi
    fov_down = cfg.fov_down / 180.0 * np.pi
    fov = abs(fov_down) + abs(fov_up)
    depth = np.linalg.norm(points[:, :3], 2, axis=1)
    keep = (depth > cfg.min_range) & (depth < cfg.max_range)
    index = np.nonzero(keep)[0]
    pts = points[keep]
    depth = depth[keep]
    yaw = -np.arctan2(pts[:, 1], pts[:, 0])
    pitch = np.arcsin(pts[:, 2] / depth)
    proj_x = 0.5 * (yaw / np.pi + 1.0)
    proj_y = 1.0 - (pitch + abs(fov_down)) / fov
    proj_x *= w
    proj_y *= h
    proj_x = np.maximum(0, np.minimum(w - 1, np.floor(proj_x))).astype(np.int32)
    proj_y = np.maximum(0, np.minimum(h - 1, np.floor(proj_y))).astype(np.int32)
    order = np.argsort(depth, kind="stable")[::-1]
    range_image = np.full((h, w), -1, dtype=np.float32)
    index_image = np.full((h, w), -1, dtype=np.int64)
    range_image[proj_y[order], proj_x[order]] = depth[order]
    index_image[proj_y[order], proj_x[order]] = index[order]
    return range_image, index_image


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()

    cfg = ProjectionConfig()
    points, source = load_workload(args.points)
    projector = RangeProjector(cfg)

    ours = project_to_range_image(points, cfg)
    naive_range, naive_index = naive_range_image(points, cfg)
    identical = bool(
        np.array_equal(ours.point_index, naive_index)
        and np.array_equal(np.where(ours.valid, ours.range, -1.0), naive_range)
    )

    contenders: dict[str, Callable[[], object]] = {
        "project_to_range_image (one-shot)": lambda: project_to_range_image(points, cfg),
        "RangeProjector.project (reused)": lambda: projector.project(points),
        "naive (argsort + ordered writes)": lambda: naive_range_image(points, cfg),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(5):  # warm-up
        for fn in contenders.values():
            fn()
    for _ in range(args.repeats):  # interleaved, so that load from other processes hits all alike
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    medians = {name: median_ms(t) for name, t in times.items()}
    ours_ms, reused_ms, naive_ms = medians.values()
    print(f"range image {cfg.height} x {cfg.width}, {args.points} points ({source}), {args.repeats} repeats")
    print(f"valid pixels {ours.valid.mean():.3f}; ours and naive identical: {identical}")
    for name, t in times.items():
        q1, q3 = np.percentile(np.array(t) * 1e3, [25, 75])
        print(f"  {name:36s} median {medians[name]:7.3f} ms  (IQR {q1:.3f}-{q3:.3f})")
    print(f"speed-up over naive: {naive_ms / ours_ms:.1f}x one-shot, {naive_ms / reused_ms:.1f}x reused")
    print(
        json.dumps(
            {
                "points": args.points,
                "ours_ms": round(ours_ms, 4),
                "ours_reused_ms": round(reused_ms, 4),
                "naive_ms": round(naive_ms, 4),
                "identical": identical,
            }
        )
    )


if __name__ == "__main__":
    main()
