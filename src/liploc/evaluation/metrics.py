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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.table import Table

from liploc.localization.index import EmbeddingIndex, Exclusion, IndexKind
from liploc.localization.neighbours import (
    DISTANCE_CHUNK_PAIRS,
    check_xy,
    count_positives_within,
    ground_distance,
)

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


@dataclass(frozen=True, eq=False)
class TimeWindowExclusion:
    """Leaves out of each query's database the entries taken within ``window_s`` of the query.

    This makes the ``revisit`` protocol: a query can only be matched to another pass through
    the same place, not to the scans recorded around it. With sequences given, only entries of
    the query's own sequence are compared (timestamps of different drives are unrelated); an
    entry exactly ``window_s`` away is excluded.

    Attributes:
        query_timestamps: (Q,) seconds.
        db_timestamps: (N,) seconds, on the same clock as the queries'.
        window_s: half-width of the excluded time window.
        query_sequences: (Q,) sequence names, or None when all come from one sequence.
        db_sequences: (N,) sequence names, or None.
        past_only: also exclude every entry taken after the query (loop-closure setting: the map
            holds only what was driven more than ``window_s`` before), so the first pass through
            a place has no positive and only returns to it do. This excludes most of the
            database, so the search becomes exhaustive (still exact, slower for huge databases).
    """

    query_timestamps: np.ndarray
    db_timestamps: np.ndarray
    window_s: float
    query_sequences: Sequence[str] | None = None
    db_sequences: Sequence[str] | None = None
    past_only: bool = False
    _query_codes: np.ndarray = field(init=False, repr=False)
    _db_codes: np.ndarray = field(init=False, repr=False)
    _counts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        qt = np.asarray(self.query_timestamps, dtype=np.float64).reshape(-1)
        dt = np.asarray(self.db_timestamps, dtype=np.float64).reshape(-1)
        for name, t in (("query timestamps", qt), ("database timestamps", dt)):
            if not np.all(np.isfinite(t)):
                raise ValueError(f"{name}: the revisit protocol needs a timestamp for every frame")
        if self.window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {self.window_s}")
        if (self.query_sequences is None) != (self.db_sequences is None):
            raise ValueError("give sequences for both the queries and the database, or for neither")
        if self.query_sequences is None or self.db_sequences is None:
            q_codes, d_codes = np.zeros(len(qt), np.int64), np.zeros(len(dt), np.int64)
        else:
            if len(self.query_sequences) != len(qt) or len(self.db_sequences) != len(dt):
                raise ValueError("sequences and timestamps must have the same lengths")
            names = {s: i for i, s in enumerate(sorted(set(self.query_sequences) | set(self.db_sequences)))}
            q_codes = np.array([names[s] for s in self.query_sequences], dtype=np.int64)
            d_codes = np.array([names[s] for s in self.db_sequences], dtype=np.int64)
        # Number of excluded entries per query: a window count in each sequence's sorted times.
        counts = np.zeros(len(qt), dtype=np.int64)
        for code in np.unique(q_codes):
            times = np.sort(dt[d_codes == code])
            rows = q_codes == code
            hi = len(times) if self.past_only else np.searchsorted(times, qt[rows] + self.window_s, "right")
            lo = np.searchsorted(times, qt[rows] - self.window_s, side="left")
            counts[rows] = hi - lo
        object.__setattr__(self, "query_timestamps", qt)
        object.__setattr__(self, "db_timestamps", dt)
        object.__setattr__(self, "_query_codes", q_codes)
        object.__setattr__(self, "_db_codes", d_codes)
        object.__setattr__(self, "_counts", counts)

    @property
    def excluded_counts(self) -> np.ndarray:
        """(Q,) number of database entries excluded for each query."""
        return self._counts

    @property
    def max_excluded(self) -> int:
        """Largest number of entries excluded for one query."""
        return int(self._counts.max(initial=0))

    def excluded(self, query_indices: np.ndarray, db_indices: np.ndarray) -> np.ndarray:
        """True where database entry ``db_indices`` is excluded for query ``query_indices`` (broadcast)."""
        q = np.asarray(query_indices)
        d = np.asarray(db_indices)
        gap = self.query_timestamps[q] - self.db_timestamps[d]  # > 0: entry taken before the query
        near = gap <= self.window_s if self.past_only else np.abs(gap) <= self.window_s
        return near & (self._query_codes[q] == self._db_codes[d])


