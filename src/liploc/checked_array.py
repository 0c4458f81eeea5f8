"""Cache entries that cannot lie: a ``.npy`` array followed by a checksum of its bytes.

An entry is a plain ``.npy`` file (``np.load`` still reads it) with a 24-byte trailer: the magic
``LIPLOCK1`` and the 16-byte BLAKE2b digest of everything before it. Reading checks the digest,
so a flipped byte, a truncated file or rows rewritten by another tool are detected (cheaply:
hashing runs at several hundred MB/s) and the entry is rebuilt instead of silently used.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from liploc.atomic import atomic_write_bytes
from liploc.faults import fault_point

MAGIC = b"LIPLOCK1"
_DIGEST = 16
_TRAILER = len(MAGIC) + _DIGEST


class DamagedEntry(ValueError):
    """A cache entry whose checksum or format is wrong (the message says which)."""


def _digest(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=_DIGEST).digest()


def encode_checked(array: np.ndarray) -> bytes:
    """The bytes of a checked entry holding ``array``."""
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(array), allow_pickle=False)
    body = out.getvalue()
    return body + MAGIC + _digest(body)


def decode_checked(data: bytes) -> np.ndarray:
    """The array of a checked entry; raises DamagedEntry when it does not verify."""
    if len(data) < _TRAILER or data[-_TRAILER:-_DIGEST] != MAGIC:
        raise DamagedEntry("no checksum trailer (truncated, or written by another tool)")
    body = memoryview(data)[:-_TRAILER]
    if _digest(body) != data[-_DIGEST:]:
        raise DamagedEntry("checksum mismatch (corrupted or changed content)")
    try:
        return np.load(io.BytesIO(body), allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DamagedEntry(f"not a readable .npy array ({err})") from None


def write_checked(path: str | Path, array: np.ndarray) -> int:
    """Write a checked entry atomically (no fsync: a cache can always be rebuilt); returns its size."""
    data = encode_checked(array)
    atomic_write_bytes(path, data, durable=False)
    fault_point("cache.entry_written")
    return len(data)


def read_checked(path: str | Path) -> np.ndarray:
    """Read and verify a checked entry (OSError when unreadable, DamagedEntry when wrong)."""
    return decode_checked(Path(path).read_bytes())
