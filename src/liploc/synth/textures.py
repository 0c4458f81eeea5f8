"""Procedural textures: hashed value noise and facade windows, evaluated per hit point.

Everything is a pure function of world (or surface) coordinates and a seed, so a texture belongs to
the scene: the same wall looks the same from every frame and every drive.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint32(0x8DA6B343)
_M2 = np.uint32(0xD8163841)
_M3 = np.uint32(0xCB1AB31F)
_M4 = np.uint32(0x5BD1E995)

FACADE_TEX_FIELDS = (
    "wall_length",
    "eave_height",
    "window_spacing",
    "floor_height",
    "window_width",
    "window_height",
    "shopfront",
    "margin",
)
"""Meaning of the eight texture parameters of a facade part (lengths in metres, sizes as fractions)."""


def _mix(hx: np.ndarray, hy: np.ndarray, seed: int) -> np.ndarray:
    """32 well-mixed bits per pair of uint32 lattice coordinates (a murmur-style finaliser)."""
    with np.errstate(over="ignore"):  # the multiplications wrap around by design
        h = hx * _M1
        h ^= hy * _M2
        h ^= np.uint32(seed & 0xFFFFFFFF) * _M3
        h ^= h >> np.uint32(13)
        h *= _M4
        h ^= h >> np.uint32(15)
    return h


def _hash(hx: np.ndarray, hy: np.ndarray, seed: int) -> np.ndarray:
    return (_mix(hx, hy, seed) >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def hash_uniform(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Uniform numbers in [0, 1) from integer lattice coordinates (a stateless hash)."""
    return _hash(
        np.asarray(ix).astype(np.int64).astype(np.uint32),
        np.asarray(iy).astype(np.int64).astype(np.uint32),
        seed,
    )


def value_noise(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1) with unit lattice spacing (scale the inputs for other sizes)."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    fx = np.floor(x)
    fy = np.floor(y)
    tx = x - fx
    ty = y - fy
    ix = fx.astype(np.int64).astype(np.uint32)
    iy = fy.astype(np.int64).astype(np.uint32)
    ix1 = ix + np.uint32(1)
    iy1 = iy + np.uint32(1)
    tx = tx * tx * (3 - 2 * tx)
    ty = ty * ty * (3 - 2 * ty)
    a = _hash(ix, iy, seed)
    b = _hash(ix1, iy, seed)
    c = _hash(ix, iy1, seed)
    d = _hash(ix1, iy1, seed)
    top = a + (b - a) * tx
    bottom = c + (d - c) * tx
    return top + (bottom - top) * ty


def fractal_noise(x: np.ndarray, y: np.ndarray, seed: int, octaves: int = 2) -> np.ndarray:
    """Sum of ``octaves`` value-noise layers (each twice as fine, half as strong), in [0, 1)."""
    total = np.zeros(np.shape(x), dtype=np.float32)
    weight = 1.0
    norm = 0.0
    for octave in range(octaves):
        scale = 2.0**octave
        total += np.float32(weight) * value_noise(x * scale, y * scale, seed + 101 * octave)
        norm += weight
        weight *= 0.5
    return total / np.float32(norm)