@dataclass(frozen=True, eq=False)
class SameScanExclusion:
    """Leaves the query's own scan out of its database (kitti-b: "own scan removed").

    Same-sequence evaluation queries each camera image against the scans of its own drive; its
    own scan (same sequence and frame) is then a trivially correct answer at distance 0. The
    protocols of later work remove it, so only the other scans near the query count.

    Attributes:
        query_keys: (Q,) hashable id of each query's frame, e.g. ``(sequence, index)``.
        db_keys: (N,) the same ids of the database entries.
    """

    query_keys: Sequence[Any]
    db_keys: Sequence[Any]
    _query_codes: np.ndarray = field(init=False, repr=False)
    _db_codes: np.ndarray = field(init=False, repr=False)
    _counts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        codes: dict[Any, int] = {}
        db = np.array([codes.setdefault(k, len(codes)) for k in self.db_keys], dtype=np.int64)
        # A query whose frame is not in the database gets -1: it excludes nothing.
        q = np.array([codes.get(k, -1) for k in self.query_keys], dtype=np.int64)
        per_code = np.bincount(db, minlength=len(codes)) if len(db) else np.zeros(0, np.int64)
        counts = np.where(q >= 0, per_code[np.maximum(q, 0)] if len(per_code) else 0, 0)
        object.__setattr__(self, "_query_codes", q)
        object.__setattr__(self, "_db_codes", db)
        object.__setattr__(self, "_counts", np.asarray(counts, dtype=np.int64))

    @property
    def excluded_counts(self) -> np.ndarray:
        """(Q,) number of database entries excluded for each query (its own scan: 1, or 0)."""
        return self._counts

    @property
    def max_excluded(self) -> int:
        """Largest number of entries excluded for one query."""
        return int(self._counts.max(initial=0))

    def excluded(self, query_indices: np.ndarray, db_indices: np.ndarray) -> np.ndarray:
        """True where database entry ``db_indices`` is the scan of query ``query_indices`` (broadcast)."""
        q = self._query_codes[np.asarray(query_indices)]
        return (q >= 0) & (q == self._db_codes[np.asarray(db_indices)])


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


@dataclass(eq=False)
class ThresholdResult:
    """Every figure at one distance threshold.

    Attributes:
        threshold_m: the distance threshold.
        recall: K -> Recall@K over the counted queries (NaN when no query is counted).
        recall_one_percent: Recall@1% (K = the result's ``k_one_percent``).
        chance: K -> chance-level Recall@K; ``chance_one_percent`` likewise.
        recall_curve: (curve_k,) Recall@K for K = 1 .. curve_k; ``chance_curve`` likewise.
        num_positives: (Q,) database positives of each query (after exclusion).
        counted: (Q,) the queries that enter recall and errors.
        success: (Q,) top-1 retrieval within the threshold.
        median_error_m, mean_error_m: top-1 ground-plane error over the counted queries.
    """

    threshold_m: float
    recall: dict[int, float]
    recall_one_percent: float
    chance: dict[int, float]
    chance_one_percent: float
    recall_curve: np.ndarray
    chance_curve: np.ndarray
    num_positives: np.ndarray
    counted: np.ndarray
    success: np.ndarray
    median_error_m: float
    mean_error_m: float

    @property
    def num_counted(self) -> int:
        """Queries that enter recall."""
        return int(self.counted.sum())

    @property
    def num_without_positive(self) -> int:
        """Queries with no positive in their database."""
        return int(np.count_nonzero(self.num_positives == 0))

    @property
    def near_chance(self) -> bool:
        """Whether Recall@1 is within noise of chance (see :func:`within_noise_of_chance`)."""
        return within_noise_of_chance(
            self.recall.get(1, math.nan), self.chance.get(1, math.nan), self.num_counted
        )


