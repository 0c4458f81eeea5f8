"""Errors that name the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class LiplocError(Exception):
    """Base class of liploc's own errors (caught by the CLI and shown without a traceback)."""


class DataError(LiplocError, ValueError):
    """A data file is missing, unreadable or malformed.

    The message always starts with the path so that a user with thousands of files knows which one.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(LiplocError, ValueError):
    """A configuration file or override is invalid."""


class EmbeddingError(LiplocError, ValueError):
    """Embeddings of the wrong shape, dimension or norm were given to an index or a map."""


class ModelMismatchError(LiplocError, ValueError):
    """Embeddings made by one model were searched against a map built by another model."""


class DiskFullError(LiplocError):
    """A file could not be written for lack of space (full disk, quota or file-size limit).

    The message names the file and how many bytes it needed; what was written before is intact.
    """

    def __init__(
        self, path: str | Path, reason: str, needed_bytes: int | None, free_bytes: int | None
    ) -> None:
        self.path = Path(path)
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        need = f"{needed_bytes:,} bytes needed" if needed_bytes is not None else "size unknown"
        free = f", {free_bytes:,} bytes free on that disk" if free_bytes is not None else ""
        super().__init__(f"could not write {self.path}: {reason} ({need}{free})")