def surface_coordinates(points: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two coordinates running along a surface, picked by the dominant axis of its normal."""
    axis = np.argmax(np.abs(normals), axis=1)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    u = np.where(axis == 0, y, x)
    v = np.where(axis == 2, y, z)
    return u, v


def facade_windows(along: np.ndarray, height: np.ndarray, tex: np.ndarray, grow: float = 0.0) -> np.ndarray:
    """Boolean mask of the points of a facade that fall on a window.

    Args:
        along: metres along the wall from its start.
        height: metres above the wall's base.
        tex: (N, 8) facade parameters, see ``FACADE_TEX_FIELDS``.
        grow: metres added to each side of every window (its frame, for the camera's texture).
    """
    length, eave, spacing, floor_h, win_w, win_h, shop, margin = (tex[:, i] for i in range(8))
    usable = np.maximum(length - 2 * margin, 0.0)
    columns = np.floor(usable / spacing)
    start = margin + 0.5 * (usable - columns * spacing)
    u = (along - start) / spacing
    fu = u - np.floor(u)
    fv = height / floor_h - np.floor(height / floor_h)
    inside = (u > 0) & (u < columns) & (height < eave - 0.35)
    gu = grow / spacing
    gv = grow / floor_h
    upper = (
        (np.abs(fu - 0.5) < 0.5 * win_w + gu)
        & (fv > 0.3 - gv)
        & (fv < 0.3 + win_h + gv)
        & (height > floor_h * np.where(shop > 0, 1.0, 0.0))
    )
    shopfront = (
        (shop > 0) & (height > 0.45 - grow) & (height < floor_h - 0.7 + grow) & (np.abs(fu - 0.5) < 0.42 + gu)
    )
    return inside & (upper | shopfront)


FENCE_TEX_FIELDS = ("pitch", "bar_fraction", "height")
"""Texture parameters of a fence part: metres between pickets, share of the pitch a picket covers,
height of the fence (metres); the first three of the part's eight."""


def fence_gaps(along: np.ndarray, height: np.ndarray, tex: np.ndarray) -> np.ndarray:
    """Boolean mask of the points of a fence that fall between its pickets (below the top rail and
    above the bottom one): rays pass through there.

    Args:
        along: metres along the fence from its start.
        height: metres above the ground.
        tex: (N, 8) fence parameters, see ``FENCE_TEX_FIELDS``.
    """
    pitch, bar, top = tex[:, 0], tex[:, 1], tex[:, 2]
    rails = (height > top - 0.07) | (np.abs(height - 0.2) < 0.04)
    return ((along / np.maximum(pitch, 1e-3)) % 1.0 > bar) & ~rails & (height > 0.05)


def hash3(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    """Uniform numbers in [0, 1) from integer 3D lattice coordinates (integer or whole float arrays)."""
    x, y, z = (np.asarray(a).astype(np.int64).astype(np.uint32) for a in (ix, iy, iz))
    with np.errstate(over="ignore"):
        x ^= z * np.uint32(0x9E3779B1)
    return _hash(x, y, seed)


def _tilted_lattice() -> np.ndarray:
    a, b, c = 0.61, 0.83, 0.37
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return (rz @ rx @ ry).astype(np.float32)


_LATTICE = _tilted_lattice()
"""Rotation of the cell grid against the world axes: cells cut walls and the ground in irregular
polygons instead of squares lined up with the image."""


def _lattice_cells(points: np.ndarray, size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = _LATTICE * np.float32(1.0 / size)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    ix = np.floor(x * r[0, 0] + y * r[1, 0] + z * r[2, 0])
    iy = np.floor(x * r[0, 1] + y * r[1, 1] + z * r[2, 1])
    iz = np.floor(x * r[0, 2] + y * r[1, 2] + z * r[2, 2])
    return ix, iy, iz


def cell_noise3(points: np.ndarray, size: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three independent ``cell_noise`` values per point (8 bits each, from one hash)."""
    ix, iy, iz = (a.astype(np.int64).astype(np.uint32) for a in _lattice_cells(points, size))
    with np.errstate(over="ignore"):
        ix ^= iz * np.uint32(0x9E3779B1)
    h = _mix(ix, iy, seed)
    scale = np.float32(1.0 / 256.0)
    return (
        (h & np.uint32(255)).astype(np.float32) * scale,
        ((h >> np.uint32(8)) & np.uint32(255)).astype(np.float32) * scale,
        ((h >> np.uint32(16)) & np.uint32(255)).astype(np.float32) * scale,
    )


def cell_noise(points: np.ndarray, size: float, seed: int) -> np.ndarray:
    """Piecewise-constant noise in [0, 1): one random value per cube of side ``size`` (metres) of a
    tilted 3D grid, so surfaces of any orientation get irregular patches with sharp edges (leaves,
    grain)."""
    return hash3(*_lattice_cells(points, size), seed)


def blob_noise(points: np.ndarray, size: float, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1) over 3D points (N, 3) with features about ``size`` metres across: value
    noise on two planes of the tilted lattice, averaged, so that it is smooth on surfaces of any
    orientation (round sunflecks, blotches)."""
    r = _LATTICE * np.float32(1.0 / size)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    a = x * r[0, 0] + y * r[1, 0] + z * r[2, 0]
    b = x * r[0, 1] + y * r[1, 1] + z * r[2, 1]
    c = x * r[0, 2] + y * r[1, 2] + z * r[2, 2]
    return np.float32(0.5) * (value_noise(a, b, seed) + value_noise(b + np.float32(0.5), c, seed + 1))