@dataclass(eq=False)
class RetrievalResult:
    """Outcome of a retrieval evaluation: figures per threshold plus per-query data.

    Attributes:
        thresholds: one :class:`ThresholdResult` per threshold, the main one (headline) first.
        ks: the K values reported.
        k_one_percent: K of Recall@1%.
        db_size: database entries (before any per-query exclusion).
        exclude_no_positive: whether queries without a positive were left out of recall.
        retrieved: (Q, K_max) database indices, best first (-1 where none).
        scores: (Q, K_max) cosine similarities (-inf where none).
        top1_error_m: (Q,) ground-plane distance from each query to its top-1 retrieval.
        info: free-form run information (protocol, sequence, model...) set by the caller.
    """

    thresholds: list[ThresholdResult]
    ks: tuple[int, ...]
    k_one_percent: int
    db_size: int
    exclude_no_positive: bool
    retrieved: np.ndarray
    scores: np.ndarray
    top1_error_m: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_queries(self) -> int:
        """Number of queries."""
        return len(self.retrieved)

    @property
    def main(self) -> ThresholdResult:
        """The headline threshold (the first one given)."""
        return self.thresholds[0]

    def at(self, threshold_m: float) -> ThresholdResult:
        """The figures at ``threshold_m``."""
        for t in self.thresholds:
            if math.isclose(t.threshold_m, threshold_m):
                return t
        raise KeyError(f"no threshold {threshold_m} m; have {[t.threshold_m for t in self.thresholds]}")

    def to_dict(self, per_query: bool = False) -> dict[str, Any]:
        """JSON-friendly summary (NaN becomes None); ``per_query`` adds the per-query arrays."""
        out: dict[str, Any] = {
            "num_queries": self.num_queries,
            "db_size": self.db_size,
            "ks": list(self.ks),
            "k_one_percent": self.k_one_percent,
            "exclude_no_positive": self.exclude_no_positive,
            "info": self.info,
            "thresholds": [
                {
                    "threshold_m": t.threshold_m,
                    "num_counted": t.num_counted,
                    "num_without_positive": t.num_without_positive,
                    "recall": {str(k): _json_float(v) for k, v in t.recall.items()},
                    "recall_one_percent": _json_float(t.recall_one_percent),
                    "chance": {str(k): _json_float(v) for k, v in t.chance.items()},
                    "chance_one_percent": _json_float(t.chance_one_percent),
                    "recall_at_1_near_chance": t.near_chance,
                    "median_error_m": _json_float(t.median_error_m),
                    "mean_error_m": _json_float(t.mean_error_m),
                    "recall_curve": [_json_float(v) for v in t.recall_curve],
                    "chance_curve": [_json_float(v) for v in t.chance_curve],
                }
                for t in self.thresholds
            ],
        }
        if per_query:
            out["per_query"] = {
                "retrieved": self.retrieved.tolist(),
                "scores": [[_json_float(v) for v in row] for row in self.scores],
                "top1_error_m": [_json_float(v) for v in self.top1_error_m],
                "success": {f"{t.threshold_m:g}": t.success.tolist() for t in self.thresholds},
                "counted": {f"{t.threshold_m:g}": t.counted.tolist() for t in self.thresholds},
            }
        return out

    def table(self, title: str | None = "Retrieval") -> Table:
        """A table that fits 80 columns: one row per threshold, recall with the chance level.

        A Recall@1 within noise of chance is marked ``~`` and explained in the caption.
        """
        from liploc.console import new_table

        headers = ["within", "queries", *(f"R@{k}" for k in self.ks)]
        headers += [f"R@1%\n(K={self.k_one_percent})", "chance\nR@1", "chance\nR@1%", "median\nerror"]
        table = new_table(*headers, title=title, right=tuple(headers))
        flagged = False
        for t in self.thresholds:
            recalls = [format_percent(t.recall[k]) for k in self.ks]
            if t.near_chance and 1 in self.ks:
                recalls[self.ks.index(1)] = "~" + recalls[self.ks.index(1)]
                flagged = True
            table.add_row(
                f"{t.threshold_m:g} m",
                f"{t.num_counted}/{self.num_queries}",
                *recalls,
                format_percent(t.recall_one_percent),
                format_percent(t.chance[1]),
                format_percent(t.chance_one_percent),
                "n/a" if math.isnan(t.median_error_m) else f"{t.median_error_m:.1f} m",
            )
        if flagged:
            table.caption = "~ R@1 within noise of chance (less than 3 sigma above it): no evidence of skill"
        return table


