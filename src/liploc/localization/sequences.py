"""Sequence matching: localize the newest of the last L camera images by the best path through the map.

One image is often matched to a look-alike place; consecutive images agree on the right one. Given
the similarities of the last L query images to a map whose scans are ordered along their drives,
every map place is scored by the best path through the map that ends there:

- a path follows one drive of the map, forwards or backwards (the vehicle may pass the other way);
- between two query images it advances along the drive by the *distance travelled*: the odometry's
  distance (with a tolerance for its noise), or, without odometry, the map's frame spacing times
  one of a set of speed ratios (with a tolerance that absorbs speed changes within the window);
- it may continue on another drive only where the two pass within ``join_radius_m`` of each other
  and lie in one world (one coordinate frame, see :func:`same_world`);
- its score is the mean, over the images, of the image's similarity to the path's place, each
  query's similarities normalised first (z-score over the map), so that an image that looks like
  everything counts no more than a distinctive one.

The best path is found by dynamic programming (max-plus along the window), vectorised over map
places, directions, speed ratios and a batch of queries. The newest image's pose is the path's end.
Where the window runs off the end of a drive the missing steps count as neutral (the mean
similarity), and a window shorter than L (the first images of a drive) is scored with what it has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

_NEUTRAL = 0.0  # the per-query mean similarity after z-normalisation: "no evidence"
_DRIVE_GAP_M = 1.0e7  # along-map coordinate gap between drives: no step window spans two drives


class SequenceSettings(BaseModel):
    """How sequences are matched (``liploc evaluate --seq-len``, ``liploc localize --sequence``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq_len: int = Field(10, ge=1)
    """Images per window (L), the newest included; 1 is single-image retrieval."""
    speed_ratios: tuple[float, ...] = (0.5, 0.7, 1.0, 1.4, 2.0)
    """Without odometry: candidate ratios of query speed to map speed (map frames per query frame)."""
    speed_tolerance: float = Field(0.25, ge=0)
    """Without odometry: each step may differ from ratio x spacing by this fraction."""
    speed_change: bool = True
    """Without odometry: a path may move to the next speed ratio up or down between two images
    (the vehicle speeds up or slows down within the window)."""
    odometry_noise: float = Field(0.1, ge=0)
    """With odometry: relative noise (1 sigma) of the travelled distances; steps tolerate 2 sigma.
    ``liploc evaluate --odometry`` also simulates odometry with this noise from the true poses."""
    min_tolerance_m: float | None = Field(None, ge=0)
    """Smallest tolerance of a step in metres (default: half the map's frame spacing)."""
    join_radius_m: float = Field(3.0, ge=0)
    """Paths may switch between drives of one world where they pass within this distance."""
    normalise: bool = True
    """Z-score each query's similarities over the map before combining them."""


def same_world(sequence_a: str, sequence_b: str, worlds: Mapping[str, str] | None = None) -> bool:
    """Whether two sequences' poses are in one coordinate frame (so that their places can be compared).

    ``worlds`` maps sequence names to world-frame ids (a synthetic town: one id for all its drives).
    Without it each sequence is its own world, which is what KITTI odometry sequences are.
    """
    if sequence_a == sequence_b:
        return True
    if worlds is None:
        return False
    return worlds.get(sequence_a, sequence_a) == worlds.get(sequence_b, sequence_b)


@dataclass(frozen=True, eq=False)
class MapTrack:
    """The map's places ordered along their drives: where each lies along its drive and which meet.

    Attributes:
        order: (N,) map rows in track order (by drive, then frame index).
        rank: (N,) position of each map row in track order (inverse of ``order``).
        along_m: (N,) in track order: distance along the drive plus a large per-drive offset, so
            that one sorted coordinate holds every drive and no step window spans two drives.
        heading: (N, 2) in track order: unit direction of travel with increasing frame index.
        spacing_m: median distance between consecutive places of a drive.
        link_src, link_dst: track positions of places on different drives of one world that lie
            within the join radius (both ways).
        link_flip: True where the two drives run opposite ways at the link (direction flips).
    """

    order: np.ndarray
    rank: np.ndarray
    along_m: np.ndarray
    heading: np.ndarray
    spacing_m: float
    link_src: np.ndarray
    link_dst: np.ndarray
    link_flip: np.ndarray

    @classmethod
    def build(
        cls,
        sequences: Sequence[str],
        frame_indices: Sequence[int] | np.ndarray,
        xy: np.ndarray,
        *,
        join_radius_m: float = 3.0,
        worlds: Mapping[str, str] | None = None,
    ) -> MapTrack:
        """Order map places along their drives (``sequences``: the drive of each place)."""
        xy = np.asarray(xy, dtype=np.float64)
        n = len(xy)
        if len(sequences) != n or len(frame_indices) != n:
            raise ValueError("sequences, frame indices and positions must have one entry per map place")
        if n == 0:
            raise ValueError("the map has no place")
        names = sorted(set(sequences))
        drive = np.array([names.index(s) for s in sequences], dtype=np.int64)
        order = np.lexsort((np.asarray(frame_indices, dtype=np.int64), drive))
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        d_sorted, xy_sorted = drive[order], xy[order]
        step = np.linalg.norm(np.diff(xy_sorted, axis=0), axis=1)
        same = d_sorted[1:] == d_sorted[:-1]
        along = np.zeros(n)
        along[1:] = np.cumsum(np.where(same, step, 0.0))
        # Restart each drive at its own offset, far beyond any step.
        starts = np.flatnonzero(np.r_[True, ~same])
        along -= np.repeat(along[starts], np.diff(np.r_[starts, n]))
        along += d_sorted * (_DRIVE_GAP_M + along.max(initial=0.0))
        spacing = float(np.median(step[same])) if same.any() else 1.0
        heading = _headings(xy_sorted, d_sorted)
        src, dst, flip = _links(xy_sorted, d_sorted, heading, names, worlds, join_radius_m)
        return cls(order, rank, along, heading, max(spacing, 1e-6), src, dst, flip)

    def __len__(self) -> int:
        return len(self.order)


def _headings(xy: np.ndarray, drive: np.ndarray) -> np.ndarray:
    """Unit direction of increasing frame index at each place (central differences within a drive)."""
    n = len(xy)
    prev = np.arange(n) - 1
    nxt = np.arange(n) + 1
    prev[0], nxt[-1] = 0, n - 1
    prev = np.where(drive[prev] == drive, prev, np.arange(n))
    nxt = np.where(drive[np.minimum(nxt, n - 1)] == drive, nxt, np.arange(n))
    d = xy[nxt] - xy[prev]
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    return np.where(norm > 0, d / np.maximum(norm, 1e-12), 0.0)


def _links(
    xy: np.ndarray,
    drive: np.ndarray,
    heading: np.ndarray,
    names: list[str],
    worlds: Mapping[str, str] | None,
    radius_m: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    empty = np.zeros(0, np.int64)
    if radius_m <= 0 or len(names) < 2:
        return empty, empty, np.zeros(0, bool)
    from liploc.localization.neighbours import positives_within

    world_of = np.array([(worlds or {}).get(s, s) if worlds else s for s in names])
    near = positives_within(xy, xy, radius_m)
    src = np.repeat(np.arange(len(xy)), [len(p) for p in near])
    dst = np.concatenate(near) if near else empty
    keep = (drive[src] != drive[dst]) & (world_of[drive[src]] == world_of[drive[dst]])
    src, dst = src[keep], dst[keep]
    # Only the nearest place of each other drive: a link to any place within the radius would let
    # a path jump back or ahead along the street for free.
    dist = np.linalg.norm(xy[src] - xy[dst], axis=1)
    first = np.lexsort((dist, drive[dst], src))
    pair = np.stack([src[first], drive[dst][first]], axis=1)
    nearest = first[np.r_[True, np.any(pair[1:] != pair[:-1], axis=1)]] if len(first) else first
    src, dst = src[nearest], dst[nearest]
    cos = np.sum(heading[src] * heading[dst], axis=1)
    # Drives crossing at a junction (|cos| small) do not continue into each other.
    aligned = np.abs(cos) >= np.cos(np.deg2rad(45.0))
    return src[aligned], dst[aligned], cos[aligned] < 0


def normalise_similarities(sim: np.ndarray) -> np.ndarray:
    """Z-score each row (one query's similarities to the map) over the map; constant rows become 0."""
    sim = np.asarray(sim, dtype=np.float32)
    mean = sim.mean(axis=-1, keepdims=True)
    std = sim.std(axis=-1, keepdims=True)
    return (sim - mean) / np.where(std > 1e-8, std, 1.0)


@dataclass(frozen=True, eq=False)
class SequenceMatch:
    """The best paths of a batch of query windows.

    Attributes:
        scores: (B, N) score of each map place (map row order) as the end of the best path:
            the mean normalised similarity along it (-inf for places excluded for the query).
        paths: (B, L) map rows of the best path's places, oldest image first (-1 where the window
            has no image or the path ran off its drive); only when asked for, else None.
    """

    scores: np.ndarray
    paths: np.ndarray | None = None


class SequenceMatcher:
    """Scores map places by the best path of the last L query images (see the module docstring)."""

    def __init__(self, track: MapTrack, settings: SequenceSettings | None = None) -> None:
        self.track = track
        self.settings = settings or SequenceSettings()
        s = self.settings
        self.min_tol_m = 0.5 * track.spacing_m if s.min_tolerance_m is None else s.min_tolerance_m

    def match(
        self,
        similarity: np.ndarray,
        *,
        travelled_m: np.ndarray | None = None,
        frame_gaps: np.ndarray | None = None,
        valid: np.ndarray | None = None,
        excluded: np.ndarray | None = None,
        with_paths: bool = False,
    ) -> SequenceMatch:
        """Score every map place as the end of the best path of each window.

        Args:
            similarity: (B, L, N) cosine similarities of each window's images (oldest first, the
                newest last) to the map places (map row order).
            travelled_m: (B, L-1) odometry: metres travelled between consecutive images. None:
                no odometry, steps from the speed ratios.
            frame_gaps: (B, L-1) without odometry: frames between consecutive images (default 1).
            valid: (B, L) False for missing images (a window shorter than L, padded at the front).
            excluded: (B, N) True for map places the query may not retrieve (revisit protocol):
                they score -inf at the path's end and count as neutral along it.
            with_paths: also return each best path (back-tracked; a little slower).
        """
        sim = np.asarray(similarity, dtype=np.float32)
        if sim.ndim != 3 or sim.shape[2] != len(self.track):
            raise ValueError(f"similarity must be (B, L, {len(self.track)}), got {sim.shape}")
        b, length, n = sim.shape
        valid = np.ones((b, length), bool) if valid is None else np.asarray(valid, bool)
        if self.settings.normalise:
            sim = normalise_similarities(sim)
        sim = np.where(valid[:, :, None], sim, _NEUTRAL)
        if excluded is not None:
            sim = np.where(np.asarray(excluded, bool)[:, None, :], _NEUTRAL, sim)
        sim = sim[:, :, self.track.order]  # track order from here on
        steps, tols = self._steps(b, length, travelled_m, frame_gaps)  # (B, L-1, R)
        dirs = np.array([1.0, -1.0])
        lanes_dir = np.repeat(dirs, steps.shape[2])  # lane = (direction, ratio)
        lanes_ratio = np.tile(np.arange(steps.shape[2]), 2)
        n_lanes = len(lanes_dir)

        value = np.broadcast_to(sim[:, 0, None, :], (b, n_lanes, n)).astype(np.float32)
        back: list[tuple[np.ndarray, np.ndarray]] = []
        # Without odometry every window steps alike: the step windows are computed once.
        uniform = steps.size > 0 and bool(np.all(steps == steps[:1, :1]) and np.all(tols == tols[:1, :1]))
        bounds: tuple[np.ndarray, np.ndarray] | None = None
        for t in range(1, length):
            src_lane, src_pos, value = self._link(value, lanes_dir, with_paths)
            if self.settings.speed_change and steps.shape[2] > 1:
                src_lane, src_pos, value = _switch_speed(value, src_lane, src_pos, steps.shape[2])
            if bounds is None or not uniform:
                rows = slice(0, 1) if uniform else slice(None)
                shift = lanes_dir[None, :, None] * steps[rows, t - 1, lanes_ratio][:, :, None]
                tol = tols[rows, t - 1, lanes_ratio][:, :, None]
                centre = self.track.along_m[None, None, :] - shift
                bounds = _window_bounds(self.track.along_m, centre - tol, centre + tol)
            best, arg = _window_max(value, *bounds, want_arg=with_paths)
            if with_paths:
                assert src_lane is not None and src_pos is not None and arg is not None
                lane_idx = np.broadcast_to(np.arange(n_lanes)[None, :, None], arg.shape)
                has = arg >= 0
                argc = np.maximum(arg, 0)
                bi = np.arange(b)[:, None, None]
                back.append(
                    (
                        np.where(has, src_lane[bi, lane_idx, argc], -1),
                        np.where(has, src_pos[bi, lane_idx, argc], -1),
                    )
                )
            value = best + sim[:, t, None, :]
        counts = np.maximum(valid.sum(axis=1), 1).astype(np.float32)
        lane_best = value.argmax(axis=1)  # (B, N)
        end_scores = np.take_along_axis(value, lane_best[:, None, :], axis=1)[:, 0] / counts[:, None]
        scores = np.empty_like(end_scores)
        scores[:, self.track.order] = end_scores
        if excluded is not None:
            scores = np.where(np.asarray(excluded, bool), -np.inf, scores)
        paths = None
        if with_paths:
            paths = self._backtrack(scores, lane_best, back, valid)
        return SequenceMatch(scores, paths)

    def _steps(
        self, b: int, length: int, travelled_m: np.ndarray | None, frame_gaps: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, L-1, R) step lengths along the map and their tolerances, one column per speed ratio."""
        s = self.settings
        if travelled_m is not None:
            dist = np.asarray(travelled_m, dtype=np.float64).reshape(b, max(length - 1, 0), 1)
            tol = np.maximum(self.min_tol_m, 2.0 * s.odometry_noise * dist)
            return dist, tol
        gaps = (
            np.ones((b, max(length - 1, 0)))
            if frame_gaps is None
            else np.asarray(frame_gaps, dtype=np.float64).reshape(b, max(length - 1, 0))
        )
        ratios = np.asarray(s.speed_ratios, dtype=np.float64)
        dist = gaps[:, :, None] * ratios[None, None, :] * self.track.spacing_m
        tol = np.maximum(self.min_tol_m, s.speed_tolerance * dist)
        return dist, tol

    def _link(
        self, value: np.ndarray, lanes_dir: np.ndarray, with_paths: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
        """Let paths continue onto a close drive of the same world (direction kept in the world).

        Returns the source lane and place of each (lane, place) value (None unless ``with_paths``)
        and the values.
        """
        b, n_lanes, n = value.shape
        src_lane = src_pos = None
        if with_paths:
            src_lane = np.broadcast_to(np.arange(n_lanes)[None, :, None], value.shape).copy()
            src_pos = np.broadcast_to(np.arange(n)[None, None, :], value.shape).copy()
        tr = self.track
        if not len(tr.link_src):
            return src_lane, src_pos, value
        half = n_lanes // 2
        out = value.copy()
        rows = np.arange(b)[:, None]
        for lane in range(n_lanes):
            for flip in (False, True):
                sel = tr.link_flip == flip
                if not sel.any():
                    continue
                to_lane = (lane + half) % n_lanes if flip else lane
                s, d = tr.link_src[sel], tr.link_dst[sel]
                cand = value[:, lane, s]  # (B, links)
                best = np.full((b, n), -np.inf, np.float32)
                np.maximum.at(best, (rows, d[None, :]), cand)  # several links may share a destination
                better = best > out[:, to_lane]
                if src_lane is not None and src_pos is not None and better.any():
                    hit_b, hit_m = np.nonzero(better[:, d] & (cand == best[:, d]))
                    src_pos[hit_b, to_lane, d[hit_m]] = s[hit_m]
                    src_lane[hit_b, to_lane, d[hit_m]] = lane
                out[:, to_lane] = np.where(better, best, out[:, to_lane])
        return src_lane, src_pos, out

    def _backtrack(
        self,
        scores: np.ndarray,
        lane_best: np.ndarray,
        back: list[tuple[np.ndarray, np.ndarray]],
        valid: np.ndarray,
    ) -> np.ndarray:
        b, length = valid.shape
        paths = np.full((b, length), -1, np.int64)
        for bi in range(b):
            end = int(np.argmax(scores[bi]))
            pos = int(self.track.rank[end])
            lane = int(lane_best[bi, pos])
            for t in range(length - 1, -1, -1):
                if pos < 0:
                    break
                if valid[bi, t]:
                    paths[bi, t] = self.track.order[pos]
                if t == 0:
                    break
                lanes, positions = back[t - 1]
                lane, pos = int(lanes[bi, lane, pos]), int(positions[bi, lane, pos])
        return paths


def _switch_speed(
    value: np.ndarray, src_lane: np.ndarray | None, src_pos: np.ndarray | None, n_ratios: int
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Each lane also takes the value of the next slower and faster ratio of the same direction."""
    b, n_lanes, n = value.shape
    if src_lane is None or src_pos is None:
        v = value.reshape(b, n_lanes // n_ratios, n_ratios, n)  # (B, direction, ratio, N)
        out = v.copy()
        np.maximum(out[:, :, 1:], v[:, :, :-1], out=out[:, :, 1:])
        np.maximum(out[:, :, :-1], v[:, :, 1:], out=out[:, :, :-1])
        return None, None, out.reshape(value.shape)
    out, lanes, pos = value.copy(), src_lane.copy(), src_pos.copy()
    for lane in range(n_lanes):
        first = (lane // n_ratios) * n_ratios  # lanes of one direction are contiguous
        for other in (lane - 1, lane + 1):
            if first <= other < first + n_ratios:
                better = value[:, other] > out[:, lane]
                out[:, lane] = np.where(better, value[:, other], out[:, lane])
                lanes[:, lane] = np.where(better, src_lane[:, other], lanes[:, lane])
                pos[:, lane] = np.where(better, src_pos[:, other], pos[:, lane])
    return lanes, pos, out


def _window_bounds(coord: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First place and number of places with ``lo <= coord <= hi`` (``coord`` sorted)."""
    first = np.searchsorted(coord, lo.ravel(), side="left").reshape(lo.shape)
    stop = np.searchsorted(coord, hi.ravel(), side="right").reshape(hi.shape)
    return first, stop - first


def _window_max(
    value: np.ndarray, first: np.ndarray, width: np.ndarray, want_arg: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Max of ``value`` over each window of places (``first``, ``width``: from :func:`_window_bounds`).

    Returns the max (neutral where the window holds no place: the path ran off the map) and, with
    ``want_arg``, its track position (-1 there).
    """
    n = value.shape[-1]
    shape = np.broadcast_shapes(value.shape, first.shape)
    best = np.full(shape, -np.inf, np.float32)
    arg = np.full(shape, -1, np.int64) if want_arg else None
    lane_idx = np.arange(value.shape[1])[None, :, None]
    batch_idx = np.arange(value.shape[0])[:, None, None]
    for o in range(int(width.max(initial=0))):
        j = np.minimum(first + o, n - 1)
        v = value[batch_idx, lane_idx, j]
        take = (o < width) & (v > best)
        best = np.where(take, v, best)
        if arg is not None:
            arg = np.where(take, j, arg)
    best = np.where(width > 0, best, _NEUTRAL).astype(np.float32)
    return best, arg


def stream_windows(segments: Sequence[str] | np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows over a stream of queries in driving order: (Q, L) indices and validity.

    Window q holds the queries ``q-L+1 .. q`` of q's segment (drive), the newest last; at the start
    of a segment the window is padded at the front (index 0, valid False).
    """
    seg = np.asarray(segments)
    q = len(seg)
    starts = np.zeros(q, np.int64)
    for i in range(1, q):
        starts[i] = starts[i - 1] if seg[i] == seg[i - 1] else i
    idx = np.arange(q)[:, None] - np.arange(seq_len - 1, -1, -1)[None, :]
    valid = idx >= starts[:, None]
    return np.where(valid, idx, 0), valid


def sequence_search(
    query_emb: np.ndarray,
    db_emb: np.ndarray,
    matcher: SequenceMatcher,
    k: int,
    *,
    segments: Sequence[str] | np.ndarray | None = None,
    travelled_m: np.ndarray | None = None,
    frame_indices: np.ndarray | None = None,
    excluded_fn=None,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` map places of every query of a stream by sequence matching.

    Args:
        query_emb: (Q, D) L2-normalised query embeddings in driving order.
        db_emb: (N, D) map embeddings (map row order of ``matcher.track``).
        segments: (Q,) drive of each query (windows never span two); default one drive.
        travelled_m: (Q,) odometry: metres travelled from the previous query of the drive (the
            first of a drive is ignored); None: no odometry.
        frame_indices: (Q,) frame numbers, for the frame gaps between queries without odometry.
        excluded_fn: ``rows -> (len(rows), N) bool`` map places each query may not retrieve.

    Returns:
        (scores (Q, k), map indices (Q, k)), best first.
    """
    q_emb = np.asarray(query_emb, dtype=np.float32)
    d_emb = np.asarray(db_emb, dtype=np.float32)
    n_q, n = len(q_emb), len(d_emb)
    seg = np.zeros(n_q, np.int64) if segments is None else np.asarray(segments)
    length = matcher.settings.seq_len
    windows, valid = stream_windows(seg, length)
    gaps_all = None
    if travelled_m is None and frame_indices is not None:
        fi = np.asarray(frame_indices, dtype=np.float64)
        gaps_all = np.abs(np.diff(fi, prepend=fi[:1]))
        gaps_all = np.where(gaps_all > 0, gaps_all, 1.0)
    k = min(k, n)
    out_s = np.empty((n_q, k), np.float32)
    out_i = np.empty((n_q, k), np.int64)
    for start in range(0, n_q, batch_size):
        rows = np.arange(start, min(start + batch_size, n_q))
        lo = int(windows[rows].min())
        sims = q_emb[lo : rows[-1] + 1] @ d_emb.T  # each needed query once
        w = windows[rows]
        sim = sims[w - lo]
        step_rows = w[:, 1:]
        kwargs = {}
        if travelled_m is not None:
            kwargs["travelled_m"] = np.asarray(travelled_m, dtype=np.float64)[step_rows]
        elif gaps_all is not None:
            kwargs["frame_gaps"] = gaps_all[step_rows]
        excluded = excluded_fn(rows) if excluded_fn is not None else None
        m = matcher.match(sim, valid=valid[rows], excluded=excluded, **kwargs)
        top = np.argsort(-m.scores, axis=1, kind="stable")[:, :k]
        out_i[rows] = top
        out_s[rows] = np.take_along_axis(m.scores, top, axis=1)
    return out_s, out_i
