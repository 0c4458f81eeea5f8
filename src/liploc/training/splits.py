"""Training and validation frames of a config: named sequences checked, validation without
leaks, what was left out and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from liploc.config import DataConfig
from liploc.datasets import Frame, open_dataset
from liploc.datasets.base import unpaired_count
from liploc.errors import DataError
from liploc.runtime.data_roots import SplitName, check_root, posed, split_frames

if TYPE_CHECKING:
    pass


@dataclass
class TrainingSplits:
    """Training and validation frames, and what was left out and why."""

    train: list[Frame]
    val: list[Frame]
    notes: list[str] = field(default_factory=list)
    """Human-readable lines: frames left out and why, how validation was chosen."""
    left_out: dict[str, int] = field(default_factory=dict)
    """Frames of the named sequences used by neither split, by reason (``unpaired``: a scan without
    image or the reverse; ``no_pose``; ``val_gap``: within ``val_gap_m`` of a validation frame;
    ``missing_sequence``: sequences skipped with ``allow_missing``)."""
    missing_sequences: list[str] = field(default_factory=list)
    """``layout:sequence`` of the sequences left out whole (only with ``allow_missing``)."""
    val_split: str = "none"
    """``blocks``, ``random``, ``sequences`` (the val sequences) or ``none``."""
    min_train_val_distance_m: float | None = None
    """Smallest distance between a training and a validation frame of one sequence (None: no
    sequence is in both splits)."""

    def summary(self, data: DataConfig) -> dict[str, object]:
        """JSON-ready record of the splits for ``summary.json``."""
        return {
            "train_frames": len(self.train),
            "val_frames": len(self.val),
            "val_split": self.val_split,
            "val_gap_m": data.val_gap_m if self.val_split == "blocks" else None,
            "min_train_val_distance_m": self.min_train_val_distance_m,
            "left_out": dict(self.left_out),
            "missing_sequences": list(self.missing_sequences),
            "train_sequences": sorted({f.sequence for f in self.train}),
            "val_sequences": sorted({f.sequence for f in self.val}),
        }


def _base_sequence(name: str) -> str:
    # A frame range in a split (``00[0:3000]``) names a part of sequence ``00``.
    return name.split("[", 1)[0]


def _missing_parts(reader: object, sequence: str) -> list[tuple[Path, str]]:
    """(path, problem) for each of scans, images and poses that ``sequence`` has none of."""
    files_of = getattr(reader, "files", None)
    if files_of is None:  # a reader without numbered scan/image folders: only poses are checked
        frames = reader.frames(sequence)  # type: ignore[attr-defined]
        if frames and all(f.pose is None for f in frames):
            return [(Path(str(reader.root)), f"sequence {sequence} has no poses")]  # type: ignore[attr-defined]
        return []
    files = files_of(sequence)
    out: list[tuple[Path, str]] = []
    for kind, folder, found in (
        ("scans", files.scan_folder, files.scans),
        ("images", files.image_folder, files.images),
    ):
        if not found:
            state = "is missing" if not folder.is_dir() else "holds none"
            out.append((folder, f"sequence {sequence} has no {kind} (the folder {state})"))
    if not out:
        frames = reader.frames(sequence)  # type: ignore[attr-defined]
        if frames and all(f.pose is None for f in frames):
            source = reader.pose_source(sequence) if hasattr(reader, "pose_source") else "its pose file"
            path = getattr(reader, "pose_file", lambda s: None)(sequence)
            if path is None and hasattr(reader, "pose_file_candidates"):
                path = reader.pose_file_candidates(sequence)[0]
            path = path or Path(str(reader.root))  # type: ignore[attr-defined]
            out.append((Path(path), f"sequence {sequence} has no poses ({source})"))
    return out


def check_named_sequences(
    data: DataConfig, splits: Sequence[SplitName] = ("train", "val")
) -> tuple[DataConfig, list[str]]:
    """Refuse sequences named in ``splits`` that have no images, no scans or no poses.

    Returns ``data`` unchanged and no skipped names when all are complete. Otherwise a DataError
    naming the sequence and the missing folder or file, unless ``data.allow_missing``: then a copy
    of ``data`` without those sequences and their ``layout:sequence`` names.
    """
    problems: list[tuple[Path, str]] = []
    skipped: list[str] = []
    kept = data.model_copy(deep=True)
    for position, entry in enumerate(data.datasets):
        names = {n for split in splits for n in getattr(entry, split)}
        if not names:
            continue
        reader = open_dataset(check_root(entry, position), entry.layout)
        for name in sorted(names):
            missing = _missing_parts(reader, _base_sequence(name))
            if missing:
                problems.extend(missing)
                skipped.append(f"{entry.layout}:{name}")
                for split in splits:
                    lst = getattr(kept.datasets[position], split)
                    setattr(kept.datasets[position], split, [n for n in lst if n != name])
    if problems and not data.allow_missing:
        path, first = problems[0]
        others = "".join(f"; {p}: {problem}" for p, problem in problems[1:])
        raise DataError(
            path,
            f"{first}{others}. Training on a sequence without it would drop its frames; complete the "
            "download, remove the sequence from the config, or pass --allow-missing to go on without it",
        )
    return kept, skipped


def _unpaired_count(data: DataConfig, split: SplitName) -> int:
    """Scans without an image and images without a scan in the ``split`` sequences."""
    count = 0
    for position, entry in enumerate(data.datasets):
        names = getattr(entry, split)
        if not names:
            continue
        reader = open_dataset(check_root(entry, position), entry.layout)
        count += sum(unpaired_count(reader, name) for name in {_base_sequence(n) for n in names})
    return count


def _posed_split(
    data: DataConfig, split: SplitName, left_out: dict[str, int], notes: list[str]
) -> list[Frame]:
    """The frames of ``split`` (``train`` or ``val``) that have a pose; those without one and the
    unpaired scans or images are added to ``left_out`` (and a note)."""
    frames, no_pose = posed(split_frames(data, split))
    left_out["no_pose"] += no_pose
    left_out["unpaired"] += _unpaired_count(data, split)
    if no_pose:
        what = "training" if split == "train" else "validation"
        notes.append(f"left out {no_pose} {what} frames without a pose")
    return frames


def training_splits(data: DataConfig, seed: int) -> TrainingSplits:
    """Training and validation frames of ``data``, with a record of everything left out.

    A named sequence without images, scans or poses is a DataError (see
    :func:`check_named_sequences`). Frames without a pose are left out (the pose-aware loss and
    validation positions need one) and counted. Validation takes the ``val`` sequences when any
    entry lists some; else ``val_fraction`` of the training frames, held out by ``val_split``:
    contiguous blocks with a ``val_gap_m`` gap (default) or at random (the paper's reference code).
    """
    from liploc.training.validation_split import (
        block_split,
        min_train_val_distance,
        random_split,
        val_frames_within,
    )

    data, missing = check_named_sequences(data)
    notes: list[str] = []
    left_out = {"unpaired": 0, "no_pose": 0, "val_gap": 0, "missing_sequence": len(missing)}
    if missing:
        notes.append(
            f"left out {len(missing)} sequence(s) with missing data (--allow-missing): {', '.join(missing)}"
        )
    train = _posed_split(data, "train", left_out, notes)
    val_split = "none"
    if any(entry.val for entry in data.datasets):
        val = _posed_split(data, "val", left_out, notes)
        val_split = "sequences"
        notes.append(f"validation: {len(val)} frames of the val sequences")
    elif data.val_fraction > 0 and len(train) > 1:
        if data.val_split == "random":
            held = random_split(train, data.val_fraction, seed)
            notes.append(
                f"validation: {len(held.val)} random training frames ({data.val_fraction:.0%}, seed {seed}; "
                "the paper's split: validation frames have training neighbours metres away)"
            )
        else:
            held = block_split(train, data.val_fraction, data.val_gap_m, seed)
            notes.append(
                f"validation: {len(held.val)} frames in {held.blocks} contiguous region(s), one per world "
                f"({data.val_fraction:.0%}, seed {seed}); gap {data.val_gap_m:g} m: {len(held.gap)} frames "
                "within it used by neither split"
            )
        train, val, val_split = held.train, held.val, data.val_split
        left_out["val_gap"] = len(held.gap)
    else:
        val = []
        notes.append("validation: none (no val sequences and val_fraction 0)")
    if left_out["unpaired"]:
        notes.append(f"left out {left_out['unpaired']} scans or images without their pair")
    distance = min_train_val_distance(train, val)
    if val:
        notes.append(
            "smallest train-validation distance: "
            + (f"{distance:.1f} m (same world)" if distance is not None else "none (no world in both)")
        )
    if val_split == "sequences" and distance is not None and distance < data.val_gap_m:
        near = val_frames_within(train, val, data.val_gap_m)
        notes.append(
            f"warning: validation leaks: {near} of {len(val)} validation frames lie within "
            f"{data.val_gap_m:g} m of a training frame (the val sequences pass where training drives "
            "do, e.g. a partner drive in the next lane), so validation figures overstate; name val "
            "sequences on other streets, or leave val empty to hold out a leak-free block "
            "(data.val_split: blocks)"
        )
    return TrainingSplits(
        train=train,
        val=val,
        notes=notes,
        left_out=left_out,
        missing_sequences=missing,
        val_split=val_split,
        min_train_val_distance_m=distance,
    )
