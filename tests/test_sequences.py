"""Sequence matching on hand-made similarity matrices: single-image top-1 is wrong, the path is right."""

from __future__ import annotations

import numpy as np
import pytest

from liploc.localization.sequences import (
    MapTrack,
    SequenceMatcher,
    SequenceSettings,
    same_world,
    sequence_search,
    stream_windows,
)


def straight_map(n: int, spacing_m: float = 1.0, start=(0.0, 0.0), name: str = "a", heading=(1.0, 0.0)):
    along = np.arange(n)[:, None] * spacing_m
    xy = np.asarray(start)[None, :] + along * np.asarray(heading)[None, :]
    return [name] * n, np.arange(n), xy


def window_similarity(n_map: int, truth: list[int], decoy: int, seed: int = 0) -> np.ndarray:
    """(1, L, N): noise, a clear but modest match on the true places, and a decoy that beats the
    true place for the newest image (so single-image top-1 is wrong)."""
    rng = np.random.default_rng(seed)
    sim = rng.normal(0.3, 0.05, (1, len(truth), n_map)).astype(np.float32)
    for t, place in enumerate(truth):
        if place >= 0:
            sim[0, t, place] += 0.12
    sim[0, -1, decoy] += 0.4
    return sim


def test_forward_path_beats_a_single_image_decoy() -> None:
    seqs, idx, xy = straight_map(60)
    matcher = SequenceMatcher(MapTrack.build(seqs, idx, xy), SequenceSettings(seq_len=8))
    truth = list(range(20, 28))
    sim = window_similarity(60, truth, decoy=50)
    assert sim[0, -1].argmax() == 50  # one image alone is fooled
    result = matcher.match(sim, with_paths=True)
    assert result.scores[0].argmax() == 27
    assert result.paths is not None and result.paths[0].tolist() == truth


def test_reverse_path_when_the_vehicle_drives_the_map_backwards() -> None:
    seqs, idx, xy = straight_map(60)
    matcher = SequenceMatcher(MapTrack.build(seqs, idx, xy), SequenceSettings(seq_len=8))
    truth = list(range(40, 32, -1))
    sim = window_similarity(60, truth, decoy=10, seed=1)
    assert sim[0, -1].argmax() == 10
    result = matcher.match(sim, with_paths=True)
    assert result.scores[0].argmax() == 33
    assert result.paths is not None and result.paths[0].tolist() == truth


def test_speed_change_within_the_window_without_odometry() -> None:
    # One map frame per image, then two: the path speeds up through the neighbouring speed ratios.
    seqs, idx, xy = straight_map(80)
    truth = [10, 11, 12, 13, 14, 16, 18, 20, 22, 24]
    settings = SequenceSettings(seq_len=len(truth))
    sim = window_similarity(80, truth, decoy=60, seed=2)
    assert sim[0, -1].argmax() == 60
    result = SequenceMatcher(MapTrack.build(seqs, idx, xy), settings).match(sim, with_paths=True)
    assert result.scores[0].argmax() == 24
    assert result.paths is not None and result.paths[0].tolist() == truth
    # A path held at one speed cannot follow the change: it leaves the true places.
    fixed = settings.model_copy(update={"speed_change": False})
    held = SequenceMatcher(MapTrack.build(seqs, idx, xy), fixed).match(sim, with_paths=True)
    assert held.paths is not None and held.paths[0].tolist() != truth


def test_odometry_aligns_irregular_steps_that_speed_ratios_cannot() -> None:
    seqs, idx, xy = straight_map(100)
    truth = [5, 6, 10, 11, 15, 16, 20, 21, 25, 26]
    travelled = np.diff(truth).astype(float)[None]  # metres: the map is 1 m per frame
    settings = SequenceSettings(seq_len=len(truth), odometry_noise=0.05)
    matcher = SequenceMatcher(MapTrack.build(seqs, idx, xy), settings)
    sim = window_similarity(100, truth, decoy=70, seed=3)
    with_odo = matcher.match(sim, travelled_m=travelled, with_paths=True)
    assert with_odo.scores[0].argmax() == 26
    assert with_odo.paths is not None and with_odo.paths[0].tolist() == truth


