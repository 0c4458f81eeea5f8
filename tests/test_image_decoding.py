"""Camera images decode to the same pixels whichever decoder reads them (libspng for 8-bit RGB
PNGs, Pillow for everything else)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import KITTI_RAW_SAMPLE, require_shared_data
from PIL import Image

from liploc.datasets import load_image
from liploc.datasets.scan import _decode_rgb8_png
from liploc.errors import DataError


def _pillow_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _with_chunk(png: bytes, kind: bytes, payload: bytes) -> bytes:
    """``png`` with one more chunk right after IHDR (8 signature + 25 IHDR bytes)."""
    chunk = struct.pack(">I", len(payload)) + kind + payload
    chunk += struct.pack(">I", zlib.crc32(kind + payload))
    return png[:33] + chunk + png[33:]


def test_real_kitti_frames_decode_as_pillow_decodes_them() -> None:
    require_shared_data()
    frames = sorted(KITTI_RAW_SAMPLE.rglob("image_02/data/*.png"))[:3]
    assert frames, f"no camera frames under {KITTI_RAW_SAMPLE}"
    for path in frames:
        assert _decode_rgb8_png(path.read_bytes()) is not None, f"{path}: not on the libspng path"
        np.testing.assert_array_equal(load_image(path), _pillow_rgb(path), err_msg=str(path))


def _png(image: np.ndarray | Image.Image, **save: object) -> bytes:
    out = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(out, format="PNG", **save)
    return out.getvalue()


def test_every_kind_of_png_decodes_as_pillow_decodes_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    cases = {
        # On the libspng path: plain, and with ancillary chunks Pillow ignores.
        "rgb": (_png(rgb), True),
        "gamma": (_with_chunk(_png(rgb), b"gAMA", struct.pack(">I", 100000)), True),
        "colour key": (_with_chunk(_png(rgb), b"tRNS", struct.pack(">HHH", *rgb[0, 0])), True),
        # Left to Pillow's conversion to RGB.
        "rgba": (_png(np.dstack([rgb, grey])), False),
        "grey": (_png(grey), False),
        "palette": (_png(Image.fromarray(rgb).quantize(16)), False),
    }
    for name, (data, fast) in cases.items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        assert (_decode_rgb8_png(data) is not None) == fast, name
        np.testing.assert_array_equal(load_image(path), _pillow_rgb(path), err_msg=name)
    # A 16-bit grey PNG is a depth or raw sensor image, not a camera frame: refused by the one
    # image rule every reader applies (datasets.scan.check_image_header), naming the file.
    deep = tmp_path / "grey 16-bit.png"
    deep.write_bytes(_png(grey.astype(np.uint16) * 257))
    with pytest.raises(DataError, match=r"grey 16-bit\.png: I;16.* image \(16-bit"):
        load_image(deep)


def test_a_damaged_rgb_png_is_an_error_naming_it(tmp_path: Path) -> None:
    data = _png(np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt image") as err:
        load_image(truncated)
    assert err.value.path == truncated
    folder = tmp_path / "a-folder.png"
    folder.mkdir()
    with pytest.raises(DataError, match="cannot read image file"):
        load_image(folder)
