"""One image-size rule for every reader of images (fault found from outside: a 74-byte PNG
declaring 20000 x 20000 gave PIL's DecompressionBombError as a raw traceback)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liploc.datasets.scan import MAX_IMAGE_PIXELS, load_image, read_image_size
from liploc.errors import DataError
from liploc.localization.query_images import check_query_image


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares ``width`` x ``height`` 8-bit RGB pixels (no pixel data)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b""))
        + _chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize("reader", [load_image, read_image_size, check_query_image])
def test_a_png_declaring_far_too_many_pixels_is_refused_naming_the_file(tmp_path: Path, reader) -> None:
    bomb = png_declaring(tmp_path / "bomb.png", 20000, 20000)
    assert bomb.stat().st_size < 100
    with pytest.raises(DataError, match=r"bomb\.png: image declares .*pixels.*liploc reads"):
        reader(bomb)


def test_the_limit_is_on_pixels_not_on_one_side(tmp_path: Path) -> None:
    # Just above the limit is refused; a wide image under it is only a (corrupt) image.
    side = int(MAX_IMAGE_PIXELS**0.5) + 1
    with pytest.raises(DataError, match="liploc reads"):
        load_image(png_declaring(tmp_path / "over.png", side, side))
    with pytest.raises(DataError) as err:
        load_image(png_declaring(tmp_path / "wide.png", 20000, 100))
    assert "liploc reads" not in str(err.value)


def test_a_16_bit_grey_image_is_not_a_camera_frame_for_any_reader(tmp_path: Path) -> None:
    path = tmp_path / "depth.png"
    Image.fromarray(np.full((40, 120), 3000, dtype=np.uint16)).save(path)
    for reader in (load_image, read_image_size, check_query_image):
        with pytest.raises(DataError, match=r"depth\.png: I;16.* image \(16-bit"):
            reader(path)


@pytest.mark.parametrize("size", [(1, 1), (15, 40), (40, 15)])
def test_an_image_too_small_is_refused_by_every_reader(tmp_path: Path, size: tuple[int, int]) -> None:
    # Fault found from outside: evaluate accepted a 1 x 1 dataset image that localize refused.
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((size[1], size[0], 3), dtype=np.uint8)).save(path)
    for reader in (load_image, read_image_size, check_query_image):
        with pytest.raises(DataError, match=r"small\.png: image of .* px is too small"):
            reader(path)
