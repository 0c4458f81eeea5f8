"""Atomic file writes: a crash never leaves a half-written file where a good one was.

Writes that fail for lack of space (``ENOSPC``, ``EDQUOT``, ``EFBIG``) raise
:class:`~liploc.errors.DiskFullError`, which names the file and the bytes it needed, and leave no
temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from liploc.errors import DiskFullError

SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""errno values that mean "no room for this write"."""

TMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process umask (read without changing it for longer than two calls)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_mode() -> int:
    """Mode of a new file as a plain ``open()`` makes it: 0666 less the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode of a new folder as a plain ``mkdir`` makes it: 0777 less the umask."""
    return 0o777 & ~current_umask()


def is_space_error(err: BaseException) -> bool:
    """Whether ``err`` is an OSError meaning the disk (or a quota, or a size limit) is full."""
    return isinstance(err, OSError) and not isinstance(err, DiskFullError) and err.errno in SPACE_ERRNOS


def disk_full_error(path: str | Path, err: OSError, needed_bytes: int | None = None) -> DiskFullError:
    """A :class:`DiskFullError` for the failed write of ``path``."""
    path = Path(path)
    free = None
    for folder in (path.parent, *path.parents):
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(folder).free
            break
    return DiskFullError(path, err.strerror or str(err), needed_bytes, free)


@contextlib.contextmanager
def reporting_full_disk(path: str | Path, needed_bytes: int | None = None) -> Iterator[None]:
    """Turn a lack-of-space OSError inside the block into a DiskFullError naming ``path``
    (or the file the OSError names)."""
    try:
        yield
    except OSError as err:
        if not is_space_error(err):
            raise
        target = err.filename if isinstance(err.filename, str) else path
        raise disk_full_error(target, err, needed_bytes) from None


def fsync_dir(folder: str | Path) -> None:
    """Make the renames in ``folder`` durable (no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(
    path: str | Path,
    write: Callable[[Path], None],
    *,
    durable: bool = True,
    needed_bytes: int | None = None,
) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``.

    The temporary file lives in the same folder so the rename is atomic on POSIX, and follows the
    umask. ``durable``: fsync before the rename (a cache, which can always be rebuilt, skips it).
    A lack of space raises DiskFullError (``needed_bytes`` says how much the write needed); the
    temporary file is removed on any failure.
    """
    path = Path(path)
    with reporting_full_disk(path, needed_bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with reporting_full_disk(path, needed_bytes):
            # mkstemp makes the file owner-only; give it the mode a plain open() would.
            os.chmod(tmp_path, file_mode())
            write(tmp_path)
            if durable:
                with open(tmp_path, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda p: p.write_bytes(data), durable=durable, needed_bytes=len(data))


def atomic_write_text(path: str | Path, text: str, *, durable: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def npy_bytes(array: object) -> bytes:
    """The ``.npy`` file bytes of an array (for :func:`atomic_write_bytes`)."""
    import io

    import numpy as np

    out = io.BytesIO()
    np.save(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` (UTF-8) to a log file; a full disk raises DiskFullError naming it."""
    data = text.encode("utf-8")
    with reporting_full_disk(path, len(data)), open(path, "ab") as f:
        f.write(data)


def is_temporary_name(name: str) -> bool:
    """Whether a file name is one of our (or safetensors') temporary files: ``.X.*.tmp``, ``X.tmp``."""
    return name.endswith(TMP_SUFFIX)


def sweep_temporary_files(folder: str | Path) -> list[Path]:
    """Remove the temporary files a killed writer left in ``folder`` (not recursive).

    Call it only while holding the folder's lock (a live writer's temporary files look the same).
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if is_temporary_name(entry.name) and entry.is_file():
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def sweep_stale_temporary_files(folder: str | Path, older_than_s: float = 3600.0) -> int:
    """Remove temporary files under ``folder`` (recursively) not touched for ``older_than_s``:
    leftovers of killed writers in a folder that live writers share (a cache), where a young
    temporary file may belong to a running process. Returns how many were removed."""
    import time

    removed = 0
    cutoff = time.time() - older_than_s
    for entry in Path(folder).rglob(f"*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                entry.unlink()
                removed += 1
    return removed
