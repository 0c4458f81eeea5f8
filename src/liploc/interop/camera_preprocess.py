"""The camera tower's preprocessing in NumPy, from the JSON an ONNX export writes (no torch).

It reproduces :func:`liploc.runtime.inputs.camera_image_input` and the evaluation transform:
bilinear resize with half-pixel centres and no antialiasing (OpenCV ``INTER_LINEAR``, torch's
``interpolate(align_corners=False)``), rounding to 8 bits, scaling to 0..1 and the mean/std
normalisation. The ONNX parity test holds both paths to the same embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def _axis_weights(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and the weight of ``high`` for each output position."""
    scale = np.float32(size_in / size_out)
    src = (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    low = src.astype(np.int64)
    low = np.minimum(low, size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    return low, high, (src - low).astype(np.float32)


def resize_bilinear_chw(array: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W) float32, half-pixel centres, no antialiasing."""
    x = np.asarray(array, dtype=np.float32)
    out_h, out_w = size_hw
    if x.shape[1:] == (out_h, out_w):
        return x.copy()
    r0, r1, wr = _axis_weights(x.shape[1], out_h)
    c0, c1, wc = _axis_weights(x.shape[2], out_w)
    top = x[:, r0, :]
    bottom = x[:, r1, :]
    rows = top + (bottom - top) * wr[None, :, None]
    left = rows[:, :, c0]
    right = rows[:, :, c1]
    return left + (right - left) * wc[None, None, :]


@dataclass(frozen=True)
class CameraPreprocess:
    """Camera image (H, W, 3) uint8 RGB -> the image tower's (3, H, W) float32 input."""

    size_hw: tuple[int, int]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CameraPreprocess:
        """From the ``image`` section of an export's ``preprocessing.json``."""
        h, w = spec["resize"]["size_hw"]
        mean = spec.get("mean")
        std = spec.get("std")
        return cls(
            (int(h), int(w)),
            None if mean is None else tuple(float(v) for v in mean),
            None if std is None else tuple(float(v) for v in std),
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """One image -> (3, H, W) float32."""
        chw = np.asarray(image).transpose(2, 0, 1)
        resized = np.clip(np.rint(resize_bilinear_chw(chw, self.size_hw)), 0, 255).astype(np.uint8)
        x = resized.astype(np.float32) / np.float32(255.0)
        if self.mean is not None and self.std is not None:
            mean = np.array(self.mean, dtype=np.float32)[:, None, None]
            std = np.array(self.std, dtype=np.float32)[:, None, None]
            x = (x - mean) / std
        return x

    def batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 3, H, W) float32 of ``images``."""
        return np.stack([self(image) for image in images])
