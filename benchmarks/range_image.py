"""Speed of the spherical range image: ours against the common argsort approach, same run.

Workload: a realistic 120,000-point scan (points drawn from the real KITTI raw sample scans,
kept in their scan order), the paper's projection (64 x 900, 50 m). Three contenders:

- ``project_to_range_image``: the one-shot function (allocates its work memory each call);
- ``RangeProjector.project``: the same with its work memory kept between calls (data loaders);
  ``RangeProjector.model_input`` adds the paper's crop and 8-bit scaling (what the loader calls);
- naive: the reference code's way (norm, arctan2/arcsin, argsort of all ranges, fancy-index
  writes far to near so the nearest is written last), written here.

Reported: median milliseconds per call, over rounds that interleave the contenders (other
processes may load the CPU), for consecutive calls and with a cold cache; whether ours and the
naive images are identical; and as the last line one JSON object (``ours_ms``: the one-shot
function, consecutive calls).

    python benchmarks/range_image.py [--points 120000] [--rounds 40] [--block 10]
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


def measure(
    contenders: dict[str, Callable[[], object]], rounds: int, block: int, flush: np.ndarray | None
) -> dict[str, list[float]]:
    """Seconds per call of each contender: ``rounds`` rounds, each running every contender
    ``block`` times in a row (rounds interleave the contenders, so that load from other processes
    hits all alike). With ``flush``, a large array is read before each call: a cold cache, as
    when a data loader has decoded an image between two scans."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            for _ in range(block):
                if flush is not None:
                    flush.sum()
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> str:
    q1, med, q3 = np.percentile(np.array(times) * 1e3, [25, 50, 75])
    return f"median {med:7.3f} ms  (IQR {q1:.3f}-{q3:.3f}, {len(times)} calls)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds")
    parser.add_argument("--block", type=int, default=10, help="consecutive calls per contender and round")
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
        "RangeProjector.model_input (+crop, 8 bit)": lambda: projector.model_input(points),
        "naive (argsort + ordered writes)": lambda: naive_range_image(points, cfg),
    }
    measure(contenders, rounds=2, block=3, flush=None)  # warm-up
    warm = measure(contenders, args.rounds, args.block, flush=None)
    cold = measure(contenders, max(1, args.rounds // 4), args.block, flush=np.ones(8_000_000))
    med = {name: statistics.median(t) * 1e3 for name, t in warm.items()}
    cold_med = {name: statistics.median(t) * 1e3 for name, t in cold.items()}
    ours_ms, reused_ms, input_ms, naive_ms = med.values()
    ours_cold_ms, _, _, naive_cold_ms = cold_med.values()

    print(f"range image {cfg.height} x {cfg.width}, {args.points} points ({source})")
    print(f"valid pixels {ours.valid.mean():.3f}; ours and naive identical: {identical}")
    print("consecutive calls:")
    for name, t in warm.items():
        print(f"  {name:42s} {summary(t)}")
    print("cold cache (64 MB read before each call):")
    for name, t in cold.items():
        print(f"  {name:42s} {summary(t)}")
    print(f"speed-up over naive: {naive_ms / ours_ms:.1f}x one-shot, {naive_ms / reused_ms:.1f}x reused")
    print(
        json.dumps(
            {
                "points": args.points,
                "ours_ms": round(ours_ms, 4),
                "naive_ms": round(naive_ms, 4),
                "ours_reused_ms": round(reused_ms, 4),
                "model_input_ms": round(input_ms, 4),
                "ours_cold_ms": round(ours_cold_ms, 4),
                "naive_cold_ms": round(naive_cold_ms, 4),
                "identical": identical,
            }
        )
    )


if __name__ == "__main__":
    main()
