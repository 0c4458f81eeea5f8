"""Holding out validation frames from the training sequences without leaking them into training.

KITTI records 10 frames a second: a frame drawn at random for validation has a near-identical
neighbour about 1 m away in training, so a random split's validation loss is a training loss. The
default split (``data.val_split: blocks``) takes one contiguous block of frames per sequence for
validation and leaves out of both splits every frame within ``data.val_gap_m`` of that block
(Euclidean distance on the ground plane, so a loop that comes back to the block is kept out too).

Distances are compared within one sequence only: positions of different sequences are in frames
of their own unless the dataset says otherwise.
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
    """Contiguous validation blocks (0 for the random split)."""


def _by_sequence(frames: Sequence[Frame]) -> dict[str, list[Frame]]:
    groups: dict[str, list[Frame]] = {}
    for frame in frames:
        groups.setdefault(frame.sequence, []).append(frame)
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
    """Smallest ground-plane distance (m) between a training and a validation frame of one sequence.

    None when no sequence has frames in both splits (then positions are not comparable).
    """
    train_groups, val_groups = _by_sequence(train), _by_sequence(val)
    best: float | None = None
    for sequence, val_frames in val_groups.items():
        if sequence not in train_groups:
            continue
        d = float(nearest_distances(_positions(val_frames), _positions(train_groups[sequence])).min())
        best = d if best is None else min(best, d)
    return best


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
    """One contiguous block of ``fraction`` of each sequence's frames for validation, with a gap.

    The block's start is drawn with ``seed`` (per sequence, in the order the sequences come).
    Training keeps only frames farther than ``gap_m`` from every validation frame of their
    sequence; the others are the gap. ``frames`` must have poses. A sequence too short to give a
    whole frame to validation gives none (at least one frame in all is held out).
    """
    groups = _by_sequence(frames)
    want = {seq: round(fraction * len(group)) for seq, group in groups.items()}
    if sum(want.values()) == 0 and frames:
        longest = max(groups, key=lambda s: len(groups[s]))
        want[longest] = 1
    rng = np.random.default_rng(seed)
    train: list[Frame] = []
    val: list[Frame] = []
    gap: list[Frame] = []
    blocks = 0
    for sequence, group in groups.items():
        n_val = min(want[sequence], len(group))
        if n_val == 0:
            train.extend(group)
            continue
        start = int(rng.integers(0, len(group) - n_val + 1))
        block = group[start : start + n_val]
        rest = group[:start] + group[start + n_val :]
        distance = nearest_distances(_positions(rest), _positions(block))
        val.extend(block)
        train.extend(f for f, d in zip(rest, distance, strict=True) if d > gap_m)
        gap.extend(f for f, d in zip(rest, distance, strict=True) if d <= gap_m)
        blocks += 1
    return HeldOut(train=train, val=val, gap=gap, blocks=blocks)
