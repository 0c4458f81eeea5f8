"""Loading LiDAR scans and camera images, with errors that name the file and the problem."""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from liploc.errors import DataError

logger = logging.getLogger(__name__)

POINT_BYTES = 16
MAX_IMAGE_PIXELS = 64_000_000
"""Images with more pixels are refused from their header, before decoding (KITTI's: 0.47 MP;
a 74-byte PNG may declare 20000 x 20000). One rule for every reader of images."""
MIN_IMAGE_SIDE_PX = 16
"""Images with a shorter side are refused by every reader: nothing of a street fits in them (the
query checks of ``liploc localize`` and the dataset readers share this rule)."""
NOT_CAMERA_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
"""PIL modes of 16-bit or floating-point grey images: depth or raw sensor images, not camera frames."""
"""Bytes per point of a KITTI ``.bin`` scan: float32 x, y, z, intensity."""


@dataclass(frozen=True, eq=False)
class LoadedScan:
    """A scan as read from disk.

    Attributes:
        path: the scan file.
        points: float32 (N, 4) x, y, z, intensity; only finite points.
        n_dropped: points dropped because a value was NaN or infinite.
    """

    path: Path
    points: np.ndarray
    n_dropped: int

    @property
    def n_read(self) -> int:
        """Points stored in the file, dropped ones included."""
        return len(self.points) + self.n_dropped


def check_scan_size(path: str | Path) -> int:
    """Number of points in the scan file ``path`` from its size alone (no read).

    Raises DataError when the file is missing, empty, or its size is not a whole number of points.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(path, "scan file not found") from None
    except OSError as err:
        raise DataError(path, f"cannot read scan file ({err.strerror or err})") from None
    if size == 0:
        raise DataError(path, "empty scan (0 bytes, no points)")
    if size % POINT_BYTES:
        raise DataError(
            path,
            f"size {size} bytes is not a multiple of {POINT_BYTES} "
            "(float32 x, y, z, intensity per point): truncated or not a KITTI scan",
        )
    return size // POINT_BYTES


def read_scan(path: str | Path) -> LoadedScan:
    """Read a KITTI ``.bin`` scan, dropping (and counting) points with NaN or infinite values.

    Raises DataError naming the file when it is missing, empty, not a whole number of points,
    or has no finite point.
    """
    path = Path(path)
    check_scan_size(path)
    try:
        raw = np.fromfile(path, dtype="<f4")
    except OSError as err:
        raise DataError(path, f"cannot read scan file ({err.strerror or err})") from None
    points = raw.reshape(-1, 4)
    n_dropped = 0
    # One pass over all values first: a per-row all() reduces along 4-value rows, 10x slower
    # (1.7 ms of a 3.6 ms scan input), and almost every scan is wholly finite.
    if not np.isfinite(raw).all():
        finite = np.isfinite(points).all(axis=1)
        n_dropped = int(len(points) - np.count_nonzero(finite))
        points = points[finite]
    if len(points) == 0:
        raise DataError(path, f"empty scan: all {n_dropped} points have NaN or infinite values")
    return LoadedScan(path=path, points=np.ascontiguousarray(points, dtype=np.float32), n_dropped=n_dropped)


def load_scan(path: str | Path) -> np.ndarray:
    """float32 (N, 4) points (x, y, z, intensity) of a KITTI ``.bin`` scan.

    Points with NaN or infinite values are dropped; their count is logged as a warning (use
    :func:`read_scan` to get it as a number).
    """
    scan = read_scan(path)
    if scan.n_dropped:
        logger.warning(
            "%s: dropped %d of %d points with NaN or infinite values", path, scan.n_dropped, scan.n_read
        )
    return scan.points


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode_rgb8_png(data: bytes) -> np.ndarray | None:
    """Pixels of an 8-bit RGB PNG decoded by libspng, 1.3-1.9x faster than PIL on KITTI frames
    (PNG decoding is most of a cold frame's preprocessing); None for any other PNG, or data
    libspng cannot decode (PIL then decodes it or says what is wrong)."""
    # IHDR is the first chunk: width, height, bit depth (byte 24), colour type (byte 25; 2: RGB).
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or data[24:26] != b"\x08\x02":
        return None
    import pyspng  # imported here: localization's start-up only pays it when an image is a PNG

    try:
        rgb = pyspng.load(data, "RGB")
    except RuntimeError:  # truncated or damaged
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return rgb if rgb.shape == (height, width, 3) and rgb.dtype == np.uint8 else None


def check_image_header(path: Path, width: int, height: int, mode: str | None = None) -> None:
    """Refuse, from its header, an image no camera of liploc's takes: more than
    :data:`MAX_IMAGE_PIXELS` pixels, a side under :data:`MIN_IMAGE_SIDE_PX`, or a 16-bit or
    floating-point grey image."""
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(
            path, f"image declares {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} liploc reads"
        )
    if min(width, height) < MIN_IMAGE_SIDE_PX:
        raise DataError(
            path,
            f"image of {width}x{height} px is too small: each side must be at least {MIN_IMAGE_SIDE_PX} px",
        )
    if mode in NOT_CAMERA_MODES:
        raise DataError(
            path, f"{mode} image (16-bit or floating-point grey, e.g. depth), not an 8-bit camera frame"
        )


def open_image_header(path: Path, data: bytes | None = None) -> Image.Image:
    """PIL's lazy image (header read, no pixels), with PIL's own global bomb limit left to ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data) if data is not None else path)
        except Image.DecompressionBombError:
            raise DataError(
                path, f"image declares more than the {MAX_IMAGE_PIXELS:,} pixels liploc reads"
            ) from None


def load_image(path: str | Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB array of an image file (grey or RGBA images are converted to RGB).

    Raises DataError naming the file when it is missing, not an image, or corrupt/truncated.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except OSError as err:
        raise DataError(path, f"cannot read image file ({err.strerror or err})") from None
    if len(data) >= 24 and data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
        check_image_header(path, int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
    rgb8 = _decode_rgb8_png(data)
    if rgb8 is not None:
        return rgb8
    try:
        with open_image_header(path, data) as image:
            check_image_header(path, *image.size, image.mode)
            image.load()
            rgb = image.convert("RGB")
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError) as err:
        # PIL reports truncated or damaged data as OSError/SyntaxError/ValueError.
        raise DataError(path, f"corrupt image ({err})") from None
    return np.asarray(rgb, dtype=np.uint8)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image from its header only (fast; does not decode the pixels).

    Raises DataError naming the file when it is missing or its header is not a readable image.
    """
    path = Path(path)
    try:
        with open_image_header(path) as image:
            check_image_header(path, *image.size, image.mode)
            return int(image.size[0]), int(image.size[1])
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(path, f"corrupt image ({err})") from None
