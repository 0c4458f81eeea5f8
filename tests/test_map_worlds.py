"""A map's poses are in one world frame: ``map build`` refuses sequences of different worlds,
naming both, before it loads the model, and records the world it used."""

from __future__ import annotations

from pathlib import Path

import pytest
from corridor_world import write_corridors

from liploc.errors import ConfigError
from liploc.localization.localize import build_map
from liploc.localization.map_growth import one_world


def test_map_build_refuses_sequences_of_different_worlds(tmp_path: Path) -> None:
    # KITTI odometry: every sequence's poses start at its own origin, a world of its own.
    root = write_corridors(tmp_path / "data", ("00", 2, 1), ("01", 2, 2))
    with pytest.raises(ConfigError) as err:
        build_map(tmp_path / "no-such-run", root, ["00", "01"], tmp_path / "map")
    message = str(err.value)
    assert "sequences 00 and 01 are in different world frames" in message
    assert "'00 (own frame)' and '01 (own frame)'" in message
    assert not (tmp_path / "map").exists()


class SharedTown:
    """A reader whose drives 00 and 01 share the town frame and 02 is on its own."""

    def world_frame(self, sequence: str) -> str:
        return "town" if sequence in ("00", "01") else f"{sequence} (own frame)"

    def world_id(self, sequence: str) -> str:
        return f"synth:/data:{self.world_frame(sequence)}"


def test_one_world_is_the_shared_world_id() -> None:
    reader = SharedTown()
    assert one_world(reader, ["00", "01"]) == "synth:/data:town"  # type: ignore[arg-type]
    assert one_world(reader, []) is None  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"sequences 01 and 02 .* \('town' and '02 \(own frame\)'\)"):
        one_world(reader, ["01", "00", "02"])  # type: ignore[arg-type]
