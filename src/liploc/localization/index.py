"""Nearest-neighbour search over embeddings with faiss by inner product: the cosine similarity of
L2-normalised embeddings (liploc's models), or the raw dot product of un-normalised ones (the
paper's model, ``model.normalize: false``; ``unit_norm=False`` here).

The index answers ``search(queries, k)`` with the faiss conventions: scores and database row
indices of shape (Q, k), best first, rows padded with index -1 and score -inf when fewer than
``k`` database entries are available. An optional :class:`Exclusion` leaves chosen database
entries out per query (the ``revisit`` protocol) and the search stays exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import faiss
import numpy as np

from liploc.atomic import atomic_write
from liploc.errors import DataError, EmbeddingError

IndexKind = Literal["flat", "hnsw", "auto"]

HNSW_MIN_SIZE = 500_000
"""``auto`` switches from the exact flat index to HNSW from this many database entries on."""

NORM_TOLERANCE = 1e-2
"""Largest accepted deviation of an embedding's L2 norm from 1 (bf16 outputs stay well inside)."""

_SEARCH_CHUNK = 4096  # queries per faiss call when filtering exclusions
_SEARCH_PAIRS = 4_000_000  # most candidates held at once when filtering exclusions (bounds memory)


class Exclusion(Protocol):
    """Database entries that must not be retrieved for a query (e.g. scans taken at the same time).

    Implemented by :class:`liploc.evaluation.metrics.TimeWindowExclusion`.
    """

    @property
    def max_excluded(self) -> int:
        """Largest number of database entries excluded for any single query."""
        ...

    def excluded(self, query_indices: np.ndarray, db_indices: np.ndarray) -> np.ndarray:
        """Boolean array, broadcast of the two index arrays: True where the pair is excluded."""
        ...


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm (raises :class:`EmbeddingError` on zero rows)."""
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise EmbeddingError("cannot L2-normalise embeddings holding zero or non-finite rows")
    return np.ascontiguousarray(x / norms)


def check_embeddings(
    embeddings: np.ndarray,
    name: str,
    dim: int | None = None,
    tolerance: float = NORM_TOLERANCE,
    unit_norm: bool = True,
) -> np.ndarray:
    """Validate an (N, D) array of embeddings and return it as contiguous float32.

    Args:
        embeddings: array of shape (N, D); a single (D,) vector is accepted as N = 1.
        name: what the array is, used in the error messages (``"query embeddings"``).
        dim: expected D, or None to accept any.
        tolerance: largest accepted deviation of a row's L2 norm from 1.
        unit_norm: require L2-normalised rows (False for raw dot-product retrieval).

    Raises:
        EmbeddingError: wrong rank or dimension, non-finite values, or rows that are not unit length.
    """
    x = np.asarray(embeddings)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise EmbeddingError(f"{name}: expected an (N, D) array, got shape {tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise EmbeddingError(f"{name}: expected floating-point values, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise EmbeddingError(
            f"{name}: dimension {x.shape[1]} does not match the index dimension {dim} "
            "(embeddings from a different model or head?)"
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x).all(axis=1)))
        raise EmbeddingError(f"{name}: {bad} rows hold NaN or infinite values")
    if len(x) and unit_norm:
        norms = np.linalg.norm(x, axis=1)
        worst = int(np.argmax(np.abs(norms - 1.0)))
        if abs(norms[worst] - 1.0) > tolerance:
            raise EmbeddingError(
                f"{name}: rows must be L2-normalised (row {worst} has norm {norms[worst]:.4f}); "
                "normalise them with liploc.localization.index.l2_normalize"
            )
    return x


class EmbeddingIndex:
    """A faiss inner-product index over float32 embeddings, L2-normalised unless ``unit_norm`` is
    False (then it ranks by the raw dot product, as the paper's model does).

    ``kind="flat"`` is exact (``IndexFlatIP``); ``"hnsw"`` is approximate (``IndexHNSWFlat``)
    and fast for millions of entries; ``"auto"`` picks HNSW from :data:`HNSW_MIN_SIZE` entries.
    """

    def __init__(self, faiss_index: faiss.Index, unit_norm: bool = True) -> None:
        if faiss_index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise EmbeddingError("the faiss index must use the inner-product metric")
        self.faiss_index = faiss_index
        self.unit_norm = unit_norm

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        kind: IndexKind = "auto",
        hnsw_neighbors: int = 32,
        unit_norm: bool = True,
    ) -> EmbeddingIndex:
        """Make an index holding ``embeddings`` ((N, D), L2-normalised unless ``unit_norm`` is
        False), row i = database entry i."""
        x = check_embeddings(embeddings, "database embeddings", unit_norm=unit_norm)
        if kind == "auto":
            kind = "hnsw" if len(x) >= HNSW_MIN_SIZE else "flat"
        dim = x.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_neighbors, faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"unknown index kind {kind!r}; expected flat, hnsw or auto")
        index.add(x)
        return cls(index, unit_norm=unit_norm)

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return int(self.faiss_index.d)

    @property
    def ntotal(self) -> int:
        """Number of database entries."""
        return int(self.faiss_index.ntotal)

    @property
    def kind(self) -> str:
        """``flat`` or ``hnsw``."""
        return "hnsw" if isinstance(self.faiss_index, faiss.IndexHNSW) else "flat"

    def __len__(self) -> int:
        return self.ntotal

    def search(
        self, queries: np.ndarray, k: int, exclude: Exclusion | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores float32 (Q, k), indices int64 (Q, k)) of the k most similar entries.

        Rows are sorted by decreasing cosine similarity; where fewer than ``k`` entries are
        available the row is padded with index -1 and score -inf. With ``exclude``, row i of
        ``queries`` is query i of the exclusion and its excluded entries never appear; the search
        fetches ``k + exclude.max_excluded`` candidates so the result is exact for a flat index.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = check_embeddings(queries, "query embeddings", dim=self.dim, unit_norm=self.unit_norm)
        if exclude is None:
            return self._faiss_search(q, k)
        fetch = min(self.ntotal, k + int(exclude.max_excluded))
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        indices = np.full((len(q), k), -1, dtype=np.int64)
        chunk = max(1, min(_SEARCH_CHUNK, _SEARCH_PAIRS // max(1, fetch)))
        for start in range(0, len(q), chunk):
            rows = np.arange(start, min(start + chunk, len(q)))
            s, i = self._faiss_search(q[rows], fetch)
            drop = (i < 0) | exclude.excluded(rows[:, None], np.maximum(i, 0))
            # A stable sort of the drop flags moves kept candidates to the front in score order.
            order = np.argsort(drop, axis=1, kind="stable")[:, :k]
            kept = ~np.take_along_axis(drop, order, axis=1)
            take = order.shape[1]
            scores[rows, :take] = np.where(kept, np.take_along_axis(s, order, axis=1), -np.inf)
            indices[rows, :take] = np.where(kept, np.take_along_axis(i, order, axis=1), -1)
        return scores, indices

    def _faiss_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(self.faiss_index, faiss.IndexHNSW):
            # HNSW returns at most efSearch results per query.
            self.faiss_index.hnsw.efSearch = max(self.faiss_index.hnsw.efSearch, k)
        scores, indices = self.faiss_index.search(q, k)
        indices = indices.astype(np.int64, copy=False)
        scores = np.where(indices < 0, -np.inf, scores).astype(np.float32)
        return scores, indices

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` (faiss format) atomically."""
        atomic_write(path, lambda p: faiss.write_index(self.faiss_index, str(p)))

    @classmethod
    def load(cls, path: str | Path, unit_norm: bool = True) -> EmbeddingIndex:
        """Read an index written by :meth:`save` (raises :class:`DataError` naming the file);
        ``unit_norm`` as in :meth:`build` (the faiss file does not record it)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "faiss index file not found")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as err:
            raise DataError(path, f"not a readable faiss index ({str(err).splitlines()[0]})") from err
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise DataError(path, "faiss index does not use the inner-product metric")
        return cls(index, unit_norm=unit_norm)
