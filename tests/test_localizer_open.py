"""``Localizer.open`` loads the map while it builds the camera tower, and still says what is wrong
with a map before anything else."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from liploc.errors import DataError
from liploc.localization import localize
from liploc.localization.lidar_map import LidarMap


class TowerBuilt(Exception):
    """Stands for everything after the tower: the test stops ``open`` there."""


def _open_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, load_map, load_tower) -> None:
    checkpoint = localize.MapFolder(tmp_path).checkpoint
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"")  # the map's model copy is there (the stub tower never reads it)
    monkeypatch.setattr(LidarMap, "load", classmethod(lambda cls, path: load_map(path)))
    monkeypatch.setattr(localize, "load_image_tower_from_checkpoint", load_tower)
    localize.Localizer.open(tmp_path, device="cpu")


def test_the_map_loads_while_the_tower_is_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Each side waits for the other to have started: one after the other, the first would wait
    # in vain (and say so), together both see the other.
    map_started, tower_started = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def load_map(path: Path) -> object:
        map_started.set()
        seen["map_saw_tower"] = tower_started.wait(timeout=10)
        seen["map_thread"] = threading.current_thread().name
        return object()

    def load_tower(checkpoint: Path) -> tuple:
        tower_started.set()
        seen["tower_saw_map"] = map_started.wait(timeout=10)
        seen["tower_thread"] = threading.current_thread().name
        raise TowerBuilt

    with pytest.raises(TowerBuilt):
        _open_with(monkeypatch, tmp_path, load_map, load_tower)
    assert seen["map_saw_tower"] and seen["tower_saw_map"]
    assert seen["map_thread"] != seen["tower_thread"]


def test_a_map_that_does_not_load_is_reported_before_the_tower(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def load_map(path: Path) -> object:
        raise DataError(path / "manifest.json", "not a liploc map")

    def load_tower(checkpoint: Path) -> tuple:
        raise DataError(checkpoint, "weights do not match")

    with pytest.raises(DataError, match="not a liploc map"):
        _open_with(monkeypatch, tmp_path, load_map, load_tower)
