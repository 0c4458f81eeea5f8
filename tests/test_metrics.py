"""Retrieval metrics on hand-made cases whose answers are known, and on the real KITTI 00 trajectory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import SHARED_DATA, require_shared_data
from retrieval_reference import brute_force_search

from liploc.console import table_lines
from liploc.evaluation.metrics import (
    TimeWindowExclusion,
    chance_hit_probability,
    evaluate_retrieval,
    one_percent_k,
    recall_at_k,
    score_retrieval,
    xy_from_poses,
)
from liploc.localization.index import l2_normalize
from liploc.localization.neighbours import count_positives_within, positives_within

KITTI_POSES = SHARED_DATA / "kitti-odometry-poses"


def line_db(n: int = 101) -> np.ndarray:
    """Database every 1 m along the x axis: entry i at (i, 0)."""
    return np.stack([np.arange(n, dtype=float), np.zeros(n)], axis=1)


def kitti00_lidar_xy() -> np.ndarray:
    """Ground-plane LiDAR positions of KITTI odometry 00: translation of inv(Tr) @ P_i @ Tr."""
    require_shared_data()
    poses = np.loadtxt(KITTI_POSES / "00.txt").reshape(-1, 3, 4)
    poses = np.concatenate([poses, np.tile([[[0.0, 0.0, 0.0, 1.0]]], (len(poses), 1, 1))], axis=1)
    calib = {}
    for line in (KITTI_POSES / "00_calib.txt").read_text().splitlines():
        key, values = line.split(":", 1)
        calib[key] = np.array(values.split(), dtype=float)
    tr = np.vstack([calib["Tr"].reshape(3, 4), [0.0, 0.0, 0.0, 1.0]])
    return xy_from_poses(np.linalg.inv(tr) @ poses @ tr)


# --- positives -------------------------------------------------------------------------------
def test_positives_within_a_line_is_inclusive_and_sorted() -> None:
    db = line_db()
    got = positives_within(np.array([[50.0, 0.0], [50.5, 3.0]]), db, radius_m=2.0)
    assert got[0].tolist() == [48, 49, 50, 51, 52]  # 2 m exactly is a positive
    assert got[1].tolist() == []  # 3 m off the line: nothing within 2 m


@pytest.mark.parametrize("layout", ["scattered", "vertical_line"])
def test_positives_match_brute_force(layout: str) -> None:
    rng = np.random.default_rng(3)
    if layout == "scattered":
        db = rng.uniform(0, 300, size=(700, 2))
        queries = rng.uniform(-20, 320, size=(450, 2))
    else:  # everything on one x: the sweep axis must cope
        db = np.stack([np.zeros(700), rng.uniform(0, 300, 700)], axis=1)
        queries = np.stack([rng.uniform(-5, 5, 450), rng.uniform(0, 300, 450)], axis=1)
    dist = np.sqrt(((queries[:, None, :] - db[None, :, :]) ** 2).sum(-1))
    counts = count_positives_within(queries, db, [25.0, 7.0])
    got = positives_within(queries, db, 25.0)
    for q in range(len(queries)):
        assert got[q].tolist() == np.flatnonzero(dist[q] <= 25.0).tolist()
    assert counts[0].tolist() == (dist <= 25.0).sum(1).tolist()
    assert counts[1].tolist() == (dist <= 7.0).sum(1).tolist()


def test_non_finite_positions_are_refused() -> None:
    with pytest.raises(ValueError, match="not finite"):
        positives_within(np.array([[np.nan, 0.0]]), line_db(), 5.0)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        positives_within(np.zeros((3, 3)), line_db(), 5.0)


# --- recall ----------------------------------------------------------------------------------
def test_retrieval_five_metres_away_is_right_at_10_m_and_wrong_at_3_m() -> None:
    db = line_db()
    query_xy = np.array([[50.0, 0.0]])
    retrieved = np.array([[55]])
    assert recall_at_k(retrieved, query_xy, db, [1], threshold_m=10.0) == {1: 1.0}
    assert recall_at_k(retrieved, query_xy, db, [1], threshold_m=3.0) == {1: 0.0}
    result = score_retrieval(retrieved, None, query_xy, db, thresholds_m=[10.0, 3.0], ks=[1], curve_k=1)
    assert result.at(10.0).success.tolist() == [True]
    assert result.at(3.0).success.tolist() == [False]
    assert result.top1_error_m.tolist() == pytest.approx([5.0])
    assert result.at(10.0).median_error_m == pytest.approx(5.0)


def test_recall_at_k_counts_a_hit_at_its_rank() -> None:
    db = line_db()
    query_xy = np.array([[10.0, 0.0], [80.0, 0.0]])
    # Query 0: the right entry (11) only at rank 3; query 1: never right; -1 = nothing retrieved.
    retrieved = np.array([[60, 70, 11, 90, -1], [10, 20, 30, 40, -1]])
    rec = recall_at_k(retrieved, query_xy, db, [1, 2, 3, 5, 10], threshold_m=5.0)
    assert rec == {1: 0.0, 2: 0.0, 3: 0.5, 5: 0.5, 10: 0.5}
    counted = np.array([True, False])
    assert recall_at_k(retrieved, query_xy, db, [3], 5.0, counted=counted) == {3: 1.0}


@pytest.mark.parametrize(
    ("db_size", "k"), [(4541, 45), (4071, 41), (250, 2), (350, 4), (150, 2), (149, 1), (49, 1), (1, 1)]
)
def test_one_percent_k_rounds_half_to_even(db_size: int, k: int) -> None:
    assert one_percent_k(db_size) == k


def test_recall_at_one_percent_uses_the_rounded_k() -> None:
    db = line_db(250)  # K = round(2.5) = 2
    query_xy = np.array([[0.0, 0.0]])
    hit_at_2 = np.array([[200, 1, 150]])
    hit_at_3 = np.array([[200, 150, 1]])
    r2 = score_retrieval(hit_at_2, None, query_xy, db, thresholds_m=[2.0], ks=[1], curve_k=3)
    r3 = score_retrieval(hit_at_3, None, query_xy, db, thresholds_m=[2.0], ks=[1], curve_k=3)
    assert r2.k_one_percent == 2
    assert r2.main.recall_one_percent == 1.0
    assert r3.main.recall_one_percent == 0.0
    assert r3.main.recall_curve.tolist() == [0.0, 0.0, 1.0]


def test_queries_without_positive_are_excluded_by_default_and_optionally_failures() -> None:
    db = line_db()
    query_xy = np.array([[20.0, 0.0], [40.0, 0.0], [500.0, 0.0]])  # the last has nothing near
    retrieved = np.array([[21], [90], [100]])
    kept = score_retrieval(retrieved, None, query_xy, db, thresholds_m=[5.0], ks=[1], curve_k=1)
    assert kept.main.num_without_positive == 1
    assert kept.main.counted.tolist() == [True, True, False]
    assert kept.main.recall[1] == pytest.approx(0.5)
    strict = score_retrieval(
        retrieved, None, query_xy, db, thresholds_m=[5.0], ks=[1], curve_k=1, exclude_no_positive=False
    )
    assert strict.main.num_counted == 3
    assert strict.main.recall[1] == pytest.approx(1 / 3)


def test_no_counted_query_gives_nan_not_an_error() -> None:
    result = score_retrieval(
        np.array([[3]]), None, np.array([[500.0, 0.0]]), line_db(), thresholds_m=[5.0], ks=[1], curve_k=1
    )
    assert math.isnan(result.main.recall[1]) and math.isnan(result.main.median_error_m)
    assert json.loads(json.dumps(result.to_dict()))["thresholds"][0]["recall"]["1"] is None


# --- chance level ----------------------------------------------------------------------------
def test_chance_level_is_the_hypergeometric_hit_probability() -> None:
    n = 101
    query_xy = np.array([[50.0, 0.0], [0.0, 0.0]])  # 11 and 6 positives within 5 m
    retrieved = np.zeros((2, 10), dtype=np.int64)
    result = score_retrieval(retrieved, None, query_xy, line_db(n), thresholds_m=[5.0], ks=[1, 5], curve_k=10)
    positives = [11, 6]
    assert result.main.num_positives.tolist() == positives
    assert result.main.chance[1] == pytest.approx(np.mean([p / n for p in positives]))
    for k in (5, 10):
        expected = np.mean([1 - math.comb(n - p, k) / math.comb(n, k) for p in positives])
        assert result.main.chance_curve[k - 1] == pytest.approx(expected)
    assert result.main.chance[5] == pytest.approx(result.main.chance_curve[4])


def test_chance_probability_saturates_and_stays_zero_without_positives() -> None:
    prob = chance_hit_probability(np.array([2, 0]), np.array([4, 4]), k_max=6)
    assert prob[0].tolist() == pytest.approx([0.5, 5 / 6, 1.0, 1.0, 1.0, 1.0])
    assert prob[1].tolist() == [0.0] * 6


# --- evaluate_retrieval with embeddings ------------------------------------------------------
def test_evaluate_retrieval_with_known_embeddings() -> None:
    rng = np.random.default_rng(0)
    db_xy = line_db(60)
    db_emb = l2_normalize(rng.normal(size=(60, 32)))
    targets = np.array([5, 30, 59, 12])  # each query's embedding is (nearly) that db entry's
    query_emb = l2_normalize(db_emb[targets] + 0.01 * rng.normal(size=(4, 32)))
    query_xy = np.array([[5.0, 0.0], [38.0, 0.0], [59.0, 4.0], [40.0, 0.0]])
    result = evaluate_retrieval(query_emb, db_emb, query_xy, db_xy, thresholds_m=[10.0, 5.0], ks=[1, 5])
    assert result.retrieved[:, 0].tolist() == targets.tolist()
    assert result.retrieved.shape == (4, 25)
    assert np.all(np.diff(result.scores, axis=1) <= 1e-6)  # best first
    # Errors 0, 8, 4 and 28 m.
    assert result.at(10.0).success.tolist() == [True, True, True, False]
    assert result.at(5.0).success.tolist() == [True, False, True, False]
    assert result.at(10.0).recall[1] == pytest.approx(0.75)
    assert result.at(5.0).median_error_m == pytest.approx(6.0)
    summary = json.loads(json.dumps(result.to_dict(per_query=True)))
    assert summary["thresholds"][0]["recall"]["1"] == pytest.approx(0.75)
    assert summary["per_query"]["retrieved"][1][0] == 30
    text = "\n".join(table_lines(result.table()))
    assert "75.0%" in text and "R@1% (K=1)" in text


def test_evaluate_retrieval_checks_lengths() -> None:
    emb = l2_normalize(np.eye(3))
    with pytest.raises(ValueError, match="query positions"):
        evaluate_retrieval(emb, emb, line_db(2), line_db(3))
    wrong = TimeWindowExclusion(np.zeros(2), np.zeros(3), 1.0)
    with pytest.raises(ValueError, match="2 query and 3 database timestamps for 3 queries"):
        evaluate_retrieval(emb, emb, line_db(3), line_db(3), exclude=wrong)
    result = evaluate_retrieval(emb, emb, line_db(3), line_db(3), info={"protocol": "same-sequence"})
    assert result.info == {"protocol": "same-sequence"}


# --- revisit protocol ------------------------------------------------------------------------
def out_and_back(n: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A drive along x for n s at 1 m/s (1 Hz) and back: positions, timestamps, embeddings.

    Embeddings encode the position plus a little noise of each pass, so the scan recorded with a
    query is always its most similar entry and the other pass at that place comes next.
    """
    x = np.concatenate([np.arange(n), np.arange(n)[::-1]]).astype(float)
    xy = np.stack([x, np.zeros_like(x)], axis=1)
    t = np.arange(2 * n, dtype=float)
    freqs = np.linspace(0.01, 0.3, 16)
    features = np.concatenate([np.cos(x[:, None] * freqs), np.sin(x[:, None] * freqs)], axis=1)
    rng = np.random.default_rng(1)
    return xy, t, l2_normalize(features + 0.05 * rng.normal(size=features.shape))


