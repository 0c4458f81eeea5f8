"""Folders replaced in one step: a map, an ONNX export. The new folder is written beside the
target under a scratch name (``.NAME.<pid>.<random>.tmp``), then exchanged with the target
(Linux ``renameat2``), so a reader sees the old folder or the new one, never neither; scratch
folders of killed writers (dead pid) are swept by the next writer. A target that is a symlink
is resolved first: the folder it points to is replaced and the link stays."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
from pathlib import Path

from liploc.faults import fault_point


def real_folder(target: str | Path) -> Path:
    """``target``, or what it points to when it is a symlink (its folder is the one replaced)."""
    target = Path(target)
    return Path(os.path.realpath(target)) if target.is_symlink() else target


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False  # file system without exchange: fall back to two renames
    raise OSError(code, os.strerror(code), str(b))


def scratch_path(target: Path, kind: str) -> Path:
    """``.NAME.<pid>.<random>.<kind>`` beside ``target``: the pid lets a later save tell a
    killed builder's leftovers from a running one's."""
    return target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_folder_leftovers(target: str | Path) -> list[Path]:
    """Remove the scratch folders that killed replacements of ``target`` left beside it."""
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.[0-9A-Za-z]+\.(tmp|old)$")
    removed = []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match and int(match[1]) != os.getpid() and not pid_alive(int(match[1])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def replace_folder(new: Path, target: Path, swapped_fault: str | None = None) -> None:
    """Put folder ``new`` at ``target`` in one atomic step; an existing ``target`` is swapped out
    and removed. Without an atomic exchange, the old folder is moved aside first (a reader may
    then briefly find none) and put back if the second rename fails. ``new`` must be a
    :func:`scratch_path` of ``target`` (same file system)."""
    if not target.exists():
        os.replace(new, target)
        return
    if exchange(new, target):
        if swapped_fault is not None:
            fault_point(swapped_fault)
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old map
        return
    old = scratch_path(target, "old")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.replace(old, target)  # put the previous map back
        raise
    shutil.rmtree(old, ignore_errors=True)
