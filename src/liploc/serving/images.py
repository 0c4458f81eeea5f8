"""Uploaded bytes -> RGB arrays, with a client error that says what is wrong with the upload."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from liploc.serving.settings import ServeSettings

ACCEPTED_FORMATS = ("PNG", "JPEG")


class BadRequest(Exception):
    """A request the service refuses: HTTP ``status``, a short machine ``code`` and a ``detail``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def decode_image(data: bytes, settings: ServeSettings, name: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PNG or JPEG upload.

    Raises:
        BadRequest: empty, not an image, not PNG/JPEG, too small, too large, or corrupt.
    """
    if not data:
        raise BadRequest(400, "empty_image", f"{name}: the upload is empty (0 bytes)")
    try:
        # Image.open reads only the header: the size is checked before any pixel is decoded.
        # PIL's own bomb limit is global; ours (max_image_pixels) is checked below instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise BadRequest(422, "image_too_large", f"{name}: image has far too many pixels") from None
    except UnidentifiedImageError:
        raise BadRequest(
            415, "not_an_image", f"{name}: not a PNG or JPEG image ({len(data)} bytes of something else)"
        ) from None
    with image:
        if image.format not in ACCEPTED_FORMATS:
            raise BadRequest(
                415,
                "unsupported_image_format",
                f"{name}: {image.format} images are not accepted; send PNG or JPEG",
            )
        width, height = image.size
        if min(width, height) < settings.min_image_side:
            raise BadRequest(
                422,
                "image_too_small",
                f"{name}: image is {width}x{height} pixels; each side must be at least "
                f"{settings.min_image_side}",
            )
        if width * height > settings.max_image_pixels:
            raise BadRequest(
                422,
                "image_too_large",
                f"{name}: image is {width}x{height} = {width * height} pixels; the limit is "
                f"{settings.max_image_pixels}",
            )
        try:
            image.load()
            rgb = image.convert("RGB")
        except (OSError, ValueError, SyntaxError) as err:
            raise BadRequest(
                400, "corrupt_image", f"{name}: corrupt or truncated {image.format} ({err})"
            ) from None
    return np.asarray(rgb, dtype=np.uint8)
