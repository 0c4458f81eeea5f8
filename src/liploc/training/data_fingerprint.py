"""Fingerprint of the data a training run uses, so that a resume on changed data is refused.

A resumed run continues the data order and the validation split of the interrupted one; on a
dataset whose files were added, removed or rewritten in between it would silently train on
something else. The fingerprint covers the layout and sequences of each dataset entry and the list
of files of those sequences (scans, images, pose files) with their sizes, relative to the dataset
root (so moving the dataset elsewhere is not a change). It is cheap: one ``stat`` per file.

The run folder keeps the full listing (``data_fingerprint.json``) so that a refusal can name the
files that changed; checkpoints keep its digest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from liploc.atomic import atomic_write_text
from liploc.config import DataConfig
from liploc.datasets import open_dataset
from liploc.errors import DataError

FILENAME = "data_fingerprint.json"
_SHOWN = 5


class DataChangedError(DataError):
    """The data of a run changed since the run started; ``changes`` says how."""

    def __init__(self, path: str | Path, changes: list[str]) -> None:
        self.changes = changes
        shown = "; ".join(changes[:_SHOWN]) + (
            f"; and {len(changes) - _SHOWN} more" if len(changes) > _SHOWN else ""
        )
        super().__init__(
            path,
            f"the data changed since this run started ({shown}); resuming would train on other data "
            "than the checkpoint's: start a new run (another --out)",
        )


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _sequence_files(reader: Any, sequence: str) -> list[Path]:
    files_of = getattr(reader, "files", None)
    paths: list[Path] = []
    if files_of is not None:
        files = files_of(sequence)
        paths += list(files.scans.values()) + list(files.images.values())
    else:
        for frame in reader.frames(sequence):
            paths += [frame.scan_path, frame.image_path]
    pose_file = getattr(reader, "pose_file", None)
    if pose_file is not None:
        pose = pose_file(sequence)
        if pose is not None and Path(pose).is_file():
            paths.append(Path(pose))
    return paths


def data_listing(data: DataConfig) -> dict[str, Any]:
    """The fingerprint's content: per dataset entry its layout and splits, per sequence its files.

    ``{"entries": [{"layout", "train", "val", "frame_step"}], "files": {"<entry>:<sequence>":
    {relative path: size}}}``; every entry needs its root.
    """
    entries = []
    files: dict[str, dict[str, int]] = {}
    for position, entry in enumerate(data.datasets):
        names = sorted({n.split("[", 1)[0] for n in (*entry.train, *entry.val)})
        entries.append(
            {
                "layout": entry.layout,
                "train": list(entry.train),
                "val": list(entry.val),
                "frame_step": entry.frame_step,
            }
        )
        if not names:
            continue
        if entry.root is None:
            raise DataError("<config>", f"data.datasets[{position}] has no root")
        root = Path(entry.root)
        reader = open_dataset(root, entry.layout)
        for name in names:
            if name not in reader.sequences():
                continue  # the split's own check names a missing sequence
            files[f"{position}:{name}"] = {
                _relative(p, root): p.stat().st_size for p in sorted(_sequence_files(reader, name))
            }
    return {"entries": entries, "files": files}


def digest(listing: dict[str, Any]) -> str:
    """sha256 of a listing (hex)."""
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Lines naming what differs between two listings (empty when they are the same)."""
    changes: list[str] = []
    for i, (a, b) in enumerate(zip(old.get("entries", []), new.get("entries", []), strict=False)):
        for key in ("layout", "train", "val", "frame_step"):
            if a.get(key) != b.get(key):
                changes.append(f"data.datasets[{i}].{key} was {a.get(key)} and is {b.get(key)}")
    if len(old.get("entries", [])) != len(new.get("entries", [])):
        changes.append(
            f"{len(old.get('entries', []))} dataset entries before, {len(new.get('entries', []))} now"
        )
    old_files, new_files = old.get("files", {}), new.get("files", {})
    for key in sorted(old_files.keys() - new_files.keys()):
        changes.append(f"sequence {key.split(':', 1)[1]} is gone")
    for key in sorted(new_files.keys() - old_files.keys()):
        changes.append(f"sequence {key.split(':', 1)[1]} is new")
    for key in sorted(old_files.keys() & new_files.keys()):
        a, b = old_files[key], new_files[key]
        sequence = key.split(":", 1)[1]
        removed = sorted(a.keys() - b.keys())
        added = sorted(b.keys() - a.keys())
        resized = sorted(p for p in a.keys() & b.keys() if a[p] != b[p])
        for label, paths in (("removed", removed), ("added", added), ("changed size", resized)):
            if paths:
                example = ", ".join(paths[:2]) + (", ..." if len(paths) > 2 else "")
                changes.append(f"sequence {sequence}: {len(paths)} file(s) {label} ({example})")
    return changes


def write_listing(path: Path, listing: dict[str, Any]) -> str:
    """Write ``listing`` with its digest to ``path`` (atomically); return the digest."""
    value = digest(listing)
    atomic_write_text(path, json.dumps({"digest": value, **listing}, sort_keys=True) + "\n")
    return value


def check_unchanged(run_dir: Path, saved_digest: str | None, data: DataConfig) -> dict[str, Any]:
    """Raise :class:`DataChangedError` when ``data`` no longer matches the run's fingerprint.

    ``saved_digest`` comes from the checkpoint; the run folder's listing names the changes. A run
    from before fingerprints (no digest) passes. Returns the current listing.
    """
    listing = data_listing(data)
    if saved_digest is None or digest(listing) == saved_digest:
        return listing
    changes: list[str] = []
    try:
        saved = json.loads((run_dir / FILENAME).read_text())
        if saved.get("digest") == saved_digest:
            changes = describe_changes(saved, listing)
    except (OSError, ValueError):
        pass
    raise DataChangedError(
        run_dir, changes or ["the file list or sizes differ (no listing kept to name them)"]
    )
