"""Index kinds for large maps (issue 25): flat-fp16 and ivf-pq re-rank exactly, builds are
deterministic, ``auto`` chooses by size and memory, and an index that does not hold the map's
embeddings is caught."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from retrieval_reference import brute_force_search as brute_force

import liploc.localization.index as index_module
from liploc.errors import ConfigError, DataError, EmbeddingError
from liploc.evaluation.metrics import TimeWindowExclusion
from liploc.localization.index import (
    EXACT_MAX_SIZE,
    IVF_PQ_MIN_SIZE,
    EmbeddingIndex,
    choose_kind,
    index_memory_bytes,
    l2_normalize,
)


def clustered(n: int, dim: int, seed: int = 0, centres: int = 200, spread: float = 0.4) -> np.ndarray:
    """Unit vectors around ``centres`` random directions (a map of places seen many times)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    return l2_normalize(c[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, dim)))


def near(db: np.ndarray, count: int, noise: float, seed: int) -> np.ndarray:
    """Queries close to ``count`` database rows."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(db), count)
    return l2_normalize(db[rows] + noise * rng.normal(size=(count, db.shape[1])))


@pytest.fixture(scope="module")
def town() -> tuple[np.ndarray, np.ndarray, EmbeddingIndex]:
    """10,000 clustered 32-d embeddings, queries near them, and an ivf-pq index (no OPQ: faster)."""
    db = clustered(IVF_PQ_MIN_SIZE, 32)
    return db, near(db, 200, 0.1, seed=1), EmbeddingIndex.build(db, kind="ivf-pq", opq=False)


@pytest.mark.parametrize("kind", ["flat-fp16", "ivf-pq"])
def test_compressed_kinds_agree_with_brute_force_and_score_exactly(town, kind: str) -> None:
    db, queries, ivf_pq = town
    index = ivf_pq if kind == "ivf-pq" else EmbeddingIndex.build(db, kind=kind)
    assert index.kind == kind and index.ntotal == len(db) and index.params["shortlist"] == 100
    scores, ids = index.search(queries, 10)
    truth = brute_force(queries, db, 10)
    agreement = np.mean(ids[:, 0] == truth[:, 0])
    assert agreement == 1.0 if kind == "flat-fp16" else agreement >= 0.97
    # Re-ranked: the scores are the exact dot products of what was returned, best first.
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ db.T, ids, axis=1), atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_ivf_pq_returns_more_than_its_shortlist_when_asked(town) -> None:
    db, queries, index = town
    scores, ids = index.search(queries[:3], 150)  # k beyond the shortlist of 100
    assert ids.shape == (3, 150) and (ids >= 0).all() and len(set(ids[0].tolist())) == 150
    np.testing.assert_allclose(scores, np.take_along_axis(queries[:3] @ db.T, ids, axis=1), atol=1e-6)


def test_ivf_pq_respects_an_exclusion(town) -> None:
    db, queries, index = town
    rng = np.random.default_rng(3)
    db_t, q_t = rng.uniform(0, 1000, len(db)), rng.uniform(0, 1000, len(queries))
    exclusion = TimeWindowExclusion(q_t, db_t, window_s=20.0)
    excluded = np.abs(q_t[:, None] - db_t[None, :]) <= 20.0
    _, ids = index.search(queries, 5, exclude=exclusion)
    assert (ids >= 0).all()
    assert not np.take_along_axis(excluded, ids, axis=1).any()
    truth = brute_force(queries, db, 5, excluded)
    assert np.mean(ids[:, 0] == truth[:, 0]) >= 0.97


def test_small_exact_maps_pad_like_flat() -> None:
    db = clustered(5, 16)
    scores, ids = EmbeddingIndex.build(db, kind="flat-fp16").search(db[:2], 8)
    assert ids.shape == (2, 8) and (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert ids[:, 0].tolist() == [0, 1]


def test_ivf_pq_build_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same embeddings, same index bytes (the training sample and faiss's clusterings are seeded);
    OPQ included (with fewer iterations: faster, as deterministic). Another seed, another index.
    The training sample is made smaller than the map so that it is a draw."""
    monkeypatch.setattr(index_module, "OPQ_ITERATIONS", 3)
    monkeypatch.setattr(index_module, "IVF_TRAIN_POINTS", 4000)  # 8,192 = 64 per list of 128
    db = clustered(IVF_PQ_MIN_SIZE, 16, seed=4)

    def index_bytes(seed: int) -> bytes:
        index = EmbeddingIndex.build(db, kind="ivf-pq", seed=seed)
        assert index.params["opq"] is True
        return bytes(faiss.serialize_index(index.faiss_index))

    first = index_bytes(0)
    assert index_bytes(0) == first
    assert index_bytes(1) != first