def test_map_of_two_drives_in_one_world_path_continues_across() -> None:
    # Drive b continues where drive a ends (same world frame): the window spans both.
    sa, ia, xa = straight_map(30, name="a")
    sb, ib, xb = straight_map(30, start=(30.0, 0.0), name="b")
    seqs, idx, xy = sa + sb, np.r_[ia, ib], np.vstack([xa, xb])
    truth = [25, 26, 27, 28, 29, 30, 31, 32, 33, 34]  # map rows: a's last five, b's first five
    sim = window_similarity(60, truth, decoy=8, seed=4)
    assert sim[0, -1].argmax() == 8
    settings = SequenceSettings(seq_len=len(truth), join_radius_m=1.5)
    one_world = MapTrack.build(seqs, idx, xy, join_radius_m=1.5, worlds={"a": "town", "b": "town"})
    assert len(one_world.link_src) > 0
    result = SequenceMatcher(one_world, settings).match(sim, with_paths=True)
    assert result.scores[0].argmax() == 34
    assert result.paths is not None
    path = result.paths[0]
    assert np.abs(path - np.array(truth)).max() <= 1  # the speed ratios leave a metre of play
    assert path[-5:].tolist() == truth[-5:] and {seqs[i] for i in path} == {"a", "b"}
    # Separate worlds (e.g. two KITTI odometry sequences): no path may jump between the drives.
    apart = MapTrack.build(seqs, idx, xy, join_radius_m=1.5)
    assert len(apart.link_src) == 0
    paths = SequenceMatcher(apart, settings).match(sim, with_paths=True).paths
    assert paths is not None
    drives = {seqs[i] for i in paths[0] if i >= 0}
    assert len(drives) == 1


def test_two_drives_of_the_map_in_opposite_directions() -> None:
    # Drive a covers x = 0..25 going +x; drive b covers x = 39..20 going -x, 0.5 m beside it. The
    # query drives +x from x = 18 to 32: along a, then along b backwards (the direction flips).
    sa, ia, xa = straight_map(26, name="a")
    sb, ib, xb = straight_map(20, start=(39.0, 0.5), name="b", heading=(-1.0, 0.0))
    xy = np.vstack([xa, xb])
    track = MapTrack.build(sa + sb, np.r_[ia, ib], xy, worlds={"a": "w", "b": "w"})
    assert track.link_flip.all() and len(track.link_flip) > 0
    truth = list(range(18, 26)) + [26 + (39 - x) for x in range(26, 33)]
    sim = window_similarity(46, truth, decoy=5, seed=5)
    assert sim[0, -1].argmax() == 5
    result = SequenceMatcher(track, SequenceSettings(seq_len=len(truth))).match(sim, with_paths=True)
    end = int(result.scores[0].argmax())
    assert end == truth[-1] and xy[end, 0] == 32.0
    assert result.paths is not None
    path = result.paths[0]
    assert np.abs(xy[path, 0] - xy[truth, 0]).max() <= 1.0
    names = sa + sb
    assert names[path[0]] == "a" and names[path[-1]] == "b" and path[-5:].tolist() == truth[-5:]


def test_stream_windows_pad_the_first_images_of_each_drive() -> None:
    windows, valid = stream_windows(["a", "a", "a", "b", "b"], 3)
    assert valid.tolist() == [
        [False, False, True],
        [False, True, True],
        [True, True, True],
        [False, False, True],
        [False, True, True],
    ]
    assert windows[2].tolist() == [0, 1, 2] and windows[4, 1:].tolist() == [3, 4]


def test_sequence_search_on_a_query_drive_opposite_to_the_map() -> None:
    """Embeddings: the query drive runs the map drive backwards; single images are often fooled."""
    rng = np.random.default_rng(6)
    n, dim = 80, 32
    place = rng.normal(size=(n, dim))
    db = place + 0.3 * rng.normal(size=(n, dim))
    truth = np.arange(n - 1, -1, -1)  # query i is at map place n-1-i
    queries = place[truth] + 2.2 * rng.normal(size=(n, dim))
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    seqs, idx, xy = straight_map(n)
    matcher = SequenceMatcher(MapTrack.build(seqs, idx, xy), SequenceSettings(seq_len=10))
    single_top1 = (queries @ db.T).argmax(axis=1)
    _, top = sequence_search(queries, db, matcher, k=1)
    single = np.mean(np.abs(single_top1 - truth) <= 2)
    seq = np.mean(np.abs(top[:, 0] - truth) <= 2)
    assert single < 0.7
    assert seq >= 0.9 and seq > single + 0.2
    # L = 1 is plain single-image retrieval.
    one = SequenceMatcher(MapTrack.build(seqs, idx, xy), SequenceSettings(seq_len=1))
    _, top1 = sequence_search(queries, db, one, k=1)
    assert (top1[:, 0] == single_top1).all()


def test_same_world_defaults_to_one_world_per_sequence() -> None:
    assert same_world("00", "00")
    assert not same_world("00", "01")
    assert same_world("00", "01", {"00": "town", "01": "town"})


def test_similarity_shape_is_checked() -> None:
    seqs, idx, xy = straight_map(10)
    matcher = SequenceMatcher(MapTrack.build(seqs, idx, xy))
    with pytest.raises(ValueError, match="similarity"):
        matcher.match(np.zeros((1, 3, 9)))
