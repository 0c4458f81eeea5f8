"""A small map for the serving and ONNX tests: corridor drives, a tiny trained model, its map.

Built once per test session (training and map building take seconds) and shared by the test
modules through :func:`map_world`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from corridor_world import write_corridor

from liploc.config import load_config
from liploc.localization.localize import build_map
from liploc.training.train import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
MAP_SEQUENCE = "02"
MAP_FRAMES = 30


def _train(root: Path, out: Path, seed: int, steps: int) -> Path:
    cfg = load_config(
        CONFIG,
        [
            f"data.datasets=[{{root: '{root}', train: ['00'], val: ['01']}}]",
            "data.image_size=[32, 32]",
            f"train.max_steps={steps}",
            f"train.seed={seed}",
            "train.batch_size=8",
        ],
    )
    train(cfg, out, progress=False)
    return out


@functools.cache
def _build(base: Path) -> dict[str, Path]:
    root = base / "corridor"
    write_corridor(root, "00", 24, seed=1)
    write_corridor(root, "01", 8, seed=2)
    write_corridor(root, MAP_SEQUENCE, MAP_FRAMES, seed=3)
    run = _train(root, base / "run", seed=0, steps=3)
    other_run = _train(root, base / "other-run", seed=1, steps=1)
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