def test_revisit_excludes_the_same_time_scans_exactly() -> None:
    xy, t, emb = out_and_back()
    window = 10.0
    exclusion = TimeWindowExclusion(t, t, window)
    assert exclusion.max_excluded == 21
    plain = evaluate_retrieval(emb, emb, xy, xy, thresholds_m=[3.0], ks=[1])
    assert plain.retrieved[:, 0].tolist() == list(range(len(t)))  # itself, without exclusion
    revisit = evaluate_retrieval(emb, emb, xy, xy, thresholds_m=[3.0], ks=[1], exclude=exclusion)
    got = revisit.retrieved
    assert np.all(np.abs(t[got] - t[:, None]) > window)
    excluded = np.abs(t[:, None] - t[None, :]) <= window
    reference = brute_force_search(emb, emb, got.shape[1], excluded)
    assert got.tolist() == reference.tolist()
    # Near the turn-around the other pass within 3 m is at most 10 s away: at x the return pass
    # is at x' >= x - 3 taken at 199 - x', more than 10 s later only when x' < 189 - x, so x <= 95.
    no_revisit = revisit.main.num_positives == 0
    assert np.flatnonzero(no_revisit).tolist() == list(range(96, 104))
    assert revisit.main.recall[1] == pytest.approx(1.0)
    # Chance uses the database left to each query: N - excluded entries.
    pos, avail = revisit.main.num_positives, len(t) - exclusion.excluded_counts
    counted = revisit.main.counted
    assert revisit.main.chance[1] == pytest.approx(np.mean(pos[counted] / avail[counted]))


