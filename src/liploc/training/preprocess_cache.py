"""Where the preprocessing cache lives, what its entries are keyed by, and its maintenance.

The cache is shared between runs: by default ``$LIPLOC_CACHE_DIR``, else
``$XDG_CACHE_HOME/liploc/preprocess``, else ``~/.cache/liploc/preprocess``; ``data.cache_dir``
(or ``--cache-dir``) moves it. Under that folder, ``<settings key>/<modality>/<source key>.npy``:
the settings key hashes every data setting that changes what preprocessing makes (all of
``data`` except what only applies later: augmentation, normalisation, dataset lists, loaders)
plus the projection and the preprocessing version; the source key hashes the source file's
absolute path, size and modification time. Entries are checked (:mod:`liploc.checked_array`), and
written with write-and-rename (no fsync), so several runs and workers can share one cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liploc.config import Config, DataConfig

CACHE_DIR_ENV = "LIPLOC_CACHE_DIR"
"""Environment variable that moves the preprocessing cache (tests point it at a temporary folder)."""

_LATER_STAGES = {
    "datasets",
    "normalize",
    "augment",
    "augment_lidar",
    "val_fraction",
    "num_workers",
    "cache",
    "cache_dir",
}
"""Data settings that do not change a preprocessed array (applied after the cache, or bookkeeping)."""


def default_cache_dir() -> Path:
    """The user's preprocessing cache folder (see the module docstring)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "liploc" / "preprocess"


def preprocess_cache_dir(data: DataConfig) -> Path:
    """``data.cache_dir`` when set, else :func:`default_cache_dir`."""
    return Path(data.cache_dir).expanduser() if data.cache_dir is not None else default_cache_dir()


def settings_key(config: Config, version: int) -> str:
    """16 hex digits naming the preprocessing settings of ``config``."""
    data = {
        k: v
        for k, v in config.data.model_dump(mode="json").items()
        if k not in _LATER_STAGES and not k.startswith("coarse_dropout")
    }
    settings: dict[str, Any] = {
        "version": version,
        "data": data,
        "projection": config.projection.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CacheUsage:
    """Entries and bytes of a cache folder, per settings key."""

    folder: Path
    entries: int
    bytes: int
    per_settings: dict[str, tuple[int, int]]


def cache_usage(folder: str | Path) -> CacheUsage:
    """Count the entries and bytes under a cache folder."""
    folder = Path(folder)
    per: dict[str, tuple[int, int]] = {}
    if folder.is_dir():
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            n = size = 0
            for entry in sub.rglob("*.npy"):
                try:
                    size += entry.stat().st_size
                    n += 1
                except OSError:
                    continue  # removed by another process meanwhile
            per[sub.name] = (n, size)
    return CacheUsage(folder, sum(n for n, _ in per.values()), sum(b for _, b in per.values()), per)


def clear_cache(folder: str | Path) -> CacheUsage:
    """Remove every entry under a cache folder (the folder stays); returns what was removed."""
    usage = cache_usage(folder)
    for key in usage.per_settings:
        shutil.rmtree(Path(folder) / key, ignore_errors=True)
    return usage


def human_bytes(n: float) -> str:
    """``1.5 MiB``-style size."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass(frozen=True)
class WarmResult:
    """What :func:`warm_cache` did."""

    folder: Path
    made: int
    present: int
    frames: int


class _WarmItems:
    """Dataset of (frame, modality) items that preprocess into the cache (run in loader workers)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.items = [(i, m) for i in range(len(dataset.frames)) for m in ("image", "lidar")]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> int:
        from liploc.errors import DataError
        from liploc.training.data import WorkerDataError

        index, modality = self.items[k]
        frame = self.dataset.frames[index]
        source = frame.image_path if modality == "image" else frame.scan_path
        try:
            present = self.dataset.cache.path_for(source, modality).is_file()
            self.dataset.preprocessed(index, modality)
        except DataError as err:
            import torch.utils.data

            if torch.utils.data.get_worker_info() is None:
                raise
            raise WorkerDataError(str(err)) from None
        return int(present)


def warm_cache(
    config: Config, cache_dir: str | Path | None = None, workers: int | None = None, progress: Any = None
) -> WarmResult:
    """Preprocess every frame of every split of ``config`` into the cache, with ``workers``
    loader processes (default: all cores). ``progress``: a rich Progress to report to.
    Temporary files older than an hour (killed writers') are swept first."""
    from torch.utils.data import DataLoader

    from liploc.atomic import sweep_stale_temporary_files
    from liploc.training.data import PairDataset, split_frames

    folder = Path(cache_dir) if cache_dir is not None else preprocess_cache_dir(config.data)
    if folder.is_dir():
        sweep_stale_temporary_files(folder)  # what killed writers left (live ones' are young)
    frames, seen = [], set()
    for split in ("train", "val", "test"):
        for frame in split_frames(config.data, split):
            key = (str(frame.image_path), str(frame.scan_path))
            if key not in seen:
                seen.add(key)
                frames.append(frame)
    dataset = PairDataset(frames, config, cache_dir=folder)
    items = _WarmItems(dataset)
    workers = (os.cpu_count() or 1) if workers is None else workers
    loader = DataLoader(items, batch_size=None, num_workers=workers)  # type: ignore[arg-type]
    task = progress.add_task("warming cache", total=len(items)) if progress is not None else None
    present = 0
    for flag in loader:
        present += int(flag)
        if task is not None:
            progress.advance(task)
    assert dataset.cache is not None
    return WarmResult(dataset.cache.folder, len(items) - present, present, len(frames))
