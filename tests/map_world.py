"""A small map for the serving and ONNX tests: corridor drives, a tiny trained model, its map.

Built once per test session (training and map building take seconds) and shared by the test
modules through :func:`map_world`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from corridor_world import write_corridors
from tiny_runs import train_on_00

from liploc.localization.localize import build_map

MAP_SEQUENCE = "02"
MAP_FRAMES = 30


@functools.cache
def _build(base: Path) -> dict[str, Path]:
    root = base / "corridor"
    write_corridors(root, ("00", 24, 1), ("01", 8, 2), (MAP_SEQUENCE, MAP_FRAMES, 3))
    run = train_on_00(root, base / "run", seed=0, steps=3, batch_size=8)
    other_run = train_on_00(root, base / "other-run", seed=1, steps=1, batch_size=8)
    map_dir = base / "map"
    build_map(run, root, [MAP_SEQUENCE], map_dir, device="cpu")
    return {"root": root, "run": run, "other_run": other_run, "map": map_dir}


@pytest.fixture(scope="session")
def map_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths: ``root`` (dataset), ``run`` and ``other_run`` (two models), ``map`` (built by ``run``)."""
    return _build(tmp_path_factory.getbasetemp() / "map-world")


def query_image(root: Path, frame: int) -> Path:
    """The camera image of ``frame`` of the map's sequence."""
    return root / "sequences" / MAP_SEQUENCE / "image_2" / f"{frame:06d}.png"
