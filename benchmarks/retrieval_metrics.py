"""Speed of the evaluation path on a KITTI-sized sequence: 5000 queries against 5000 LiDAR scans.

Times exact retrieval + every metric (same-sequence and revisit protocols), the positives alone,
a LiDAR map save/load round trip and the report. Embeddings are random (D = 256); speed does not
depend on their content. Last line: one JSON object with the figures in seconds.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from liploc.evaluation.metrics import TimeWindowExclusion, evaluate_retrieval
from liploc.evaluation.report import write_report
from liploc.localization.index import l2_normalize
from liploc.localization.lidar_map import LidarMap
from liploc.localization.neighbours import count_positives_within

N, DIM = 5000, 256


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    rng = np.random.default_rng(0)
    heading = np.cumsum(rng.normal(0, 0.05, N))
    xy = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], axis=1), axis=0)  # ~1 m per frame
    t = np.arange(N) / 10.0
    db = l2_normalize(rng.normal(size=(N, DIM)))
    queries = l2_normalize(db + 0.8 * rng.normal(size=(N, DIM)) / np.sqrt(DIM))

    _, positives_s = timed(lambda: count_positives_within(xy, xy, [20.0, 10.0]))
    result, same_s = timed(lambda: evaluate_retrieval(queries, db, xy, xy))
    exclusion = TimeWindowExclusion(t, t, 30.0)
    _, revisit_s = timed(lambda: evaluate_retrieval(queries, db, xy, xy, exclude=exclusion))
    poses = np.tile(np.eye(4), (N, 1, 1))
    poses[:, :2, 3] = xy
    with tempfile.TemporaryDirectory() as tmp:
        lidar_map = LidarMap.build(db, poses, [("00", i) for i in range(N)], "bench", {}, timestamps=t)
        _, save_s = timed(lambda: lidar_map.save(Path(tmp) / "map"))
        _, load_s = timed(lambda: LidarMap.load(Path(tmp) / "map"))
        _, report_s = timed(lambda: write_report(Path(tmp) / "report", result, xy, xy))
    figures = {
        "queries": N,
        "db": N,
        "dim": DIM,
        "positives_s": round(positives_s, 3),
        "evaluate_same_sequence_s": round(same_s, 3),
        "evaluate_revisit_30s_s": round(revisit_s, 3),
        "map_save_s": round(save_s, 3),
        "map_load_verified_s": round(load_s, 3),
        "report_s": round(report_s, 3),
    }
    for key, value in figures.items():
        print(f"{key:28s} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
