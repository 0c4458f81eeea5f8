"""Sequence matching in an evaluation: each query localized with the last ``seq_len`` images.

The same positives, thresholds and exclusions as the single-image evaluation apply to the newest
image of each window, so that the single-image and sequence rows compare one to one; one table
prints them side by side.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Unpack

import numpy as np
from rich.table import Table

from liploc.datasets import Frame
from liploc.evaluation.metrics import (
    RetrievalResult,
    Scoring,
    format_percent,
    retrieval_depth,
    score_retrieval,
)
from liploc.localization.sequences import (
    MapTrack,
    SequenceMatcher,
    SequenceSettings,
    sequence_search,
    stream_windows,
)


def simulated_odometry(frames: list[Frame], noise: float, seed: int = 0) -> np.ndarray:
    """(Q,) metres travelled from the previous frame of the same sequence (0 for a sequence's first),
    from the true poses with multiplicative Gaussian noise of relative std ``noise`` (fixed seed)."""
    xy = np.stack([f.position_xy for f in frames]) if frames else np.zeros((0, 2))
    step = np.zeros(len(frames))
    if len(frames) > 1:
        same = np.array([a.sequence == b.sequence for a, b in itertools.pairwise(frames)])
        step[1:] = np.where(same, np.linalg.norm(np.diff(xy, axis=0), axis=1), 0.0)
    rng = np.random.default_rng(seed)
    return np.maximum(step * (1.0 + noise * rng.standard_normal(len(step))), 0.0)


def evaluate_sequences(
    q_emb: np.ndarray,
    db_emb: np.ndarray,
    queries: list[Frame],
    database: list[Frame],
    settings: SequenceSettings,
    *,
    odometry: bool = False,
    worlds: dict[str, str] | None = None,
    info: dict[str, Any] | None = None,
    **scoring: Unpack[Scoring],
) -> RetrievalResult:
    """Recall of sequence matching: each query localized with the last ``seq_len`` images of its drive.

    Queries are taken in driving order (their order in ``queries``: frame order per sequence). The
    same positives, thresholds and exclusions (``scoring``, as for
    :func:`~liploc.evaluation.metrics.evaluate_retrieval`) apply to the newest image of each
    window, so the two results compare one to one.
    """
    db_xy = np.stack([f.position_xy for f in database])
    q_xy = np.stack([f.position_xy for f in queries])
    track = MapTrack.build(
        [f.sequence for f in database],
        [f.index for f in database],
        db_xy,
        join_radius_m=settings.join_radius_m,
        worlds=worlds,
    )
    matcher = SequenceMatcher(track, settings)
    k_max = retrieval_depth(len(database), scoring)
    excluded_fn = None
    exclude = scoring.get("exclude")
    if exclude is not None:
        db_ids = np.arange(len(database))[None, :]

        def excluded_fn(rows: np.ndarray) -> np.ndarray:
            return exclude.excluded(rows[:, None], db_ids)

    travelled = simulated_odometry(queries, settings.odometry_noise) if odometry else None
    scores, retrieved = sequence_search(
        q_emb,
        db_emb,
        matcher,
        k_max,
        segments=[f.sequence for f in queries],
        travelled_m=travelled,
        frame_indices=np.array([f.index for f in queries]),
        excluded_fn=excluded_fn,
    )
    # Excluded places score -inf; they must not count as retrieved.
    retrieved = np.where(np.isfinite(scores), retrieved, -1)
    result = score_retrieval(retrieved, scores, q_xy, db_xy, **scoring)
    result.info.update(info or {})
    result.info["sequence_matching"] = {
        "seq_len": settings.seq_len,
        "odometry": odometry,
        "window_m": float(np.median(_window_lengths(q_xy, [f.sequence for f in queries], settings.seq_len))),
        **settings.model_dump(mode="json"),
    }
    return result


def _window_lengths(xy: np.ndarray, segments: list[str], seq_len: int) -> np.ndarray:
    """Metres driven over each full window of ``seq_len`` images (for the record)."""
    windows, valid = stream_windows(segments, seq_len)
    step = np.r_[0.0, np.linalg.norm(np.diff(xy, axis=0), axis=1)]
    full = valid.all(axis=1)
    if not full.any():
        return np.zeros(1)
    return np.array([step[w[1:]].sum() for w in windows[full]])


def single_and_sequence_table(single: RetrievalResult, sequence: RetrievalResult, title: str | None) -> Table:
    """One rich table with single-image and sequence rows side by side, per threshold."""
    seq = sequence.info.get("sequence_matching", {})
    label = f"seq L={seq.get('seq_len', '?')}" + (" odo" if seq.get("odometry") else "")
    table = Table(title=title)
    table.add_column("threshold", justify="right")
    table.add_column("input", no_wrap=True)
    table.add_column("queries", justify="right")
    for k in single.ks:
        table.add_column(f"R@{k}", justify="right")
    table.add_column(f"R@1% (K={single.k_one_percent})", justify="right")
    table.add_column("chance R@1", justify="right")
    table.add_column("median err", justify="right")
    flagged = False
    for t_single, t_seq in zip(single.thresholds, sequence.thresholds, strict=True):
        for name, t, res in (("single", t_single, single), (label, t_seq, sequence)):
            recalls = [format_percent(t.recall[k]) for k in res.ks]
            if t.near_chance and 1 in res.ks:  # as RetrievalResult.table marks it
                recalls[res.ks.index(1)] = "~" + recalls[res.ks.index(1)]
                flagged = True
            table.add_row(
                f"{t.threshold_m:g} m",
                name,
                f"{t.num_counted}/{res.num_queries}",
                *recalls,
                format_percent(t.recall_one_percent),
                format_percent(t.chance[1]),
                "n/a" if math.isnan(t.median_error_m) else f"{t.median_error_m:.1f} m",
            )
    captions = []
    window = seq.get("window_m")
    if window is not None:
        captions.append(f"sequence window: {seq.get('seq_len')} images, median {window:.0f} m driven")
    if flagged:
        captions.append("~ R@1 within noise of chance (less than 3 sigma above it): no evidence of skill")
    if captions:
        table.caption = "\n".join(captions)
    return table
