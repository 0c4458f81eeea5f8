"""``configs/tiny.yaml`` for tests: its config over a data folder, and tiny training runs.

Import from any test module (pytest puts ``tests/`` on ``sys.path``)::

    from tiny_runs import TINY, tiny_config, train_tiny
"""

from __future__ import annotations

from pathlib import Path

from liploc.config import Config, load_config
from liploc.runtime.data_roots import resolve_data_roots
from liploc.training.train import train

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
"""The tiny training config of the repository."""


def tiny_config(root: Path, *overrides: str) -> Config:
    """:data:`TINY` with no loader workers and ``overrides``, reading the datasets under ``root``."""
    return resolve_data_roots(load_config(TINY, ["data.num_workers=0", *overrides]), [root])


def train_tiny(out: Path, datasets: str, *overrides: str) -> Path:
    """Train :data:`TINY` on 32x32 images into ``out`` (without progress bars); returns ``out``.

    Args:
        datasets: the ``data.datasets`` entry in YAML, e.g. ``{root: '/data', train: ['00']}``.
        overrides: more ``key=value`` settings, after ``data.datasets`` and ``data.image_size``.
    """
    cfg = load_config(TINY, [f"data.datasets=[{datasets}]", "data.image_size=[32, 32]", *overrides])
    train(cfg, out, progress=False)
    return out


def train_on_00(root: Path, out: Path, *, seed: int, steps: int, batch_size: int) -> Path:
    """:func:`train_tiny` on sequence 00 of ``root``, validated on 01; returns ``out``."""
    datasets = f"{{root: '{root}', train: ['00'], val: ['01']}}"
    return train_tiny(
        out, datasets, f"train.max_steps={steps}", f"train.seed={seed}", f"train.batch_size={batch_size}"
    )


__all__ = ["TINY", "tiny_config", "train_on_00", "train_tiny"]
