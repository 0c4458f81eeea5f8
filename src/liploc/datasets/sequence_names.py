"""Sequence names as users type them: ``8`` for KITTI's ``08``, ``13`` for ``2011_09_26_drive_0013_sync``.

An exact name always wins. Otherwise a name made of digits matches a sequence whose own number
(the digits of a KITTI sequence, or the drive number of a KITTI raw / KITTI-360 drive) has the same
value; a match must be unique, and an ambiguous or unknown name is an error that lists the
candidates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from liploc.errors import DataError

_DRIVE_NUMBER = re.compile(r"drive_(\d+)")


def sequence_number(name: str) -> int | None:
    """The number a user would type for sequence ``name`` (``08`` -> 8; ``..._drive_0013_sync`` -> 13)."""
    if name.isdigit():
        return int(name)
    match = _DRIVE_NUMBER.search(name)
    return int(match.group(1)) if match else None


def resolve_sequence_name(typed: str, known: Sequence[str], data_root: str | Path = "") -> str:
    """The sequence of ``known`` that ``typed`` names.

    Raises:
        DataError: naming ``data_root`` when no sequence or more than one matches.
    """
    if typed in known:
        return typed
    candidates: list[str] = []
    if typed.isdigit():
        value = int(typed)
        candidates = [name for name in known if sequence_number(name) == value]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise DataError(data_root, f"sequence '{typed}' is ambiguous: it matches {', '.join(candidates)}")
    shown = ", ".join(known[:12]) + (f" ... ({len(known)} in all)" if len(known) > 12 else "")
    raise DataError(data_root, f"no sequence '{typed}' (found: {shown or 'none'})")
