"""Small (N, 3) vector helpers written as plain element-wise numpy.

``(N, 3) @ (3, 3)`` through BLAS is slow for tall thin arrays when other threads compete for the
cores, and its summation order may depend on the BLAS threads; these are fast and reproducible.
"""

from __future__ import annotations

import numpy as np


def rotate(vectors: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """``vectors @ rotation.T`` for (N, 3) float32 vectors and a 3x3 rotation."""
    r = np.asarray(rotation, dtype=np.float32)
    x, y, z = vectors[:, 0:1], vectors[:, 1:2], vectors[:, 2:3]
    return x * r[:, 0] + y * r[:, 1] + z * r[:, 2]


def dot(vectors: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Row-wise dot products of (N, 3) arrays, or of an (N, 3) array with one 3-vector."""
    if other.ndim == 1:
        o = np.asarray(other, dtype=np.float32)
        return vectors[:, 0] * o[0] + vectors[:, 1] * o[1] + vectors[:, 2] * o[2]
    return vectors[:, 0] * other[:, 0] + vectors[:, 1] * other[:, 1] + vectors[:, 2] * other[:, 2]
