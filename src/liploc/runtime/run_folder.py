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
      checkpoints/*.prev.json      the previous save of each, the fallback of a damaged newest one
      tensorboard/                 TensorBoard events (config train.log = tensorboard, when installed)
      .lock                        held by the one process writing the run (pid and host inside)

Checkpoints are saved atomically (see :mod:`liploc.runtime.checkpoint`). Preprocessed inputs
live in the shared user cache (:mod:`liploc.runtime.preprocess_cache`), not in the run.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import math
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liploc.atomic import append_text, atomic_write_text, reporting_full_disk
from liploc.config import Config, config_from_dict
from liploc.errors import DataError, LiplocError

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
        """Former per-run preprocessing cache (runs now share the user cache)."""
        return self.root / "cache"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def has_run(self) -> bool:
        """Whether a training run already wrote a checkpoint here."""
        from liploc.runtime.checkpoint import checkpoint_exists

        return checkpoint_exists(self.last_checkpoint)


class RunLock:
    """Exclusive lock of a folder for one writing process (``fcntl.flock`` on ``FOLDER/.lock``).

    The operating system releases it when the process dies, however it dies, so a killed run can
    be resumed at once. The lock file holds the holder's pid and host, which a refused second
    writer names. (flock is advisory and local: NFS may not honour it.)
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self._fd: int | None = None
        self._created_folder = False

    def acquire(self) -> RunLock:
        """Take the lock or raise LiplocError naming the process that holds it."""
        if not self.folder.exists():
            with reporting_full_disk(self.folder):
                self.folder.mkdir(parents=True, exist_ok=True)
            self._created_folder = True
        with reporting_full_disk(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise LiplocError(
                f"{self.folder}: another process is writing this run folder ({self._holder()}); "
                "wait for it to finish or stop it, or choose another --out"
            ) from None
        with contextlib.suppress(OSError):  # the holder's identity is informative only
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def _holder(self) -> str:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        return text or "holder unknown"

    def release(self, remove_if_unused: bool = False) -> None:
        """Release the lock; ``remove_if_unused``: also remove the folder when this lock created it
        and nothing else was written (a refused or failed start leaves no empty run folder)."""
        if self._fd is None:
            return
        if remove_if_unused and self._created_folder:
            with contextlib.suppress(OSError):
                if [p.name for p in self.folder.iterdir()] == [".lock"]:
                    self.path.unlink()
                    self.folder.rmdir()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


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
            append_text(self.path, _csv_line(self.columns))

    def append(self, row: dict[str, Any]) -> None:
        """Append one row; keys outside the header are ignored (a full disk: DiskFullError)."""
        self._ensure_header()
        append_text(self.path, _csv_line([_cell(row.get(c)) for c in self.columns]))

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


def _csv_line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(cells)
    return out.getvalue()


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


def checkpoint_present(path: str | Path) -> bool:
    """Whether a checkpoint (its JSON manifest, or a bare weights file) is at the logical ``path``:
    :func:`liploc.runtime.checkpoint.checkpoint_exists` without importing torch, for the checks
    the commands make before torch loads."""
    return Path(path).with_suffix(".json").is_file() or Path(path).is_file()


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file of ``path``: itself, or a run folder's best (else last) checkpoint;
    DataError when there is none. Reads file names only (no torch)."""
    path = Path(path)
    if path.is_dir():
        run = RunFolder(path)
        for candidate in (run.best_checkpoint, run.last_checkpoint):
            if checkpoint_present(candidate):
                return candidate
        raise DataError(
            path, "no checkpoints/best.safetensors or checkpoints/last.safetensors in this run folder"
        )
    if not checkpoint_present(path):
        raise DataError(path, "checkpoint not found")
    return path


def load_model_from_checkpoint(path: str | Path, device: str = "cpu") -> tuple[TwoTowerModel, Config]:
    """The trained model (in eval mode) and the configuration it was trained with.

    Args:
        path: a checkpoint (``.safetensors`` with its ``.json``) or a run folder (its best
            checkpoint, else its last). A damaged newest save falls back to the previous one of
            the same checkpoint, with a warning.
        device: where to put the model.

    The architecture is rebuilt from the configuration stored in the checkpoint's JSON (no
    pretrained download, no local backbone files), then the weights are loaded strictly.
    Never unpickles; a tampered or truncated checkpoint is refused by the checkpoint module.
    """
    from liploc.models import create_model, inference_config
    from liploc.runtime.checkpoint import load_newest_checkpoint, strip_prefix

    file = resolve_checkpoint(path)
    tensors, metadata, note = load_newest_checkpoint(file)
    if note is not None:
        warnings.warn(f"{file.parent}: {note}", UserWarning, stacklevel=2)
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
