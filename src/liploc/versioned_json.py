"""The one reader of liploc's versioned JSON records: map manifests, checkpoint records, export
descriptions. Each names its ``format`` and ``version``; anything else is a DataError naming the
file, never a traceback (a record nested thousands of levels deep included)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from liploc.errors import DataError

MAX_RECORD_BYTES = 64 * 1024 * 1024
"""Larger records are refused before parsing (a map's frames list is in its own file)."""


def read_json_file(path: Path, unreadable: str) -> Any:
    """Parsed JSON of ``path``; a DataError naming it (``unreadable (reason)``) when it cannot be
    read, is too large or is nested too deeply."""
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            raise DataError(path, f"{unreadable} (larger than {MAX_RECORD_BYTES // 2**20} MiB)")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"{unreadable} ({err})") from None
    except RecursionError:
        raise DataError(path, f"{unreadable} (nested too deeply)") from None


def read_versioned_json(
    path: Path,
    *,
    fmt: str,
    version: int,
    missing: str,
    unreadable: str,
    other_format: str,
    other_version: str,
) -> dict[str, Any]:
    """The record at ``path`` after checking that it is a JSON object of ``fmt`` at ``version``.

    The messages say what a missing file means, what an unreadable one is, what a record of
    another format is, and what to do with another version (``{version}`` is filled in).
    """
    if not path.is_file():
        raise DataError(path, missing)
    record = read_json_file(path, unreadable)
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise DataError(path, other_format)
    if record.get("version") != version:
        raise DataError(path, other_version.format(version=record.get("version")))
    return record
