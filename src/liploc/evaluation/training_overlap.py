"""Refusing to evaluate a run on frames it trained or validated on.

A recall measured on training frames says how well the model remembers them, not how well it
localizes: such a figure is not comparable with any published one. The run folder's saved config
says what the run trained and validated on (sequences or frame ranges); evaluation on any frame of
those is refused unless the user asks for it. Sequences are compared by name and frame range
(kitti-a trains on ``00[0:3000]`` and tests on ``00[3000:]``: allowed). Validation drawn from the
training frames (``data.val_fraction``) is covered by the training sequences.
"""

from __future__ import annotations

from collections.abc import Sequence

from liploc.config import Config
from liploc.datasets.sequence_range import SequenceRange
from liploc.errors import ConfigError


def trained_on(config: Config) -> list[tuple[str, SequenceRange]]:
    """(split, range) of every training and validation sequence of the run's config."""
    out: list[tuple[str, SequenceRange]] = []
    for entry in config.data.datasets:
        for split in ("train", "val"):
            out += [(split, SequenceRange.parse(text)) for text in getattr(entry, split)]
    return out


def training_overlaps(config: Config, evaluated: Sequence[SequenceRange]) -> list[str]:
    """One line per evaluated range that shares frames with a training or validation range."""
    seen = trained_on(config)
    lines = []
    for spec in evaluated:
        hits = [f"{split} {rng}" for split, rng in seen if spec.overlaps(rng)]
        if hits:
            lines.append(f"{spec} (the run used {', '.join(hits)})")
    return lines


def refuse_training_data(
    config: Config, evaluated: Sequence[SequenceRange], allow: bool = False, run: str = "the run"
) -> list[str]:
    """Raise a ConfigError naming the evaluated sequences the run trained or validated on.

    With ``allow`` the overlaps are returned instead (to be printed and recorded with the figures).
    """
    lines = training_overlaps(config, evaluated)
    if lines and not allow:
        raise ConfigError(
            f"{run} trained or validated on what it would be evaluated on: {'; '.join(lines)}. "
            "Recall on training frames is not comparable with published figures; evaluate on other "
            "sequences (the protocol's test split) or pass --allow-training-data to go on"
        )
    return lines