def test_revisit_only_within_the_same_sequence() -> None:
    t = np.array([0.0, 1.0, 2.0])
    exclusion = TimeWindowExclusion(t, t, 5.0, query_sequences=["a", "a", "b"], db_sequences=["a", "b", "b"])
    mask = exclusion.excluded(np.arange(3)[:, None], np.arange(3)[None, :])
    assert mask.tolist() == [[True, False, False], [True, False, False], [False, True, True]]
    assert exclusion.excluded_counts.tolist() == [1, 1, 2]


def test_past_only_exclusion_keeps_only_earlier_scans() -> None:
    xy, t, emb = out_and_back(50)
    exclusion = TimeWindowExclusion(t, t, 5.0, past_only=True)
    result = evaluate_retrieval(emb, emb, xy, xy, thresholds_m=[2.0], ks=[1], exclude=exclusion)
    valid = result.retrieved >= 0
    assert np.all(t[result.retrieved][valid] < (t[:, None] - 5.0).repeat(valid.shape[1], 1)[valid])
    # The outbound pass (first 50 s) has nothing before it; the return pass finds it.
    assert (result.main.num_positives[:50] == 0).all()
    assert (result.main.num_positives[60:] > 0).all()
    assert result.main.recall[1] == pytest.approx(1.0)


