"""Retrieval metrics: positives by ground-plane distance, Recall@K, Recall@1%, chance level, errors.

Conventions (those of the visual place recognition literature, which LIP-Loc follows):

- A database entry is a *positive* for a query when their ground-plane (x, y) distance is at most
  the threshold (inclusive; the LIP-Loc reference code tests ``distance < threshold``, which only
  differs for distances exactly on the threshold).
- Recall@K is the fraction of queries with at least one positive among their K best retrievals.
- Recall@1% uses K = ``max(1, round(db_size / 100))`` with Python's ``round`` (half to even), as in
  the PointNetVLAD evaluation code that later place-recognition work reuses: 4541 -> 45, 250 -> 2,
  350 -> 4, 49 -> 1.
- Queries with no positive in the database are counted (``num_without_positive``) and, by default,
  left out of every recall and error figure (``exclude_no_positive=False`` counts them as failures).
- Chance level is the expected recall of a retrieval that draws K distinct database entries
  uniformly at random: per query ``1 - C(N - P, K) / C(N, K)`` (N database entries available to
  the query, P of them positives), averaged over the counted queries; for K = 1 it is ``P / N``.
- With an exclusion (the ``revisit`` protocol), the excluded entries leave the database of that
  query: they are never retrieved, never positives, and do not count in N.

The exclusions live in :mod:`liploc.evaluation.exclusions`, the result objects (tables, JSON,
the chance test) in :mod:`liploc.evaluation.results`; both are importable from here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypedDict, Unpack

import numpy as np

from liploc.evaluation.exclusions import (
    SameScanExclusion,
    TimeWindowExclusion,
    check_exclusion,
    excluded_counts,
)
from liploc.evaluation.results import RetrievalResult, ThresholdResult, format_percent, within_noise_of_chance
from liploc.localization.index import EmbeddingIndex, Exclusion, IndexKind
from liploc.localization.neighbours import check_xy, count_positives_within, ground_distance

__all__ = [
    "DEFAULT_CURVE_K",
    "DEFAULT_KS",
    "DEFAULT_THRESHOLDS_M",
    "RetrievalResult",
    "SameScanExclusion",
    "Scoring",
    "ThresholdResult",
    "TimeWindowExclusion",
    "chance_hit_probability",
    "evaluate_retrieval",
    "format_percent",
    "one_percent_k",
    "recall_at_k",
    "retrieval_depth",
    "retrieval_distances",
    "score_retrieval",
    "within_noise_of_chance",
    "xy_from_poses",
]

DEFAULT_THRESHOLDS_M: tuple[float, ...] = (20.0, 10.0)
"""20 m as in the LIP-Loc paper, 10 m as in later cross-modal localization work."""
DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
DEFAULT_CURVE_K = 25
"""Recall@K is also computed for every K = 1 .. this, for the recall curve of the report."""


def one_percent_k(db_size: int) -> int:
    """K of Recall@1%: ``max(1, round(db_size / 100))`` with Python's round (half to even)."""
    return max(1, round(int(db_size) / 100))