def test_auto_chooses_by_size_and_memory_budget() -> None:
    d = 256
    assert choose_kind(50_000, d) == "flat"
    assert choose_kind(EXACT_MAX_SIZE, d) == "ivf-pq"
    assert choose_kind(1_000_000, d) == "ivf-pq"
    assert choose_kind(50_000, d, max_memory=50_000 * 4 * d) == "flat"
    assert choose_kind(50_000, d, max_memory=50_000 * 4 * d - 1) == "flat-fp16"
    assert choose_kind(50_000, d, max_memory=10_000_000) == "ivf-pq"
    assert index_memory_bytes("ivf-pq", 1_000_000, d) <= 80 * 1_000_000  # the budget
    with pytest.raises(ConfigError, match=r"smallest, ivf-pq, needs about"):
        choose_kind(1_000_000, d, max_memory=1_000_000)
    with pytest.raises(ConfigError, match="smallest, flat-fp16"):
        choose_kind(100, d, max_memory=1_000)  # too small for ivf-pq
    assert EmbeddingIndex.build(clustered(100, 16), kind="auto").kind == "flat"
    small = clustered(100, 16)
    assert EmbeddingIndex.build(small, kind="auto", max_memory=100 * 2 * 16).kind == "flat-fp16"
    with pytest.raises(ConfigError, match=r"a flat index over 100 embeddings .* more than the 3,200 allowed"):
        EmbeddingIndex.build(small, kind="flat", max_memory=100 * 2 * 16)
    with pytest.raises(ConfigError, match="at least 10,000 embeddings"):
        EmbeddingIndex.build(small, kind="ivf-pq")
    with pytest.raises(ValueError, match="unknown index kind 'ivf'"):
        EmbeddingIndex.build(small, kind="ivf")  # type: ignore[arg-type]


def test_compressed_kinds_need_the_exact_embeddings(tmp_path: Path) -> None:
    db = clustered(50, 16)
    index = EmbeddingIndex.build(db, kind="flat-fp16")
    with pytest.raises(EmbeddingError, match="re-scores against the exact embeddings"):
        EmbeddingIndex(index.faiss_index)
    with pytest.raises(EmbeddingError, match=r"float32 \(49, 16\) but the index holds 50 x 16"):
        EmbeddingIndex(index.faiss_index, vectors=db[:49])
    index.save(tmp_path / "i.faiss")
    with pytest.raises(DataError, match=r"i\.faiss: a flat-fp16 index re-scores"):
        EmbeddingIndex.load(tmp_path / "i.faiss")
    loaded = EmbeddingIndex.load(tmp_path / "i.faiss", vectors=db, shortlist=7)
    assert loaded.params == {"kind": "flat-fp16", "shortlist": 7}


@pytest.mark.parametrize("kind", ["flat", "flat-fp16", "hnsw", "ivf-pq"])
def test_save_load_keeps_kind_settings_and_answers(town, tmp_path: Path, kind: str) -> None:
    db, queries, ivf_pq = town
    index = ivf_pq if kind == "ivf-pq" else EmbeddingIndex.build(db[:2000], kind=kind)
    vectors = db[: index.ntotal]
    index.save(tmp_path / "i.faiss")
    np.save(tmp_path / "e.npy", vectors)
    mapped = np.load(tmp_path / "e.npy", mmap_mode="r")
    loaded = EmbeddingIndex.load(tmp_path / "i.faiss", vectors=mapped)
    assert loaded.kind == kind and loaded.params == index.params
    a, b = index.search(queries, 5), loaded.search(queries, 5)
    assert a[1].tolist() == b[1].tolist()
    np.testing.assert_array_equal(a[0], b[0])
    loaded.check_vectors(mapped)


@pytest.mark.parametrize("kind", ["flat", "flat-fp16", "hnsw", "ivf-pq"])
def test_an_index_of_other_embeddings_is_caught(town, kind: str) -> None:
    """The crafted map of the issue: an index over other (or scaled) vectors with a fresh checksum
    answered cosine scores of 45.2. Probing a few stored rows catches it."""
    db, _, ivf_pq = town
    db = db if kind == "ivf-pq" else db[:2000]
    index = ivf_pq if kind == "ivf-pq" else EmbeddingIndex.build(db, kind=kind)
    index.check_vectors(db)  # its own embeddings pass
    with pytest.raises(EmbeddingError, match=f"the {kind} index does not hold these embeddings"):
        index.check_vectors(clustered(len(db), db.shape[1], seed=9))
    scaled = EmbeddingIndex.build(45.2 * db[:2000], kind="flat", unit_norm=False)
    with pytest.raises(EmbeddingError, match=r"scores entry .* for the embedding of entry"):
        EmbeddingIndex(scaled.faiss_index).check_vectors(db[:2000])
    shuffled = db[np.random.default_rng(0).permutation(len(db))]
    with pytest.raises(EmbeddingError, match="does not hold these embeddings"):
        index.check_vectors(shuffled)
    with pytest.raises(EmbeddingError, match="the index holds"):
        index.check_vectors(db[:-1])


def test_check_of_unnormalised_embeddings_compares_dot_products() -> None:
    rng = np.random.default_rng(5)
    db = (rng.normal(size=(500, 16)) * rng.uniform(0.5, 3.0, size=(500, 1))).astype(np.float32)
    index = EmbeddingIndex.build(db, kind="flat", unit_norm=False)
    index.check_vectors(db)
    with pytest.raises(EmbeddingError, match="does not hold these embeddings"):
        index.check_vectors(2.0 * db)
