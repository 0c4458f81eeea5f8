"""The LIP-Loc reference code's distance metric, for reproducing the paper's figures side by side.

The authors' ``evaluate.py`` reads KITTI odometry poses (camera 0 in the frame of camera 0's first
pose: x right, y down, z forward) and measures the distance between a query and its top-1
retrieval from the translation's columns 1 and 2 only, ``sqrt(dy**2 + dz**2)``: height and forward,
ignoring the lateral axis x. A retrieval counts when that distance is below the threshold
(strict ``<``), over every query. liploc's own figure is the ground-plane (x, y) distance of the
LiDAR positions, ``<=`` the threshold.

liploc's frames carry LiDAR poses in a z-up world, so the camera-0 poses of the odometry
convention are rebuilt from them with the calibration: ``P_i = Tr @ inv(L_0) @ L_i @ inv(Tr)``
(``Tr``: LiDAR -> rectified camera 0, ``L_0``: the first database frame's LiDAR pose), the inverse
of the conversion the KITTI odometry reader applies. On KITTI odometry / SemanticKITTI this gives
back the poses file the authors read; on KITTI raw it is the same convention applied to the OXTS
poses. On KITTI-360 the authors read columns 1 and 2 of the translation in ``data_poses`` (world
y and height z, ignoring world x); liploc uses the LiDAR's world position there, which differs
from the IMU's by a lever arm of under a metre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.table import Table

from liploc.datasets import Frame
from liploc.evaluation.metrics import RetrievalResult, format_percent

DESCRIPTION = (
    "LIP-Loc reference evaluate.py: top-1 correct if sqrt(dy^2 + dz^2) < threshold, with y, z the "
    "height and forward coordinates of camera 0 in the frame of the first scan's camera 0 (lateral "
    "axis ignored), over all queries"
)


def odometry_camera_translations(frames: Sequence[Frame], origin: Frame) -> np.ndarray:
    """(N, 3) translations of camera-0 poses in the KITTI odometry convention (frame of ``origin``'s
    camera 0: x right, y down, z forward), from the frames' LiDAR poses and calibrations."""
    if origin.pose is None:
        raise ValueError("the origin frame needs a pose")
    inv_origin = np.linalg.inv(np.asarray(origin.pose, dtype=np.float64))
    out = np.empty((len(frames), 3), dtype=np.float64)
    for i, f in enumerate(frames):
        if f.pose is None:
            raise ValueError(f"frame {f.sequence}/{f.index} has no pose")
        tr = np.asarray(f.calib.T_cam_lidar, dtype=np.float64)
        camera_pose = tr @ inv_origin @ np.asarray(f.pose, dtype=np.float64) @ np.linalg.inv(tr)
        out[i] = camera_pose[:3, 3]
    return out


def world_translations(frames: Sequence[Frame]) -> np.ndarray:
    """(N, 3) world positions of the LiDAR (the KITTI-360 convention of the reference code)."""
    if any(f.pose is None for f in frames):
        raise ValueError("every frame needs a pose")
    return (
        np.stack([np.asarray(f.pose, dtype=np.float64)[:3, 3] for f in frames])
        if frames
        else np.zeros((0, 3))
    )


WORLD_CONVENTION_LAYOUTS = ("kitti360",)
"""Layouts whose reference code reads world translations instead of camera-0 odometry poses."""


def reference_distances(query_t: np.ndarray, retrieved_t: np.ndarray) -> np.ndarray:
    """The reference code's distance: from columns 1 and 2 of the translations only."""
    return np.hypot(query_t[:, 1] - retrieved_t[:, 1], query_t[:, 2] - retrieved_t[:, 2])


@dataclass(frozen=True)
class ReferenceMetric:
    """Top-1 recall by the reference code's metric at each threshold, beside liploc's own.

    Attributes:
        thresholds_m: the thresholds.
        recall_at_1: the reference code's Recall@1 at each threshold (all queries, strict ``<``).
        liploc_recall_at_1: liploc's ground-plane Recall@1 of the same retrievals.
        distances_m: (Q,) the reference distance from each query to its top-1 retrieval.
    """

    thresholds_m: tuple[float, ...]
    recall_at_1: tuple[float, ...]
    liploc_recall_at_1: tuple[float, ...]
    distances_m: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "description": DESCRIPTION,
            "thresholds": [
                {"threshold_m": t, "reference_recall_at_1": r, "liploc_recall_at_1": _finite(ll)}
                for t, r, ll in zip(self.thresholds_m, self.recall_at_1, self.liploc_recall_at_1, strict=True)
            ],
            "top1_distance_m": [_finite(d) for d in self.distances_m],
        }

    def table(self, title: str | None = None) -> Table:
        """Both figures, one row per threshold."""
        table = Table(title=title or "Recall@1: liploc's metric and the reference code's")
        table.add_column("threshold", justify="right")
        table.add_column("liploc R@1 (ground plane x-y, <=)", justify="right")
        table.add_column("reference R@1 (pose cols 1,2, <)", justify="right")
        for t, r, ll in zip(self.thresholds_m, self.recall_at_1, self.liploc_recall_at_1, strict=True):
            table.add_row(f"{t:g} m", format_percent(ll), format_percent(r))
        return table


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def reference_metric(
    result: RetrievalResult, queries: Sequence[Frame], database: Sequence[Frame], layout: str = "kitti"
) -> ReferenceMetric:
    """The reference code's Recall@1 of ``result``'s top-1 retrievals at each of its thresholds.

    ``layout`` (the dataset reader's name) picks the reference's pose convention: world
    translations for KITTI-360, otherwise camera-0 odometry poses in the frame of the first
    database frame's camera 0 (frame 0 of the sequence in the paper's same-sequence protocol).
    A query without a retrieval counts as a failure.
    """
    if not database:
        raise ValueError("the reference metric needs a database")
    if layout in WORLD_CONVENTION_LAYOUTS:
        q_t, db_t = world_translations(queries), world_translations(database)
    else:
        q_t = odometry_camera_translations(queries, database[0])
        db_t = odometry_camera_translations(database, database[0])
    top1 = np.asarray(result.retrieved[:, 0], dtype=np.int64)
    distances = np.full(len(queries), np.inf)
    ok = top1 >= 0
    distances[ok] = reference_distances(q_t[ok], db_t[top1[ok]])
    thresholds = tuple(t.threshold_m for t in result.thresholds)
    recalls = tuple(float(np.mean(distances < t)) if len(distances) else math.nan for t in thresholds)
    liploc = tuple(
        float(t.success[t.counted].mean()) if t.counted.any() else math.nan for t in result.thresholds
    )
    return ReferenceMetric(thresholds, recalls, liploc, distances)
