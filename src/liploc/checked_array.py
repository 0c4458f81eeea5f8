"""Cache entries that cannot lie: a ``.npy`` array followed by a checksum of its bytes.

An entry is a plain ``.npy`` file (``np.load`` still reads it) with a 24-byte trailer: the magic
``LIPLOCK2`` and the 16-byte BLAKE2b digest of the entry's key and everything before the trailer.
Reading checks the digest, so a flipped byte, a truncated file or rows rewritten by another tool
are detected (cheaply: hashing runs at several hundred MB/s) and the entry is rebuilt instead of
silently used. The key is where the entry lives (the last three parts of its path: settings or
model, modality, source), so an entry copied or swapped onto another key fails too: an image
embedding copied over the LiDAR entry, or the entries of two frames swapped.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import warnings
from pathlib import Path

import numpy as np

from liploc.atomic import atomic_write_bytes
from liploc.faults import fault_point

MAGIC = b"LIPLOCK2"
_DIGEST = 16
_TRAILER = len(MAGIC) + _DIGEST


class CacheWriteWarning:
    """Warns once per cache that an entry could not be written (a read-only or full disk): a cache
    only saves time, so the work goes on, and one warning says so instead of one per entry."""

    def __init__(self, cache: str) -> None:
        self.cache = cache
        self.reported = False

    def report(self, err: Exception) -> None:
        """Warn of ``err`` unless this cache already did (the warning points at the code that
        called the cache's method, as the caller of ``report`` is that method)."""
        if not self.reported:
            self.reported = True
            warnings.warn(
                f"the {self.cache} could not be written, which only costs speed: {err}",
                UserWarning,
                stacklevel=3,
            )


class DamagedEntry(ValueError):
    """A cache entry whose checksum or format is wrong (the message says which)."""


def _digest(key: str, data: bytes | memoryview) -> bytes:
    h = hashlib.blake2b(key.encode("utf-8") + b"\0", digest_size=_DIGEST)
    h.update(data)
    return h.digest()


def entry_key(path: str | Path) -> str:
    """The key a cache entry's checksum covers: the last three parts of its path."""
    return "/".join(Path(path).parts[-3:])


def encode_checked(array: np.ndarray, key: str = "") -> bytes:
    """The bytes of a checked entry holding ``array`` under ``key``."""
    out = io.BytesIO()
    np.save(out, np.asarray(array, order="C"), allow_pickle=False)  # C order; 0-d stays 0-d
    body = out.getvalue()
    return body + MAGIC + _digest(key, body)


@functools.lru_cache(maxsize=256)
def _npy_header(prefix: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    """dtype, shape and Fortran order of an ``.npy`` header (memoised: numpy parses it with
    ``ast.literal_eval``, a third of a small entry's read, and a cache holds few distinct ones)."""
    fp = io.BytesIO(prefix)
    version = np.lib.format.read_magic(fp)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(fp)
    return dtype, tuple(shape), bool(fortran)


def _npy_array(body: memoryview) -> np.ndarray:
    """The array of ``.npy`` bytes, without numpy's per-call header parsing and file emulation."""
    if bytes(body[:6]) != b"\x93NUMPY" or len(body) < 12:
        raise ValueError("no .npy magic")
    # Version 1 has a 2-byte header length, versions 2 and 3 a 4-byte one.
    start, size = (10, 2) if body[6] == 1 else (12, 4)
    end = start + int.from_bytes(body[8 : 8 + size], "little")
    dtype, shape, fortran = _npy_header(bytes(body[:end]))
    if dtype.hasobject:
        raise ValueError("object arrays are not cache entries")
    count = math.prod(shape)
    if len(body) - end != count * dtype.itemsize:
        raise ValueError(f"{len(body) - end} data bytes for shape {shape} of {dtype}")
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=end)
    array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    return array.copy()  # writable, and free of the file's bytes


def decode_checked(data: bytes, key: str = "") -> np.ndarray:
    """The array of a checked entry under ``key``; raises DamagedEntry when it does not verify."""
    if len(data) < _TRAILER or data[-_TRAILER:-_DIGEST] != MAGIC:
        raise DamagedEntry("no checksum trailer (truncated, or written by another tool)")
    body = memoryview(data)[:-_TRAILER]
    if _digest(key, body) != data[-_DIGEST:]:
        raise DamagedEntry("checksum mismatch (corrupted or changed content, or another entry's)")
    try:
        return _npy_array(body)
    except (OSError, ValueError, EOFError) as err:
        raise DamagedEntry(f"not a readable .npy array ({err})") from None


def write_checked(path: str | Path, array: np.ndarray) -> int:
    """Write a checked entry atomically (no fsync: a cache can always be rebuilt); returns its size."""
    data = encode_checked(array, entry_key(path))
    atomic_write_bytes(path, data, durable=False)
    fault_point("cache.entry_written")
    return len(data)


def read_checked(path: str | Path) -> np.ndarray:
    """Read and verify a checked entry (OSError when unreadable, DamagedEntry when wrong)."""
    return decode_checked(Path(path).read_bytes(), entry_key(path))
