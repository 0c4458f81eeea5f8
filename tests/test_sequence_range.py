"""Frame ranges in splits (``00[0:3000]``): parsing, selection, overlap, and configs using them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_kitti_odometry

from liploc.config import load_config
from liploc.datasets.sequence_range import SequenceRange
from liploc.errors import ConfigError
from liploc.runtime.data_roots import split_frames


def test_parse_and_print() -> None:
    assert SequenceRange.parse("00") == SequenceRange("00")
    assert SequenceRange.parse("00[0:3000]") == SequenceRange("00", 0, 3000)
    assert SequenceRange.parse("00[3000:]") == SequenceRange("00", 3000, None)
    assert SequenceRange.parse("2013_05_28_drive_0000_sync[:50]") == SequenceRange(
        "2013_05_28_drive_0000_sync", None, 50
    )
    assert str(SequenceRange("00", 3000, None)) == "00[3000:]" and str(SequenceRange("08")) == "08"
    assert SequenceRange("00", 0, 3000).slug == "00_0-3000"
    assert (
        SequenceRange("00", 3000).slug == "00_3000-end" and SequenceRange("00", None, 5).slug == "00_start-5"
    )
    for bad in ("00[5:2]", "00[a:3]", "00[3]", "", "00 [1:2]"):
        with pytest.raises(ValueError):
            SequenceRange.parse(bad)


def test_overlap_is_by_sequence_and_frame_numbers() -> None:
    train = SequenceRange("00", 0, 3000)
    assert not train.overlaps(SequenceRange("00", 3000, None))  # kitti-a: train and test disjoint
    assert train.overlaps(SequenceRange("00", 2999, None))
    assert train.overlaps(SequenceRange("00"))
    assert not train.overlaps(SequenceRange("02"))
    assert SequenceRange("00", None, 10).overlaps(SequenceRange("00", 5, 6))
    assert not SequenceRange("00", 10, 20).overlaps(SequenceRange("00", None, 10))


def test_splits_take_frame_ranges(tmp_path: Path) -> None:
    write_kitti_odometry(tmp_path, "00", n_frames=10)
    cfg = load_config(None, [f"data.datasets=[{{root: '{tmp_path}', train: ['00[0:6]'], test: ['00[6:]']}}]"])
    assert [f.index for f in split_frames(cfg.data, "train")] == [0, 1, 2, 3, 4, 5]
    assert [f.index for f in split_frames(cfg.data, "test")] == [6, 7, 8, 9]
    stepped = load_config(None, [f"data.datasets=[{{root: '{tmp_path}', train: ['00[3:]'], frame_step: 3}}]"])
    assert [f.index for f in split_frames(stepped.data, "train")] == [3, 6, 9]
    with pytest.raises(ConfigError, match=r"data.datasets.0.train.*00\[6:2\]"):
        load_config(None, ["data.datasets=[{train: ['00[6:2]']}]"])