def xy_from_poses(poses: np.ndarray) -> np.ndarray:
    """Ground-plane positions (N, 2) from (N, 4, 4) poses in a z-up world frame."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"expected poses of shape (N, 4, 4), got {tuple(poses.shape)}")
    return poses[:, :2, 3].copy()


def retrieval_distances(retrieved: np.ndarray, query_xy: np.ndarray, db_xy: np.ndarray) -> np.ndarray:
    """(Q, K) ground-plane distance from each query to each retrieved entry (inf where index is -1)."""
    retrieved = np.asarray(retrieved, dtype=np.int64)
    query_xy, db_xy = check_xy(query_xy, "query positions"), check_xy(db_xy, "database positions")
    if retrieved.ndim != 2 or len(retrieved) != len(query_xy):
        raise ValueError(f"retrieved: expected shape (Q={len(query_xy)}, K), got {tuple(retrieved.shape)}")
    if retrieved.size and retrieved.max() >= len(db_xy):
        raise ValueError(f"retrieved: index {int(retrieved.max())} is outside the database of {len(db_xy)}")
    pos = db_xy[np.maximum(retrieved, 0)]
    d = ground_distance(pos[..., 0] - query_xy[:, None, 0], pos[..., 1] - query_xy[:, None, 1])
    return np.where(retrieved < 0, np.inf, d)


def recall_at_k(
    retrieved: np.ndarray,
    query_xy: np.ndarray,
    db_xy: np.ndarray,
    ks: Sequence[int],
    threshold_m: float,
    counted: np.ndarray | None = None,
) -> dict[int, float]:
    """Recall@K for each K: the fraction of counted queries with a positive in their top K.

    Args:
        retrieved: (Q, K) database indices, best first; -1 for no retrieval.
        query_xy, db_xy: (Q, 2) and (N, 2) ground-plane positions.
        ks: the K values (a K beyond the retrieved columns uses all of them).
        threshold_m: a retrieval is correct within this distance (inclusive).
        counted: (Q,) boolean mask of the queries to count (default: all); NaN when none is counted.
    """
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    found = _found_within(retrieval_distances(retrieved, query_xy, db_xy) <= threshold_m)
    mask = np.ones(len(found), bool) if counted is None else np.asarray(counted, dtype=bool)
    return {k: _recall(found, mask, k) for k in ks}


def _found_within(hits: np.ndarray) -> np.ndarray:
    """(Q, K) hit flags -> (Q, K) 'a hit among the first k+1 columns'."""
    return np.logical_or.accumulate(hits, axis=1) if hits.shape[1] else hits


def _recall(found: np.ndarray, counted: np.ndarray, k: int) -> float:
    if not counted.any():
        return math.nan
    if not found.shape[1]:
        return 0.0
    return float(found[counted, min(k, found.shape[1]) - 1].mean())


def chance_hit_probability(num_positives: np.ndarray, db_sizes: np.ndarray, k_max: int) -> np.ndarray:
    """(Q, k_max) probability that K = 1..k_max random distinct entries hold a positive.

    ``1 - prod_{i<K} (N - P - i) / (N - i)``, i.e. ``1 - C(N-P, K) / C(N, K)``; 1 once K > N - P.
    """
    p = np.asarray(num_positives, dtype=np.float64)[:, None]
    n = np.asarray(db_sizes, dtype=np.float64)[:, None]
    i = np.arange(k_max, dtype=np.float64)[None, :]
    # Once all N entries are drawn (K > N) further draws change nothing: ratio 1.
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(n - i > 0, np.clip(n - p - i, 0, None) / (n - i), 1.0)
    return 1.0 - np.cumprod(ratio, axis=1)


class Scoring(TypedDict, total=False):
    """How retrievals are scored: the keyword arguments of :func:`score_retrieval` that
    :func:`evaluate_retrieval` and sequence matching pass on (absent ones take its defaults).

    Attributes:
        thresholds_m: distance thresholds; the first is the headline one.
        ks: Recall@K values to report (Recall@1% is always added).
        exclude: per-query database exclusion (``TimeWindowExclusion`` for the revisit protocol,
            ``SameScanExclusion`` for the own scan).
        exclude_no_positive: leave queries without a positive out of recall (default) or count
            them as failures.
        curve_k: compute Recall@K for K = 1 .. curve_k too (the report's curve).
    """

    thresholds_m: Sequence[float]
    ks: Sequence[int]
    exclude: Exclusion | None
    exclude_no_positive: bool
    curve_k: int


def retrieval_depth(db_size: int, scoring: Scoring) -> int:
    """Retrievals per query that every figure of ``scoring`` needs: the largest K, Recall@1%'s
    K and the curve's, at most the database."""
    ks = scoring.get("ks", DEFAULT_KS)
    return min(db_size, max([*ks, one_percent_k(db_size), scoring.get("curve_k", DEFAULT_CURVE_K)]))


def score_retrieval(
    retrieved: np.ndarray,
    scores: np.ndarray | None,
    query_xy: np.ndarray,
    db_xy: np.ndarray,
    thresholds_m: Sequence[float] = DEFAULT_THRESHOLDS_M,
    ks: Sequence[int] = DEFAULT_KS,
    exclude: Exclusion | None = None,
    exclude_no_positive: bool = True,
    curve_k: int = DEFAULT_CURVE_K,
) -> RetrievalResult:
    """Compute every figure of a :class:`RetrievalResult` from given retrievals.

    ``retrieved`` (Q, K) must already respect ``exclude``; ``exclude`` is used here for the
    positives and the chance level. Retrieved columns beyond what a K needs are ignored; a K beyond
    the columns given is computed on the columns there are (give at least ``max(ks)``,
    ``one_percent_k(N)`` and ``curve_k`` columns, or N when the database is smaller).
    """
    if not thresholds_m:
        raise ValueError("give at least one distance threshold")
    if any(k < 1 for k in ks) or curve_k < 1:
        raise ValueError("every k must be >= 1")
    query_xy, db_xy = check_xy(query_xy, "query positions"), check_xy(db_xy, "database positions")
    retrieved = np.asarray(retrieved, dtype=np.int64)
    if scores is None:
        scores = np.full(retrieved.shape, np.nan, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != retrieved.shape:
        raise ValueError(f"scores {scores.shape} and retrieved {retrieved.shape} differ in shape")
    check_exclusion(exclude, len(query_xy), len(db_xy))
    dist = retrieval_distances(retrieved, query_xy, db_xy)
    n_db = len(db_xy)
    k1 = one_percent_k(n_db)
    available = np.full(len(query_xy), n_db, dtype=np.int64)
    if exclude is not None:
        available = available - excluded_counts(exclude, len(query_xy), n_db)
    top1 = dist[:, 0] if dist.shape[1] else np.full(len(query_xy), np.inf)
    top1_error = np.where(np.isfinite(top1), top1, np.nan)
    positives = count_positives_within(query_xy, db_xy, thresholds_m, exclude)

    per_threshold = [
        _threshold_result(
            float(thr), dist, positives[i], available, top1_error, ks, k1, curve_k, exclude_no_positive
        )
        for i, thr in enumerate(thresholds_m)
    ]
    return RetrievalResult(
        thresholds=per_threshold,
        ks=tuple(int(k) for k in ks),
        k_one_percent=k1,
        db_size=n_db,
        exclude_no_positive=exclude_no_positive,
        retrieved=retrieved,
        scores=scores,
        top1_error_m=top1_error,
    )


def _threshold_result(
    threshold_m: float,
    dist: np.ndarray,
    positives: np.ndarray,
    available: np.ndarray,
    top1_error: np.ndarray,
    ks: Sequence[int],
    k1: int,
    curve_k: int,
    exclude_no_positive: bool,
) -> ThresholdResult:
    """The figures at one threshold from the (Q, K) retrieval distances and the positives per query."""
    num_queries = len(dist)
    counted = positives > 0 if exclude_no_positive else np.ones(num_queries, bool)
    hits = dist <= threshold_m
    found = _found_within(hits)
    chance = chance_hit_probability(positives, available, max([*ks, k1, curve_k]))

    def recall_at(k: int) -> float:
        return _recall(found, counted, k)

    def chance_at(k: int) -> float:
        return float(chance[counted, k - 1].mean()) if counted.any() else math.nan

    errors = top1_error[counted]
    errors = errors[np.isfinite(errors)]
    return ThresholdResult(
        threshold_m=threshold_m,
        recall={k: recall_at(k) for k in ks},
        recall_one_percent=recall_at(k1),
        chance={k: chance_at(k) for k in sorted({1, *ks})},
        chance_one_percent=chance_at(k1),
        recall_curve=np.array([recall_at(k) for k in range(1, curve_k + 1)]),
        chance_curve=np.array([chance_at(k) for k in range(1, curve_k + 1)]),
        num_positives=positives,
        counted=counted,
        success=hits[:, 0] if hits.shape[1] else np.zeros(num_queries, bool),
        median_error_m=float(np.median(errors)) if len(errors) else math.nan,
        mean_error_m=float(np.mean(errors)) if len(errors) else math.nan,
    )


def evaluate_retrieval(
    query_emb: np.ndarray,
    db_emb: np.ndarray,
    query_xy: np.ndarray,
    db_xy: np.ndarray,
    *,
    index_kind: IndexKind = "flat",
    info: dict[str, Any] | None = None,
    unit_norm: bool = True,
    **scoring: Unpack[Scoring],
) -> RetrievalResult:
    """Retrieve database entries for every query by cosine similarity and score the retrievals.

    Args:
        query_emb: (Q, D) L2-normalised query (camera) embeddings.
        db_emb: (N, D) L2-normalised database (LiDAR) embeddings.
        query_xy, db_xy: (Q, 2) and (N, 2) ground-plane positions in metres.
        index_kind: ``flat`` (exact, default) or ``hnsw``/``auto`` for huge databases.
        info: run information stored in ``result.info`` (protocol, sequence, checkpoint...).
        unit_norm: the embeddings are L2-normalised (cosine); False: rank by the raw dot product
            of un-normalised embeddings (the paper's model).
        scoring: thresholds, Ks, exclusion and the rest of :class:`Scoring`.
    """
    query_xy, db_xy = check_xy(query_xy, "query positions"), check_xy(db_xy, "database positions")
    if len(query_emb) != len(query_xy):
        raise ValueError(f"{len(query_emb)} query embeddings but {len(query_xy)} query positions")
    if len(db_emb) != len(db_xy):
        raise ValueError(f"{len(db_emb)} database embeddings but {len(db_xy)} database positions")
    index = EmbeddingIndex.build(db_emb, kind=index_kind, unit_norm=unit_norm)
    exclude = scoring.get("exclude")
    check_exclusion(exclude, len(query_xy), len(db_xy))
    scores, retrieved = index.search(query_emb, retrieval_depth(len(db_xy), scoring), exclude=exclude)
    result = score_retrieval(retrieved, scores, query_xy, db_xy, **scoring)
    result.info.update(info or {})
    return result
