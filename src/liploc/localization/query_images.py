"""Query images of ``liploc localize``: files, folders or globs, and the images that cannot be right.

A folder stands for the images in it and a glob (``'drive/*.png'``, quoted so the shell leaves it
alone) for the files it matches, both in sorted order, so that results come out in frame order.
Each image is checked from its header only (no decoding) before any model is loaded: an image too
small to hold a street scene, a 16-bit or floating-point grey image (a depth or raw sensor image,
not a camera frame) or a portrait image is refused; an aspect far from the camera the model was
trained with is warned about, since the whole frame is squeezed into the square network input.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from PIL import UnidentifiedImageError

from liploc.datasets.scan import MIN_IMAGE_SIDE_PX, NOT_CAMERA_MODES, check_image_header, open_image_header
from liploc.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
KITTI_IMAGE_SIZE = (1241, 376)
"""(width, height) of KITTI's rectified colour images, the camera of the shipped configs and maps."""
MIN_SIDE_PX = MIN_IMAGE_SIDE_PX
"""Smaller images hold too little of a street to localize: the rule of every image reader."""
ASPECT_TOLERANCE = 0.25
"""Relative aspect-ratio difference to the expected camera above which a warning is printed."""


@dataclass(frozen=True)
class QueryImage:
    """A query image that passed the checks, with a warning when its aspect is unexpected."""

    path: Path
    size: tuple[int, int]
    warning: str | None = None


def expand_query_paths(arguments: list[str] | list[Path]) -> list[Path]:
    """Image files named by ``arguments``: files as given, folders and globs expanded and sorted.

    Raises:
        DataError: naming an argument that is missing, matches nothing or holds no image.
    """
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise DataError(path, f"folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        elif glob.has_magic(str(argument)):
            found = sorted(Path(p) for p in glob.glob(str(argument)) if Path(p).is_file())
            if not found:
                raise DataError(path, "the pattern matches no file")
            paths.extend(found)
        else:
            raise DataError(path, "image file not found")
    return paths


def check_query_image(path: Path, expected_size: tuple[int, int] = KITTI_IMAGE_SIZE) -> QueryImage:
    """Read ``path``'s header and refuse what cannot be a camera frame like ``expected_size``.

    Raises:
        DataError: naming the file, its size and the expected size and aspect.
    """
    try:
        with open_image_header(path) as image:
            width, height = image.size
            mode = image.mode
        check_image_header(path, width, height)
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (unknown or corrupt format)") from None
    except OSError as err:
        raise DataError(path, f"cannot read the image ({err.strerror or err})") from None
    ew, eh = expected_size
    expected = f"expected a camera frame like {ew}x{eh} px (aspect {ew / eh:.1f}:1)"
    if min(width, height) < MIN_SIDE_PX:
        raise DataError(path, f"image of {width}x{height} px is too small to localize; {expected}")
    if mode in NOT_CAMERA_MODES:
        raise DataError(
            path, f"{mode} image (16-bit or floating-point grey, e.g. depth): {expected} in 8-bit colour"
        )
    if height > width:
        raise DataError(path, f"portrait image ({width}x{height} px); {expected}")
    aspect, expected_aspect = width / height, ew / eh
    warning = None
    if abs(aspect - expected_aspect) / expected_aspect > ASPECT_TOLERANCE:
        warning = (
            f"{path}: aspect {aspect:.1f}:1 ({width}x{height} px) is far from the {expected_aspect:.1f}:1 "
            f"of the camera the model was trained on ({ew}x{eh}); results may be poor"
        )
    return QueryImage(path, (width, height), warning)