def test_kitti00_revisit_positives_appear_only_where_the_drive_returns() -> None:
    """KITTI 00 ends where it started: with a 30 s window the end finds the start, and the
    stretches driven once (e.g. frames 1000-1350) have no revisit at all."""
    xy = kitti00_lidar_xy()
    n = len(xy)
    assert n == 4541
    assert xy[100] == pytest.approx([84.3, 5.0], abs=0.1)  # the documented check of the conversion
    t = np.arange(n) / 10.0  # 10 Hz
    exclusion = TimeWindowExclusion(t, t, 30.0)
    assert exclusion.max_excluded == 601
    plain = count_positives_within(xy, xy, [10.0])[0]
    revisit = count_positives_within(xy, xy, [10.0], exclusion)[0]
    assert (plain > 0).all()  # every scan is its own positive without the exclusion
    assert (revisit[4440:] > 0).all()  # the return to the start
    assert (revisit[1000:1350] == 0).all()  # driven once

    # Oracle retrieval by position (nearest scan outside the window) for every 4th frame.
    queries = np.arange(0, n, 4)
    dist = np.sqrt(((xy[queries, None, :] - xy[None, :, :]) ** 2).sum(-1))
    dist[np.abs(t[queries, None] - t[None, :]) <= 30.0] = np.inf
    oracle = np.argsort(dist, axis=1)[:, :45]
    sub = TimeWindowExclusion(t[queries], t, 30.0)
    result = score_retrieval(oracle, None, xy[queries], xy, thresholds_m=[10.0], ks=[1, 5], exclude=sub)
    assert result.main.counted.tolist() == (revisit[queries] > 0).tolist()
    assert result.main.recall[1] == 1.0
    closing = queries >= 4440
    assert (t[queries[closing]] - t[oracle[closing, 0]] > 240).all()  # an earlier pass, minutes ago
    assert oracle[0, 0] > 4400  # frame 0 is revisited at the very end of the drive
    assert (np.abs(t[oracle[:, 0]] - t[queries]) > 30.0).all()

    # Past-only (loop closure): the first pass has nothing to close on, the return does.
    past = count_positives_within(xy, xy, [10.0], TimeWindowExclusion(t, t, 30.0, past_only=True))[0]
    assert (past[:200] == 0).all()
    assert (past[4440:] > 0).all()


def test_same_scan_exclusion_removes_only_the_querys_own_scan() -> None:
    from liploc.evaluation.metrics import SameScanExclusion

    xy = np.array([[0.0, 0.0], [5.0, 0.0], [30.0, 0.0]])
    db = np.eye(3, dtype=np.float32)
    # Own scan first for every query; then query 0 prefers scan 2 (30 m), query 1 scan 0 (5 m).
    queries = np.array([[0.9, 0.0, 0.4], [0.4, 0.9, 0.0], [0.0, 0.3, 0.9]], dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    kept = evaluate_retrieval(queries, db, xy, xy, thresholds_m=[10.0], ks=[1])
    assert kept.main.recall[1] == 1.0 and kept.main.num_counted == 3
    keys = [("00", i) for i in range(3)]
    removed = evaluate_retrieval(
        queries, db, xy, xy, thresholds_m=[10.0], ks=[1], exclude=SameScanExclusion(keys, keys)
    )
    assert removed.retrieved[:, 0].tolist() == [2, 0, 1]
    # Query 2 has no other scan within 10 m: not counted; of the others only query 1 is right.
    assert removed.main.num_without_positive == 1 and removed.main.num_counted == 2
    assert removed.main.recall[1] == 0.5
    assert removed.main.chance[1] == 0.5  # one positive among the 2 scans left to each query
    other = SameScanExclusion([("01", 0)], keys)  # a query of another sequence excludes nothing
    assert other.excluded_counts.tolist() == [0] and not other.excluded(np.array([0]), np.arange(3)).any()
