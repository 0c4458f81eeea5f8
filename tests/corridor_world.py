"""A learnable toy world for training tests: a corridor of places, each with its own code.

Every frame is a place with a random code (u, v) in [0, 1]^2. The camera image shows vertical
stripes whose period depends on u and whose brightness depends on v; the LiDAR scan sees walls in
front whose range alternates with an angular period depending on u around a mean range depending
on v. Stripe phases are random and independent per modality, so only the code links an image to
its scan: a model that matches them has learnt the cross-modal task, not a pixel shortcut.

The files are written in the KITTI odometry layout by the shared builder of ``conftest.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_kitti_odometry, write_scan
from PIL import Image

IMAGE_SIZE = (128, 40)
"""(width, height) of the corridor's camera images."""


def place_codes(n: int, seed: int) -> np.ndarray:
    """(n, 2) codes (u, v) in [0, 1] of ``n`` places."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=(n, 2))


def corridor_image(
    code: np.ndarray, rng: np.random.Generator, size: tuple[int, int] = IMAGE_SIZE
) -> np.ndarray:
    """uint8 (H, W, 3) image of a place: stripes of period 6..26 px (u), brightness 40..220 (v)."""
    w, h = size
    u, v = code
    period = 6.0 + 20.0 * u
    x = np.arange(w)
    on = np.sin(2 * np.pi * x / period + rng.uniform(0, 2 * np.pi)) > 0
    level = 40.0 + 180.0 * v
    colour = np.array([1.0, 0.8, 0.6]) * level
    row = np.where(on[:, None], colour[None, :], 0.3 * colour[None, :])  # (W, 3)
    image = np.broadcast_to(row[None], (h, w, 3)) + rng.normal(0.0, 8.0, size=(h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def corridor_scan(code: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 (N, 4) scan of a place: walls in the front 120 degrees, range 5..45 m (v), stripes (u)."""
    u, v = code
    azimuth = np.radians(np.linspace(-60.0, 60.0, 300))
    elevation = np.radians(np.linspace(-10.0, 2.0, 24))
    period = np.radians((6.0 + 20.0 * u) / IMAGE_SIZE[0] * 90.0)
    near = np.sin(2 * np.pi * azimuth / period + rng.uniform(0, 2 * np.pi)) > 0
    rng_m = 5.0 + 35.0 * v + np.where(near, 0.0, 6.0)
    a, e = np.meshgrid(azimuth, elevation)
    r = np.broadcast_to(rng_m[None, :], a.shape) + rng.normal(0.0, 0.1, size=a.shape)
    points = np.stack(
        [r * np.cos(e) * np.cos(a), r * np.cos(e) * np.sin(a), r * np.sin(e), np.full_like(r, 0.5)], axis=-1
    )
    return points.reshape(-1, 4).astype(np.float32)


def write_corridor(root: Path, sequence: str, n_frames: int, seed: int) -> np.ndarray:
    """Write a corridor drive ``root/sequences/<sequence>`` (KITTI odometry layout, with poses).

    Returns the (n_frames, 2) place codes.
    """
    seq = write_kitti_odometry(root, sequence, n_frames, image_size=IMAGE_SIZE, n_points=4, seed=seed)
    codes = place_codes(n_frames, seed)
    rng = np.random.default_rng(seed + 1)
    for i, code in enumerate(codes):
        Image.fromarray(corridor_image(code, rng)).save(seq / "image_2" / f"{i:06d}.png")
        write_scan(seq / "velodyne" / f"{i:06d}.bin", corridor_scan(code, rng))
    return codes


def write_corridors(root: Path, *drives: tuple[str, int, int]) -> Path:
    """Write a corridor drive for each (sequence, n_frames, seed) under ``root``; returns ``root``."""
    for sequence, n_frames, seed in drives:
        write_corridor(root, sequence, n_frames, seed=seed)
    return root


def write_map_town(root: Path) -> Path:
    """Three corridor drives in one shared world, for map tests: 00 (24 frames) to train on, 01
    (6) to validate on and to add to a map, 02 (8) to build a map of; a synth manifest says the
    drives share the town's frame. Returns ``root``."""
    write_corridors(root, ("00", 24, 1), ("01", 6, 2), ("02", 8, 3))
    (root / "synth.json").write_text(json.dumps({"pose_frame": "town"}))
    return root


def write_train_and_val(root: Path, n_train: int, n_val: int) -> Path:
    """Toy drives: ``n_train`` training places (sequence 00, seed 0) and ``n_val`` other places for
    validation (01, seed 100); returns ``root``."""
    return write_corridors(root, ("00", n_train, 0), ("01", n_val, 100))


def corridor_fixture(n_train: int, n_val: int, name: str = "corridor"):
    """A module-scoped fixture ``name``: a folder with :func:`write_train_and_val`'s two drives.

    Use as ``corridor = corridor_fixture(64, 32)`` at the top of a test module.
    """

    @pytest.fixture(scope="module", name=name)
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return write_train_and_val(tmp_path_factory.mktemp("corridor"), n_train, n_val)

    return fixture


__all__ = [
    "IMAGE_SIZE",
    "corridor_fixture",
    "corridor_image",
    "corridor_scan",
    "place_codes",
    "write_corridor",
    "write_corridors",
    "write_train_and_val",
]
