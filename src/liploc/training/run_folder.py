"""The folder of one training run: where each file goes, its logs, and loading its model back.

Layout::

    RUN/
      config.yaml                  the full configuration used (every default written out)
      train.log                    what the run did, in words (splits, resume, epoch summaries)
      metrics.csv                  one row per logged step: loss, learning rates, pairs/s
      epochs.csv                   one row per epoch: train loss, val loss, in-batch val top-1
      summary.json                 written at the end: steps, best checkpoint, final metrics
      checkpoints/last.safetensors (+ .json)   model, loss, optimiser: resumes the run
      checkpoints/best.safetensors (+ .json)   model and loss at the lowest validation loss
      cache/                       preprocessed inputs (when data.cache and no data.cache_dir)
      tensorboard/                 TensorBoard events (config train.log = tensorboard, when installed)
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liploc.atomic import atomic_write_text
from liploc.config import Config, config_from_dict
from liploc.errors import DataError

if TYPE_CHECKING:
    from liploc.models import TwoTowerModel

MODEL_PREFIX = "model."
"""Checkpoint tensors of the two-tower model are named ``model.<state dict key>``."""


@dataclass(frozen=True)
class RunFolder:
    """Paths of a run folder (nothing is created until something is written)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def epochs(self) -> Path:
        return self.root / "epochs.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.safetensors"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.safetensors"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def has_run(self) -> bool:
        """Whether a training run already wrote a checkpoint here."""
        return self.last_checkpoint.is_file()


class CsvLog:
    """Rows of numbers appended to a CSV file with a fixed header (empty cells for missing values).

    Append-only, flushed per row: a crash loses at most the row being written. ``truncate_after``
    drops rows past a step, so that a resumed run does not repeat the steps after its checkpoint.
    """

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns

    def _ensure_header(self) -> None:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.columns)

    def append(self, row: dict[str, Any]) -> None:
        """Append one row; keys outside the header are ignored."""
        self._ensure_header()
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_cell(row.get(c)) for c in self.columns])

    def truncate_after(self, step: int) -> None:
        """Keep only the rows whose ``step`` is at most ``step`` (rewritten atomically)."""
        if not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if r.get("step") not in (None, "") and int(float(r["step"])) <= step]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(self.path, out.getvalue())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def read_csv_rows(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics CSV as floats (empty cells become NaN)."""
    with open(path, newline="") as f:
        return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file of ``path``: itself, or a run folder's best (else last) checkpoint."""
    path = Path(path)
    if path.is_dir():
        run = RunFolder(path)
        for candidate in (run.best_checkpoint, run.last_checkpoint):
            if candidate.is_file():
                return candidate
        raise DataError(
            path, "no checkpoints/best.safetensors or checkpoints/last.safetensors in this run folder"
        )
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    return path


def load_model_from_checkpoint(path: str | Path, device: str = "cpu") -> tuple[TwoTowerModel, Config]:
    """The trained model (in eval mode) and the configuration it was trained with.

    Args:
        path: a checkpoint (``.safetensors`` with its ``.json``) or a run folder (its best
            checkpoint, else its last).
        device: where to put the model.

    The architecture is rebuilt from the configuration stored in the checkpoint's JSON (no
    pretrained download, no local backbone files), then the weights are loaded strictly.
    Never unpickles; a tampered or truncated checkpoint is refused by the checkpoint module.
    """
    from liploc.models import create_model, inference_config
    from liploc.training.checkpoint import load_checkpoint, strip_prefix

    file = resolve_checkpoint(path)
    tensors, metadata = load_checkpoint(file)
    config_dict = metadata.get("config") if isinstance(metadata, dict) else None
    if not isinstance(config_dict, dict):
        raise DataError(file, "checkpoint metadata holds no training configuration ('config')")
    config = config_from_dict(config_dict, source=f"{file} (config)")
    model = create_model(inference_config(config.model))
    state = strip_prefix(tensors, MODEL_PREFIX)
    missing = sorted(set(model.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        raise DataError(file, "weights do not match the model of its config: " + ", ".join(detail))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), config
