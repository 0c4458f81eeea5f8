"""Reference answers for retrieval tests, computed the slow and obvious way."""

from __future__ import annotations

import numpy as np


def brute_force_search(
    query_emb: np.ndarray, db_emb: np.ndarray, k: int, excluded: np.ndarray | None = None
) -> np.ndarray:
    """Top-k indices by cosine similarity with excluded pairs (Q, N) removed: the reference."""
    sim = query_emb.astype(np.float64) @ db_emb.astype(np.float64).T
    if excluded is not None:
        sim = np.where(excluded, -np.inf, sim)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


__all__ = ["brute_force_search"]
