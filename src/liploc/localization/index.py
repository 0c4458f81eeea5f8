"""Nearest-neighbour search over embeddings with faiss by inner product: the cosine similarity of
L2-normalised embeddings (liploc's models), or the raw dot product of un-normalised ones (the
paper's model, ``model.normalize: false``; ``unit_norm=False`` here).

The index answers ``search(queries, k)`` with the faiss conventions: scores and database row
indices of shape (Q, k), best first, rows padded with index -1 and score -inf when fewer than
``k`` database entries are available. An optional :class:`Exclusion` leaves chosen database
entries out per query (the ``revisit`` protocol); the search stays exact for the exact kinds.

Index kinds (resident bytes per entry for D = 256 in brackets):

- ``flat``: exact, ``IndexFlatIP`` (4 D = 1,024).
- ``flat-fp16``: every entry scanned in half precision (2 D = 512), the best
  :data:`RERANK_SHORTLIST` re-scored exactly.
- ``hnsw``: graph search over full-precision vectors, approximate (4 D + 8 M, about 1,300).
- ``ivf-pq``: OPQ rotation, inverted lists and product-quantised codes of D / 8 bytes (at most
  :data:`PQ_MAX_BYTES`; about 40 bytes with the list ids), approximate; the shortlist is
  re-scored exactly.

The compressed kinds (``flat-fp16``, ``ivf-pq``) keep no float32 copy: they re-score their
shortlist against the exact embeddings given as ``vectors`` (a map memory-maps its
``embeddings.npy``), so the top-k scores they return are exact dot products and only the choice
of the shortlist is approximate. Their training sample is a seeded draw and faiss's own
clusterings are seeded, so a build is deterministic: the same embeddings give the same index
bytes. ``auto`` (:func:`choose_kind`) picks by map size and an optional memory budget.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Protocol

import faiss
import numpy as np

from liploc.atomic import atomic_write
from liploc.errors import ConfigError, DataError, EmbeddingError

IndexKind = Literal["flat", "flat-fp16", "hnsw", "ivf-pq", "auto"]
INDEX_KINDS: tuple[str, ...] = ("flat", "flat-fp16", "hnsw", "ivf-pq")
"""The kinds an index can be (``auto`` chooses one of them)."""

EXACT_MAX_SIZE = 100_000
"""``auto`` searches maps below this many entries exhaustively (``flat``, or ``flat-fp16`` when a
memory budget asks), and uses ``ivf-pq`` from here on."""
IVF_PQ_MIN_SIZE = 10_000
"""Fewest entries ``ivf-pq`` trains on: its codebooks have 256 centroids per sub-vector, which
faiss wants about 39 training points each for."""
PQ_MAX_BYTES = 32
"""Most bytes of product-quantised code per entry (``ivf-pq``); fewer where D / 8 is smaller."""
HNSW_EF_SEARCH = 128
"""Candidates an ``hnsw`` search keeps (``efSearch``, recorded in the index): top-1 agreement with
the exact search on the town of ``benchmarks/map_scale.py`` at 100,000 scans was 0.83 with faiss's
16, 0.972 with 64, 0.997 with 128 (0.5 ms of one core per query)."""
RERANK_SHORTLIST = 100
"""Candidates the compressed kinds fetch per query (at least k) before the exact re-scoring."""
TRAIN_SEED = 0
"""Seed of the training sample and faiss's clusterings (``ivf-pq``)."""
OPQ_ITERATIONS = 25
OPQ_TRAIN_POINTS = 32_768
"""OPQ rotation training: 25 iterations on 32,768 points take about 24 s of one core at D = 256
(faiss's defaults, 50 on 65,536, take 87 s)."""
IVF_TRAIN_POINTS = 65_536
"""Training sample of ``ivf-pq`` (at least 64 points per inverted list)."""

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


RERANKED_KINDS = ("flat-fp16", "ivf-pq")
"""Kinds whose codes are approximate: their shortlist is re-scored against the exact embeddings."""
_RERANK_ROWS = 65_536  # most embedding rows gathered at once when re-scoring (bounds memory)
_ADD_CHUNK = 65_536  # rows added to an ivf-pq index per call (bounds the transformed copy)
_CHECK_TOLERANCE = {"flat": 1e-3, "hnsw": 1e-3, "flat-fp16": 2e-2, "ivf-pq": 0.1}
"""Largest deviation of the index's own scores from the exact dot products (median for ivf-pq,
whose codes are lossy), relative to the largest squared norm of the probed rows."""


