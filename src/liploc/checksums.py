"""File checksums that let checkpoints and map folders refuse truncated or tampered files."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_size_and_sha256(path: str | Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex digest) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
