"""The figures of a retrieval evaluation, per threshold and per query, as JSON and as a table.

Chance level and the "within noise of chance" test are here too: every printed Recall@1 is shown
beside the recall a random retrieval would reach, and one within noise of it is marked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.table import Table


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