def default_nlist(n: int) -> int:
    """Inverted lists of an ``ivf-pq`` index over ``n`` entries: the power of two nearest sqrt(n)
    (1,024 for a million), between 16 and 8,192."""
    return int(min(8192, max(16, 2 ** round(math.log2(math.sqrt(max(n, 1)))))))


def default_nprobe(nlist: int) -> int:
    """Inverted lists an ``ivf-pq`` search visits: an eighth of them, at least 32.

    Camera queries do not fall in the lists of their LiDAR neighbours as a map's own scans would:
    on the town of ``benchmarks/map_scale.py`` (100,000 scans, 256 lists) top-1 agreement with
    the exact search was 0.972 visiting 16 lists, 0.9975 visiting 32 and 1.0 visiting 64, whatever
    the shortlist (100 to 400); at 10,000 scans (128 lists) 0.986 at 16, 0.999 at 32."""
    return int(min(nlist, max(32, nlist // 8)))


def pq_bytes(dim: int) -> int:
    """Bytes of product-quantised code per entry for dimension ``dim``: sub-vectors of 8 values
    (faiss's clustering is slow below that), at most :data:`PQ_MAX_BYTES`, a divisor of ``dim``."""
    m = min(PQ_MAX_BYTES, max(1, dim // 8))
    while dim % m:
        m -= 1
    return m


def index_memory_bytes(kind: str, n: int, dim: int, hnsw_neighbors: int = 32) -> int:
    """Estimated resident bytes of an index of ``kind`` over ``n`` entries of dimension ``dim``
    (the index's own memory; the exact embeddings a compressed kind re-ranks with stay on disk)."""
    if kind == "flat":
        return 4 * dim * n
    if kind == "flat-fp16":
        return 2 * dim * n
    if kind == "hnsw":
        # Level 0 holds 2 M neighbour ids of 4 bytes; the upper levels add about 1/M of that.
        return (4 * dim + 8 * hnsw_neighbors + 24) * n
    if kind == "ivf-pq":
        nlist = default_nlist(n)
        codebooks = 4 * dim * dim + 4 * nlist * dim + 4 * 256 * dim  # OPQ, centroids, PQ
        return (pq_bytes(dim) + 8) * n + codebooks + 64 * nlist
    raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")


def choose_kind(n: int, dim: int, max_memory: int | None = None) -> str:
    """The kind ``auto`` builds for ``n`` entries of dimension ``dim``.

    Below :data:`EXACT_MAX_SIZE` entries the search is exhaustive: ``flat``, or ``flat-fp16`` when
    ``max_memory`` (bytes) does not hold ``flat``; from there on, or when neither fits, ``ivf-pq``.

    Raises:
        ConfigError: ``max_memory`` is smaller than the smallest index that can be built.
    """
    candidates = ["flat", "flat-fp16"] if n < EXACT_MAX_SIZE else []
    if n >= IVF_PQ_MIN_SIZE:
        candidates.append("ivf-pq")
    for kind in candidates:
        if max_memory is None or index_memory_bytes(kind, n, dim) <= max_memory:
            return kind
    smallest = min(candidates, key=lambda k: index_memory_bytes(k, n, dim))
    raise ConfigError(
        f"no index over {n:,} embeddings of dimension {dim} fits in {max_memory:,} bytes: the smallest, "
        f"{smallest}, needs about {index_memory_bytes(smallest, n, dim):,}"
    )


def kind_of(faiss_index: faiss.Index) -> str:
    """The liploc kind of a faiss index (raises :class:`EmbeddingError` for any other structure)."""
    if isinstance(faiss_index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(faiss_index, faiss.IndexFlat):
        return "flat"
    if isinstance(faiss_index, faiss.IndexScalarQuantizer):
        if faiss_index.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
            return "flat-fp16"
    elif isinstance(faiss_index, faiss.IndexIVFPQ):
        return "ivf-pq"
    elif isinstance(faiss_index, faiss.IndexPreTransform):
        inner = faiss.downcast_index(faiss_index.index)
        if isinstance(inner, faiss.IndexIVFPQ):
            return "ivf-pq"
    raise EmbeddingError(f"unsupported faiss index structure {type(faiss_index).__name__}")


class EmbeddingIndex:
    """A faiss inner-product index over float32 embeddings, L2-normalised unless ``unit_norm`` is
    False (then it ranks by the raw dot product, as the paper's model does).

    ``kind`` is one of :data:`INDEX_KINDS` (see the module docstring); the compressed ones
    (:data:`RERANKED_KINDS`) need the exact embeddings as ``vectors`` to re-score their shortlist
    of ``shortlist`` candidates, and return exact scores.
    """

    def __init__(
        self,
        faiss_index: faiss.Index,
        unit_norm: bool = True,
        vectors: np.ndarray | None = None,
        shortlist: int = RERANK_SHORTLIST,
    ) -> None:
        if faiss_index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise EmbeddingError("the faiss index must use the inner-product metric")
        self.faiss_index = faiss_index
        self.unit_norm = unit_norm
        self._kind = kind_of(faiss_index)
        if shortlist < 1:
            raise ValueError(f"shortlist must be >= 1, got {shortlist}")
        self.shortlist = int(shortlist)
        if vectors is not None:
            shape = (self.ntotal, self.dim)
            if tuple(vectors.shape) != shape or vectors.dtype != np.float32:
                raise EmbeddingError(
                    f"the exact embeddings are {vectors.dtype} {tuple(vectors.shape)} but the index "
                    f"holds {shape[0]} x {shape[1]} float32 entries"
                )
        elif self._kind in RERANKED_KINDS:
            raise EmbeddingError(f"a {self._kind} index re-scores against the exact embeddings: pass them")
        self.vectors = vectors
        """The exact (N, D) float32 embeddings (a memory map for a loaded map), or None."""

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        kind: IndexKind = "auto",
        hnsw_neighbors: int = 32,
        unit_norm: bool = True,
        *,
        max_memory: int | None = None,
        shortlist: int = RERANK_SHORTLIST,
        nlist: int | None = None,
        nprobe: int | None = None,
        opq: bool = True,
        seed: int = TRAIN_SEED,
    ) -> EmbeddingIndex:
        """Make an index holding ``embeddings`` ((N, D), L2-normalised unless ``unit_norm`` is
        False), row i = database entry i.

        Args:
            kind: one of :data:`INDEX_KINDS`, or ``auto`` (:func:`choose_kind`).
            max_memory: resident bytes the index may take (estimated by
                :func:`index_memory_bytes`); ``auto`` chooses within it, another kind that does
                not fit is refused.
            shortlist: candidates re-scored exactly per query (compressed kinds).
            nlist, nprobe: inverted lists and lists visited per query (``ivf-pq``; default
                :func:`default_nlist`, :func:`default_nprobe`).
            opq: rotate the embeddings (OPQ) before product quantisation (``ivf-pq``).
            seed: seed of the training sample and of faiss's clusterings (``ivf-pq``).

        The compressed kinds keep ``embeddings`` (as given: pass a memory map to keep it on disk)
        to re-score with.
        """
        x = check_embeddings(embeddings, "database embeddings", unit_norm=unit_norm)
        n, dim = x.shape
        if kind == "auto":
            kind = choose_kind(n, dim, max_memory)  # type: ignore[assignment]
        elif kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)} or auto")
        elif max_memory is not None and index_memory_bytes(kind, n, dim, hnsw_neighbors) > max_memory:
            raise ConfigError(
                f"a {kind} index over {n:,} embeddings of dimension {dim} needs about "
                f"{index_memory_bytes(kind, n, dim, hnsw_neighbors):,} bytes, more than the "
                f"{max_memory:,} allowed; choose another kind or auto"
            )
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "flat-fp16":
            index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_neighbors, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = HNSW_EF_SEARCH
        else:
            index = _trained_ivf_pq(x, nlist or default_nlist(n), nprobe, opq, seed)
        for start in range(0, n, _ADD_CHUNK):
            index.add(x[start : start + _ADD_CHUNK])
        # x shares the memory of a float32 memory map given as embeddings (no copy is made).
        return cls(index, unit_norm=unit_norm, vectors=x, shortlist=shortlist)

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
        """One of :data:`INDEX_KINDS`."""
        return self._kind

    @property
    def params(self) -> dict[str, Any]:
        """The kind and its search settings, as a map's manifest records them."""
        out: dict[str, Any] = {"kind": self._kind}
        if self._kind in RERANKED_KINDS:
            out["shortlist"] = self.shortlist
        if self._kind == "ivf-pq":
            ivf = faiss.downcast_index(faiss.extract_index_ivf(self.faiss_index))
            out.update(
                nlist=int(ivf.nlist),
                nprobe=int(ivf.nprobe),
                pq_bytes=int(ivf.pq.M),
                opq=isinstance(self.faiss_index, faiss.IndexPreTransform),
            )
        if self._kind == "hnsw":
            out["neighbors"] = int(self.faiss_index.hnsw.nb_neighbors(1))
            out["ef_search"] = int(self.faiss_index.hnsw.efSearch)
        return out

    def __len__(self) -> int:
        return self.ntotal

    def search(
        self, queries: np.ndarray, k: int, exclude: Exclusion | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores float32 (Q, k), indices int64 (Q, k)) of the k most similar entries.

        Rows are sorted by decreasing cosine similarity; where fewer than ``k`` entries are
        available the row is padded with index -1 and score -inf. With ``exclude``, row i of
        ``queries`` is query i of the exclusion and its excluded entries never appear; the search
        fetches ``k + exclude.max_excluded`` candidates so the result is exact for the exact kinds
        (the approximate ones fetch as many of their own best and filter those).
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

    def _raw_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's own answer: scores as its codes give them (approximate for compressed kinds)."""
        if isinstance(self.faiss_index, faiss.IndexHNSW):
            # HNSW returns at most efSearch results per query.
            self.faiss_index.hnsw.efSearch = max(self.faiss_index.hnsw.efSearch, k)
        scores, indices = self.faiss_index.search(q, k)
        return scores, indices.astype(np.int64, copy=False)

    def _faiss_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._kind in RERANKED_KINDS:
            _, candidates = self._raw_search(q, min(self.ntotal, max(k, self.shortlist)))
            return self._rerank(q, candidates, k)
        scores, indices = self._raw_search(q, k)
        scores = np.where(indices < 0, -np.inf, scores).astype(np.float32)
        return scores, indices

    def exact_scores(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """(Q, C) float32 dot products of queries ``q`` (Q, D) with the exact embeddings of the
        entries ``ids`` (Q, C); -inf where an id is -1."""
        assert self.vectors is not None
        out = np.full(ids.shape, -np.inf, dtype=np.float32)
        if ids.size == 0:
            return out
        step = max(1, _RERANK_ROWS // ids.shape[1])
        for start in range(0, len(ids), step):
            block = ids[start : start + step]
            valid = block >= 0
            rows = np.asarray(self.vectors[np.where(valid, block, 0).ravel()], dtype=np.float32)
            rows = rows.reshape(*block.shape, self.dim)
            dots = np.matmul(rows, q[start : start + step, :, None])[..., 0]
            out[start : start + step] = np.where(valid, dots, -np.inf)
        return out

    def _rerank(self, q: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        exact = self.exact_scores(q, candidates)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(exact, order, axis=1)
        indices = np.where(np.isneginf(scores), -1, np.take_along_axis(candidates, order, axis=1))
        if order.shape[1] < k:  # fewer entries than k
            pad = k - order.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            indices = np.pad(indices, ((0, 0), (0, pad)), constant_values=-1)
        return scores.astype(np.float32, copy=False), indices.astype(np.int64, copy=False)

    def check_vectors(self, vectors: np.ndarray, probes: int = 8) -> None:
        """Check that the index was built from ``vectors`` (the exact (N, D) embeddings): ``probes``
        rows spread over the map are searched, the index's own scores of what it returns must be
        the dot products of those entries (within the precision of its codes) and, for unit-norm
        embeddings, each probe must find itself. Costs ``probes`` searches.

        Raises:
            EmbeddingError: the index and the embeddings disagree, saying how.
        """
        n = self.ntotal
        if tuple(vectors.shape) != (n, self.dim):
            raise EmbeddingError(
                f"the index holds {n} x {self.dim} entries but the embeddings are {tuple(vectors.shape)}"
            )
        if n == 0:
            return
        rows = np.unique(np.linspace(0, n - 1, min(probes, n)).round().astype(np.int64))
        x = np.ascontiguousarray(vectors[rows], dtype=np.float32)
        fetch = min(n, self.shortlist if self._kind in RERANKED_KINDS else 10)
        raw, ids = self._raw_search(x, fetch)
        held = self.vectors
        self.vectors = vectors
        try:
            exact = self.exact_scores(x, ids)
        finally:
            self.vectors = held
        valid = ids >= 0
        scale = max(1.0, float(np.max(np.sum(x.astype(np.float64) ** 2, axis=1))))
        errors = np.abs(raw.astype(np.float64) - exact)[valid]
        error = float(np.median(errors) if self._kind == "ivf-pq" else np.max(errors, initial=0.0))
        if not np.all(np.isfinite(raw[valid])) or error > _CHECK_TOLERANCE[self._kind] * scale:
            worst = int(np.argmax(np.abs(np.where(valid, raw, 0) - np.where(valid, exact, 0))))
            r, c = divmod(worst, ids.shape[1])
            raise EmbeddingError(
                f"the {self._kind} index does not hold these embeddings: it scores entry {ids[r, c]} "
                f"{float(raw[r, c]):.4g} for the embedding of entry {rows[r]}, whose dot product with "
                f"it is {float(exact[r, c]):.4g}"
            )
        if self.unit_norm:
            own = np.sum(x * x, axis=1)
            found = (ids == rows[:, None]).any(axis=1) | (np.max(exact, axis=1) >= own - 1e-5)
            needed = len(rows) if self._kind in ("flat", "flat-fp16") else math.ceil(0.75 * len(rows))
            if int(found.sum()) < needed:
                lost = rows[~found].tolist()
                raise EmbeddingError(
                    f"the {self._kind} index does not hold these embeddings: entries {lost} do not "
                    "find themselves"
                )

    def extended(self, vectors: np.ndarray) -> EmbeddingIndex:
        """A new index holding this one's entries and the rows of ``vectors`` beyond them.

        ``vectors``: the exact embeddings of all entries, this index's first. The exhaustive kinds
        are rebuilt over them (the same index as a build of the whole); ``hnsw`` and ``ivf-pq``
        add the new rows to a copy (``ivf-pq`` keeps the codebooks it was trained with). This
        index is left as it is.
        """
        x = check_embeddings(vectors, "map embeddings", dim=self.dim, unit_norm=self.unit_norm)
        if len(x) < self.ntotal:
            raise EmbeddingError(f"{len(x)} embeddings cannot extend an index of {self.ntotal}")
        if self._kind in ("flat", "flat-fp16"):
            return EmbeddingIndex.build(x, self._kind, unit_norm=self.unit_norm, shortlist=self.shortlist)  # type: ignore[arg-type]
        # A copy through bytes owns its storage (a loaded index may view a memory-mapped file).
        index = faiss.deserialize_index(faiss.serialize_index(self.faiss_index))
        for start in range(self.ntotal, len(x), _ADD_CHUNK):
            index.add(x[start : start + _ADD_CHUNK])
        return EmbeddingIndex(index, unit_norm=self.unit_norm, vectors=x, shortlist=self.shortlist)

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` (faiss format) atomically."""
        atomic_write(path, lambda p: faiss.write_index(self.faiss_index, str(p)))

    @classmethod
    def load(
        cls,
        path: str | Path,
        unit_norm: bool = True,
        vectors: np.ndarray | None = None,
        shortlist: int = RERANK_SHORTLIST,
        mmap: bool = True,
    ) -> EmbeddingIndex:
        """Read an index written by :meth:`save` (raises :class:`DataError` naming the file).

        ``unit_norm`` as in :meth:`build` (the faiss file does not record it); ``vectors``: the
        exact embeddings (required by the compressed kinds); ``shortlist`` as in :meth:`build`.
        With ``mmap`` the codes of the exhaustive kinds (``flat``, ``flat-fp16``) stay in the
        file, memory-mapped, instead of being copied into memory.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "faiss index file not found")
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        except RuntimeError as err:
            raise DataError(path, f"not a readable faiss index ({str(err).splitlines()[0]})") from err
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise DataError(path, "faiss index does not use the inner-product metric")
        try:
            return cls(index, unit_norm=unit_norm, vectors=vectors, shortlist=shortlist)
        except EmbeddingError as err:
            raise DataError(path, str(err)) from err


def _trained_ivf_pq(x: np.ndarray, nlist: int, nprobe: int | None, opq: bool, seed: int) -> faiss.Index:
    """An empty (OPQ,) IVF, PQ index trained for ``x`` on a seeded sample of its rows with seeded
    clusterings, so that the same ``x`` gives the same index."""
    n, dim = x.shape
    if n < IVF_PQ_MIN_SIZE:
        raise ConfigError(
            f"an ivf-pq index needs at least {IVF_PQ_MIN_SIZE:,} embeddings to train, got {n:,}; "
            "use flat or flat-fp16"
        )
    m = pq_bytes(dim)
    nlist = int(min(nlist, n // 39))  # faiss's clustering wants 39 points per centroid
    spec = f"{f'OPQ{m},' if opq else ''}IVF{nlist},PQ{m}"
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    if opq:
        rotation = faiss.downcast_VectorTransform(index.chain.at(0))
        rotation.niter = OPQ_ITERATIONS
        rotation.max_train_points = OPQ_TRAIN_POINTS  # subsampled by faiss with a fixed seed
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.cp.seed = seed
    ivf.pq.cp.seed = seed
    ivf.do_polysemous_training = False  # only for Hamming filtering, which we do not use; 50 s
    ivf.nprobe = min(nlist, nprobe or default_nprobe(nlist))
    size = min(n, max(IVF_TRAIN_POINTS, 64 * nlist))
    sample = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    index.train(np.ascontiguousarray(x[sample]))
    return index
