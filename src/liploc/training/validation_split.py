"""Holding out validation frames from the training sequences without leaking them into training.

KITTI records 10 frames a second: a frame drawn at random for validation has a near-identical
neighbour about 1 m away in training, so a random split's validation loss is a training loss. The
default split (``data.val_split: blocks``) takes one compact region per world for validation (on
a drive, a contiguous block of frames) and leaves out of both splits every frame within
``data.val_gap_m`` of it (Euclidean distance on the ground plane, so a loop or another drive that
comes back to the region is kept out too).

Distances are compared within one world frame only (``Frame.world_id`` where the readers give
one, else the sequence): positions of different sequences are in frames of their own unless the
dataset says they share one, and then a validation block also keeps out of training the frames
of other sequences that pass the same place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from liploc.datasets import Frame

_CHUNK = 2048


@dataclass
class HeldOut:
    """A split of training frames into training, validation and the gap used by neither."""

    train: list[Frame]
    val: list[Frame]
    gap: list[Frame]
    blocks: int
    """Validation regions, one per world (0 for the random split)."""


def world_of(frame: Frame) -> str:
    """The world frame a frame's position is in: its ``world_id`` when it has one, else its sequence."""
    return str(getattr(frame, "world_id", None) or frame.sequence)


def _by_sequence(frames: Sequence[Frame]) -> dict[str, list[Frame]]:
    groups: dict[str, list[Frame]] = {}
    for frame in frames:
        groups.setdefault(frame.sequence, []).append(frame)
    return groups


def _by_world(frames: Sequence[Frame]) -> dict[str, list[Frame]]:
    groups: dict[str, list[Frame]] = {}
    for frame in frames:
        groups.setdefault(world_of(frame), []).append(frame)
    return groups


def _positions(frames: Sequence[Frame]) -> np.ndarray:
    return np.array([f.position_xy for f in frames], dtype=np.float64).reshape(-1, 2)


def nearest_distances(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """For each row of ``points`` (N, 2), the distance to the nearest row of ``others`` (M, 2).

    inf when ``others`` is empty. Chunked brute force: a KITTI sequence has a few thousand frames.
    """
    out = np.full(len(points), np.inf)
    if len(others) == 0:
        return out
    for start in range(0, len(points), _CHUNK):
        block = points[start : start + _CHUNK]
        d2 = ((block[:, None, :] - others[None, :, :]) ** 2).sum(axis=-1)
        out[start : start + _CHUNK] = np.sqrt(d2.min(axis=1))
    return out


def min_train_val_distance(train: Sequence[Frame], val: Sequence[Frame]) -> float | None:
    """Smallest ground-plane distance (m) between a training and a validation frame of one world.

    None when no world has frames in both splits (then positions are not comparable).
    """
    train_groups, val_groups = _by_world(train), _by_world(val)
    best: float | None = None
    for world, val_frames in val_groups.items():
        if world not in train_groups:
            continue
        d = float(nearest_distances(_positions(val_frames), _positions(train_groups[world])).min())
        best = d if best is None else min(best, d)
    return best


def val_frames_within(train: Sequence[Frame], val: Sequence[Frame], radius_m: float) -> int:
    """How many validation frames lie within ``radius_m`` of a training frame of their world."""
    train_groups, count = _by_world(train), 0
    for world, val_frames in _by_world(val).items():
        if world in train_groups:
            d = nearest_distances(_positions(val_frames), _positions(train_groups[world]))
            count += int((d <= radius_m).sum())
    return count


def random_split(frames: Sequence[Frame], fraction: float, seed: int) -> HeldOut:
    """``fraction`` of ``frames`` drawn at random for validation (the paper's reference code)."""
    frames = list(frames)
    n_val = max(1, round(fraction * len(frames)))
    held = set(np.random.default_rng(seed).permutation(len(frames))[:n_val].tolist())
    return HeldOut(
        train=[f for i, f in enumerate(frames) if i not in held],
        val=[f for i, f in enumerate(frames) if i in held],
        gap=[],
        blocks=0,
    )


def block_split(frames: Sequence[Frame], fraction: float, gap_m: float, seed: int) -> HeldOut:
    """``fraction`` of each world's frames, one compact region of it, for validation, with a gap.

    Per world (see :func:`world_of`; a sequence when the dataset gives no shared frame), a centre
    is drawn with ``seed`` among the world's frames and the ``fraction`` of frames nearest to it
    are validation: on a drive that does not come back, one contiguous block; where drives of one
    world cross or revisit it, every pass through the region. Training keeps only frames farther
    than ``gap_m`` from every validation frame of their world; the others are the gap. One region
    per world rather than per sequence: many drives through one town would otherwise spread the
    gaps over most of it. ``frames`` must have poses. At least one frame in all is held out.
    """
    worlds = _by_world(frames)
    want = {w: round(fraction * len(group)) for w, group in worlds.items()}
    if sum(want.values()) == 0 and frames:
        want[max(worlds, key=lambda w: len(worlds[w]))] = 1
    rng = np.random.default_rng(seed)
    train: list[Frame] = []
    val: list[Frame] = []
    gap: list[Frame] = []
    blocks = 0
    for world, group in worlds.items():
        n_val = min(want[world], len(group))
        if n_val == 0:
            train.extend(group)
            continue
        xy = _positions(group)
        centre = xy[int(rng.integers(0, len(group)))]
        # Stable sort: ties (frames at one place) go in frame order, so the block stays contiguous.
        nearest = np.argsort(np.linalg.norm(xy - centre, axis=1), kind="stable")[:n_val]
        is_val = np.zeros(len(group), dtype=bool)
        is_val[nearest] = True
        distance = nearest_distances(xy[~is_val], xy[is_val])
        rest = [f for f, v in zip(group, is_val, strict=True) if not v]
        val.extend(f for f, v in zip(group, is_val, strict=True) if v)
        train.extend(f for f, d in zip(rest, distance, strict=True) if d > gap_m)
        gap.extend(f for f, d in zip(rest, distance, strict=True) if d <= gap_m)
        blocks += 1
    return HeldOut(train=train, val=val, gap=gap, blocks=blocks)