def within_noise_of_chance(recall: float, chance: float, num_queries: int, sigmas: float = 3.0) -> bool:
    """True when ``recall`` over ``num_queries`` is not clearly above the ``chance`` level.

    Clearly above means more than ``sigmas`` binomial standard deviations of chance plus one
    query: 2 of 120 queries right against a chance of 0.5% is no evidence that the model works.
    Undefined figures (NaN, no query) count as near chance.
    """
    if num_queries <= 0 or math.isnan(recall) or math.isnan(chance):
        return True
    noise = sigmas * math.sqrt(max(chance * (1.0 - chance), 0.0) / num_queries) + 1.0 / num_queries
    return recall - chance < noise


def format_percent(value: float) -> str:
    """``0.4567`` -> ``'45.7%'``; NaN -> ``'n/a'``."""
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _json_float(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


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
    _check_exclusion(exclude, len(query_xy), len(db_xy))
    dist = retrieval_distances(retrieved, query_xy, db_xy)
    n_db = len(db_xy)
    k1 = one_percent_k(n_db)
    k_chance = max([*ks, k1, curve_k])
    available = np.full(len(query_xy), n_db, dtype=np.int64)
    if exclude is not None:
        available = available - _excluded_counts(exclude, len(query_xy), n_db)
    top1 = dist[:, 0] if dist.shape[1] else np.full(len(query_xy), np.inf)
    top1_error = np.where(np.isfinite(top1), top1, np.nan)
    positives = count_positives_within(query_xy, db_xy, thresholds_m, exclude)

    per_threshold = []
    for i, thr in enumerate(thresholds_m):
        counted = positives[i] > 0 if exclude_no_positive else np.ones(len(query_xy), bool)
        hits = dist <= thr
        found = _found_within(hits)
        chance = chance_hit_probability(positives[i], available, k_chance)

        def recall_at(k: int, found=found, counted=counted) -> float:
            return _recall(found, counted, k)

        def chance_at(k: int, chance=chance, counted=counted) -> float:
            return float(chance[counted, k - 1].mean()) if counted.any() else math.nan

        errors = top1_error[counted]
        errors = errors[np.isfinite(errors)]
        per_threshold.append(
            ThresholdResult(
                threshold_m=float(thr),
                recall={k: recall_at(k) for k in ks},
                recall_one_percent=recall_at(k1),
                chance={k: chance_at(k) for k in sorted({1, *ks})},
                chance_one_percent=chance_at(k1),
                recall_curve=np.array([recall_at(k) for k in range(1, curve_k + 1)]),
                chance_curve=np.array([chance_at(k) for k in range(1, curve_k + 1)]),
                num_positives=positives[i],
                counted=counted,
                success=hits[:, 0] if hits.shape[1] else np.zeros(len(query_xy), bool),
                median_error_m=float(np.median(errors)) if len(errors) else math.nan,
                mean_error_m=float(np.mean(errors)) if len(errors) else math.nan,
            )
        )
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


def _excluded_counts(exclude: Exclusion, num_queries: int, db_size: int) -> np.ndarray:
    counts = getattr(exclude, "excluded_counts", None)
    if counts is not None:
        return np.asarray(counts, dtype=np.int64)
    # A generic exclusion: count in blocks.
    out = np.zeros(num_queries, dtype=np.int64)
    step = max(1, DISTANCE_CHUNK_PAIRS // max(1, db_size))
    db_ids = np.arange(db_size)[None, :]
    for start in range(0, num_queries, step):
        rows = np.arange(start, min(start + step, num_queries))
        out[rows] = exclude.excluded(rows[:, None], db_ids).sum(axis=1)
    return out


def evaluate_retrieval(
    query_emb: np.ndarray,
    db_emb: np.ndarray,
    query_xy: np.ndarray,
    db_xy: np.ndarray,
    thresholds_m: Sequence[float] = DEFAULT_THRESHOLDS_M,
    ks: Sequence[int] = DEFAULT_KS,
    exclude: Exclusion | None = None,
    exclude_no_positive: bool = True,
    curve_k: int = DEFAULT_CURVE_K,
    index_kind: IndexKind = "flat",
    info: dict[str, Any] | None = None,
    unit_norm: bool = True,
) -> RetrievalResult:
    """Retrieve database entries for every query by cosine similarity and score the retrievals.

    Args:
        query_emb: (Q, D) L2-normalised query (camera) embeddings.
        db_emb: (N, D) L2-normalised database (LiDAR) embeddings.
        query_xy, db_xy: (Q, 2) and (N, 2) ground-plane positions in metres.
        thresholds_m: distance thresholds; the first is the headline one.
        ks: Recall@K values to report (Recall@1% is always added).
        exclude: per-query database exclusion (``TimeWindowExclusion`` for the revisit protocol).
        exclude_no_positive: leave queries without a positive out of recall (default) or count
            them as failures.
        curve_k: compute Recall@K for K = 1 .. curve_k too (the report's curve).
        index_kind: ``flat`` (exact, default) or ``hnsw``/``auto`` for huge databases.
        info: run information stored in ``result.info`` (protocol, sequence, checkpoint...).
        unit_norm: the embeddings are L2-normalised (cosine); False: rank by the raw dot product
            of un-normalised embeddings (the paper's model).
    """
    query_xy, db_xy = check_xy(query_xy, "query positions"), check_xy(db_xy, "database positions")
    if len(query_emb) != len(query_xy):
        raise ValueError(f"{len(query_emb)} query embeddings but {len(query_xy)} query positions")
    if len(db_emb) != len(db_xy):
        raise ValueError(f"{len(db_emb)} database embeddings but {len(db_xy)} database positions")
    index = EmbeddingIndex.build(db_emb, kind=index_kind, unit_norm=unit_norm)
    k_max = min(len(db_xy), max([*ks, one_percent_k(len(db_xy)), curve_k]))
    _check_exclusion(exclude, len(query_xy), len(db_xy))
    scores, retrieved = index.search(query_emb, k_max, exclude=exclude)
    result = score_retrieval(
        retrieved, scores, query_xy, db_xy, thresholds_m, ks, exclude, exclude_no_positive, curve_k
    )
    result.info.update(info or {})
    return result


def _check_exclusion(exclude: Exclusion | None, num_queries: int, db_size: int) -> None:
    if isinstance(exclude, TimeWindowExclusion) and (
        len(exclude.query_timestamps) != num_queries or len(exclude.db_timestamps) != db_size
    ):
        raise ValueError(
            f"the exclusion has {len(exclude.query_timestamps)} query and {len(exclude.db_timestamps)} "
            f"database timestamps for {num_queries} queries and {db_size} database entries"
        )
    if isinstance(exclude, SameScanExclusion) and (
        len(exclude.query_keys) != num_queries or len(exclude.db_keys) != db_size
    ):
        raise ValueError(
            f"the exclusion has {len(exclude.query_keys)} query and {len(exclude.db_keys)} "
            f"database frames for {num_queries} queries and {db_size} database entries"
        )
