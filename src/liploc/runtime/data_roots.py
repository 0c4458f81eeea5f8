"""Frames of a config's splits: dataset roots from ``--data-root`` and the frames each split names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from liploc.config import Config, DataConfig, DatasetSplit
from liploc.datasets import Frame, open_dataset
from liploc.datasets.sequence_range import parse_ranges
from liploc.errors import ConfigError

if TYPE_CHECKING:
    pass

SplitName = Literal["train", "val", "test"]


# --- frames of a split ---------------------------------------------------------------------------
def resolve_data_roots(config: Config, data_roots: Sequence[str | Path]) -> Config:
    """A copy of ``config`` with dataset roots set from ``--data-root`` values.

    ``DIR`` sets the root of every dataset entry that has none; ``LAYOUT=DIR`` sets the root of
    every entry of that layout (for configs combining datasets). A value whose part before ``=``
    names no layout of the config is taken as a plain folder (folder names may hold ``=``).
    """
    config = config.model_copy(deep=True)
    layouts = {d.layout for d in config.data.datasets}
    for value in data_roots:
        text = str(value)
        name, sep, folder = text.partition("=")
        if sep and name in layouts:
            for entry in config.data.datasets:
                if entry.layout == name:
                    entry.root = Path(folder)
        else:
            for entry in config.data.datasets:
                if entry.root is None:
                    entry.root = Path(text)
    return config


def check_root(entry: DatasetSplit, position: int) -> Path:
    if entry.root is None:
        raise ConfigError(
            f"data.datasets[{position}] (layout {entry.layout}) has no root: pass --data-root DIR "
            f"(or --data-root {entry.layout}=DIR) or set data.datasets[{position}].root"
        )
    return entry.root


def split_frames(data: DataConfig, split: SplitName) -> list[Frame]:
    """Frames of the ``split`` sequences of every dataset entry, every ``frame_step``-th frame.

    A sequence may be a frame range (``00[0:3000]``: frame numbers 0-2999; see
    :class:`~liploc.datasets.sequence_range.SequenceRange`).

    Poses are not required here (see :func:`posed`). A named sequence missing from its folder is a
    DataError naming the folder and the sequences found.
    """
    frames: list[Frame] = []
    for position, entry in enumerate(data.datasets):
        sequences = getattr(entry, split)
        if not sequences:
            continue
        reader = open_dataset(check_root(entry, position), entry.layout)
        for spec in parse_ranges(sequences):
            frames.extend(spec.select(reader.frames(spec.sequence))[:: entry.frame_step])
    return frames


def posed(frames: Sequence[Frame]) -> tuple[list[Frame], int]:
    """The frames that have a pose, and how many had none."""
    kept = [f for f in frames if f.pose is not None]
    return kept, len(frames) - len(kept)
