"""Per-query exclusions from the database: a time window around the query (revisit), its own scan.

An excluded entry leaves that query's database: it is never retrieved, never a positive, and does
not count among the entries a random draw could pick (the chance level). Both kinds implement
:class:`liploc.localization.index.Exclusion`, which the index search and the positive counts take.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from liploc.localization.index import Exclusion
from liploc.localization.neighbours import DISTANCE_CHUNK_PAIRS


class _CountedExclusion:
    """What both exclusions answer from their per-query counts (``_counts``, set at construction)."""

    _counts: np.ndarray

    @property
    def excluded_counts(self) -> np.ndarray:
        """(Q,) number of database entries excluded for each query."""
        return self._counts

    @property
    def max_excluded(self) -> int:
        """Largest number of entries excluded for one query."""
        return int(self._counts.max(initial=0))


@dataclass(frozen=True, eq=False)
class TimeWindowExclusion(_CountedExclusion):
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

    def excluded(self, query_indices: np.ndarray, db_indices: np.ndarray) -> np.ndarray:
        """True where database entry ``db_indices`` is excluded for query ``query_indices`` (broadcast)."""
        q = np.asarray(query_indices)
        d = np.asarray(db_indices)
        gap = self.query_timestamps[q] - self.db_timestamps[d]  # > 0: entry taken before the query
        near = gap <= self.window_s if self.past_only else np.abs(gap) <= self.window_s
        return near & (self._query_codes[q] == self._db_codes[d])


@dataclass(frozen=True, eq=False)
class SameScanExclusion(_CountedExclusion):
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

    def excluded(self, query_indices: np.ndarray, db_indices: np.ndarray) -> np.ndarray:
        """True where database entry ``db_indices`` is the scan of query ``query_indices`` (broadcast)."""
        q = self._query_codes[np.asarray(query_indices)]
        return (q >= 0) & (q == self._db_codes[np.asarray(db_indices)])


def excluded_counts(exclude: Exclusion, num_queries: int, db_size: int) -> np.ndarray:
    """(Q,) entries ``exclude`` takes out of each query's database of ``db_size``."""
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


def check_exclusion(exclude: Exclusion | None, num_queries: int, db_size: int) -> None:
    """Raise a ValueError when an exclusion was made for other numbers of queries or entries."""
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
