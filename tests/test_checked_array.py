"""Checked cache entries read back exactly what was written, and refuse what does not add up."""

from __future__ import annotations

import io

import numpy as np
import pytest

from liploc.checked_array import MAGIC, DamagedEntry, _digest, decode_checked, encode_checked


def _checked(body: bytes) -> bytes:
    """``body`` with a valid trailer, as if an entry had been written with it."""
    return body + MAGIC + _digest("", body)


ARRAYS = {
    "uint8 image": np.arange(64 * 48 * 3, dtype=np.uint8).reshape(64, 48, 3),
    "float32 range": np.linspace(-1, 50, 5 * 7, dtype=np.float32).reshape(5, 7),
    "big-endian int": np.arange(12, dtype=">i4").reshape(3, 4),
    "bool mask": np.eye(4, dtype=bool),
    "scalar": np.array(3.5),
    "empty": np.zeros((0, 3), dtype=np.float32),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_entries_decode_to_the_array_written(name: str) -> None:
    array = ARRAYS[name]
    out = decode_checked(encode_checked(array))
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    out[...] = 0  # writable, and not a view of the entry's bytes


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_fortran_order_and_every_npy_version_decode_as_numpy_reads_them(version: tuple[int, int]) -> None:
    array = np.asfortranarray(np.arange(30, dtype=np.float64).reshape(5, 6))
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version)
    out = decode_checked(_checked(buf.getvalue()))
    np.testing.assert_array_equal(out, np.load(io.BytesIO(buf.getvalue())))


def test_an_entry_whose_header_and_data_disagree_is_damaged() -> None:
    # A valid checksum over a header that claims more data than follows (an entry written by a
    # broken tool): refused, not read past its end or reshaped into garbage.
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros((4, 4), np.float32))
    body = buf.getvalue().replace(b"(4, 4)", b"(4, 5)")
    with pytest.raises(DamagedEntry, match="data bytes"):
        decode_checked(_checked(body))
    with pytest.raises(DamagedEntry, match="npy"):
        decode_checked(_checked(b"not an npy file at all"))
