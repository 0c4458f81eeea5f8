"""Uploaded bytes -> RGB arrays, with a client error that says what is wrong with the upload."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ImageHeader:
    """What an upload's header says: format and size (no pixel decoded)."""

    name: str
    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _open(data: bytes, name: str) -> Image.Image:
    """The upload opened lazily: PIL reads the header only."""
    if not data:
        raise BadRequest(400, "empty_image", f"{name}: the upload is empty (0 bytes)")
    try:
        # PIL's own bomb limit is global; ours (max_image_pixels) is checked from the header.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise BadRequest(422, "image_too_large", f"{name}: image has far too many pixels") from None
    except UnidentifiedImageError:
        raise BadRequest(
            415, "not_an_image", f"{name}: not a PNG or JPEG image ({len(data)} bytes of something else)"
        ) from None


def _checked(image: Image.Image, settings: ServeSettings, name: str) -> ImageHeader:
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
            f"{name}: image is {width}x{height} pixels; each side must be at least {settings.min_image_side}",
        )
    if width * height > settings.max_image_pixels:
        raise BadRequest(
            422,
            "image_too_large",
            f"{name}: image is {width}x{height} = {width * height} pixels; the limit is "
            f"{settings.max_image_pixels}",
        )
    return ImageHeader(name, str(image.format), width, height)


def read_header(data: bytes, settings: ServeSettings, name: str = "image") -> ImageHeader:
    """Format and size of an upload from its header, checked as :func:`decode_image` checks them.

    Raises:
        BadRequest: empty, not an image, not PNG/JPEG, too small or too large.
    """
    with _open(data, name) as image:
        return _checked(image, settings, name)


def check_request_pixels(headers: list[ImageHeader], settings: ServeSettings) -> None:
    """413 when a request's images together hold more than ``max_request_pixels``, before any is
    decoded (each alone may be within ``max_image_pixels``)."""
    total = sum(h.pixels for h in headers)
    if total > settings.max_request_pixels:
        raise BadRequest(
            413,
            "too_many_pixels",
            f"{len(headers)} images of {total / 1e6:.1f} million pixels in all; the limit is "
            f"{settings.max_request_pixels / 1e6:g} million per request (--max-request-megapixels): "
            "send fewer or smaller images",
        )


def decode_image(data: bytes, settings: ServeSettings, name: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PNG or JPEG upload, its size checked before any pixel is decoded.

    Raises:
        BadRequest: empty, not an image, not PNG/JPEG, too small, too large, or corrupt.
    """
    with _open(data, name) as image:
        _checked(image, settings, name)
        try:
            image.load()
            rgb = image.convert("RGB")
        except (OSError, ValueError, SyntaxError) as err:
            raise BadRequest(
                400, "corrupt_image", f"{name}: corrupt or truncated {image.format} ({err})"
            ) from None
    return np.asarray(rgb, dtype=np.uint8)


@dataclass(frozen=True, eq=False)
class DecodedQuery:
    """An uploaded image, decoded and made into the network's input."""

    name: str
    width: int
    height: int
    input: np.ndarray
    """What the encoder's ``prepare`` made of the RGB pixels (resized to the network's input), or
    the (H, W, 3) RGB pixels themselves."""


def decode_query(
    data: bytes,
    settings: ServeSettings,
    name: str,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
) -> DecodedQuery:
    """Decode an upload and ``prepare`` it for the network (None: keep the RGB pixels), in one
    call for a worker thread (PIL's decoder and the resize run mostly without the GIL, so uploads
    decode in parallel).

    Raises:
        BadRequest: as :func:`decode_image`.
    """
    rgb = decode_image(data, settings, name)
    return DecodedQuery(name, int(rgb.shape[1]), int(rgb.shape[0]), rgb if prepare is None else prepare(rgb))
