"""The faiss index over L2-normalised embeddings: exact search, exclusions, checks, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from retrieval_reference import brute_force_search as brute_force

from liploc.errors import DataError, EmbeddingError
from liploc.evaluation.metrics import TimeWindowExclusion
from liploc.localization.index import EmbeddingIndex, check_embeddings, l2_normalize


def random_embeddings(n: int, dim: int = 24, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, dim)))


def test_flat_search_is_exact_and_sorted() -> None:
    db, queries = random_embeddings(300), random_embeddings(40, seed=1)
    index = EmbeddingIndex.build(db, kind="flat")
    assert (index.ntotal, index.dim, index.kind, len(index)) == (300, 24, "flat", 300)
    scores, ids = index.search(queries, 7)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (40, 7)
    assert ids.tolist() == brute_force(queries, db, 7).tolist()
    expected = np.take_along_axis(queries @ db.T, ids, axis=1)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_k_beyond_the_database_pads_with_minus_one() -> None:
    index = EmbeddingIndex.build(random_embeddings(3), kind="flat")
    scores, ids = index.search(random_embeddings(2, seed=1), 5)
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert sorted(ids[0, :3].tolist()) == [0, 1, 2]


def test_search_with_exclusion_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    db, queries = random_embeddings(400, seed=3), random_embeddings(60, seed=4)
    db_t, q_t = rng.uniform(0, 100, 400), rng.uniform(0, 100, 60)
    exclusion = TimeWindowExclusion(q_t, db_t, window_s=8.0)
    excluded = np.abs(q_t[:, None] - db_t[None, :]) <= 8.0
    assert exclusion.max_excluded == excluded.sum(1).max()
    assert exclusion.excluded_counts.tolist() == excluded.sum(1).tolist()
    _, ids = EmbeddingIndex.build(db, kind="flat").search(queries, 10, exclude=exclusion)
    assert ids.tolist() == brute_force(queries, db, 10, excluded).tolist()


def test_exclusion_leaving_fewer_than_k_pads_the_row() -> None:
    db = random_embeddings(6)
    t = np.arange(6, dtype=float)
    exclusion = TimeWindowExclusion(t[:1], t, window_s=3.0)  # query at t=0 keeps only t=4, 5
    scores, ids = EmbeddingIndex.build(db, kind="flat").search(db[:1], 4, exclude=exclusion)
    assert sorted(ids[0, :2].tolist()) == [4, 5]
    assert ids[0, 2:].tolist() == [-1, -1] and np.isneginf(scores[0, 2:]).all()


def test_hnsw_finds_nearly_all_true_neighbours_and_respects_exclusion() -> None:
    db = random_embeddings(2000, dim=16, seed=5)
    queries = l2_normalize(db[:200] + 0.05 * np.random.default_rng(6).normal(size=(200, 16)))
    index = EmbeddingIndex.build(db, kind="hnsw")
    assert index.kind == "hnsw"
    _, ids = index.search(queries, 5)
    assert np.mean(ids[:, 0] == np.arange(200)) > 0.95
    t = np.arange(2000, dtype=float)
    _, ids = index.search(queries, 5, exclude=TimeWindowExclusion(t[:200], t, 2.0))
    assert (ids >= 0).all() and (np.abs(ids - np.arange(200)[:, None]) > 2).all()


def test_checks_name_the_problem() -> None:
    index = EmbeddingIndex.build(random_embeddings(10), kind="flat")
    with pytest.raises(EmbeddingError, match="dimension 8 does not match the index dimension 24"):
        index.search(random_embeddings(2, dim=8), 1)
    with pytest.raises(EmbeddingError, match="L2-normalised"):
        index.search(3.0 * random_embeddings(2), 1)
    bad = random_embeddings(2)
    bad[1, 0] = np.nan
    with pytest.raises(EmbeddingError, match="NaN"):
        index.search(bad, 1)
    with pytest.raises(EmbeddingError, match=r"\(N, D\)"):
        check_embeddings(np.zeros((2, 3, 4)), "x")
    with pytest.raises(EmbeddingError, match="zero"):
        l2_normalize(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="k must be"):
        index.search(random_embeddings(1), 0)
    assert check_embeddings(random_embeddings(1)[0], "one vector").shape == (1, 24)


def test_save_load_round_trip_and_bad_files(tmp_path: Path) -> None:
    db, queries = random_embeddings(50), random_embeddings(5, seed=9)
    index = EmbeddingIndex.build(db, kind="flat")
    index.save(tmp_path / "a.faiss")
    loaded = EmbeddingIndex.load(tmp_path / "a.faiss")
    assert loaded.search(queries, 4)[1].tolist() == index.search(queries, 4)[1].tolist()
    assert [p.name for p in tmp_path.iterdir()] == ["a.faiss"]  # no temporary file left
    (tmp_path / "junk.faiss").write_bytes(b"not an index")
    with pytest.raises(DataError, match=r"junk\.faiss: not a readable faiss index"):
        EmbeddingIndex.load(tmp_path / "junk.faiss")
    with pytest.raises(DataError, match=r"missing\.faiss: faiss index file not found"):
        EmbeddingIndex.load(tmp_path / "missing.faiss")
