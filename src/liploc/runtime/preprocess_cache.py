"""Where the preprocessing cache lives, what its entries are keyed by, and its maintenance.

The cache is shared between runs: by default ``$LIPLOC_CACHE_DIR``, else
``$XDG_CACHE_HOME/liploc/preprocess``, else ``~/.cache/liploc/preprocess``; ``data.cache_dir``
(or ``--cache-dir``) moves it. Under that folder, ``<settings key>/<modality>/<source key>.npy``:
the settings key hashes every data setting that changes what preprocessing makes (all of
``data`` except what only applies later: augmentation, normalisation, dataset lists, loaders)
plus the projection and the preprocessing version; the source key hashes the source file's
absolute path, size and modification time. The geometry bridge's entries (``depth``: the scan's
depth image at ``bridge.depth_size``; ``bev``: its BEV raster) live in ``depth-<key>`` and
``bev-<key>`` folders whose keys hash the bridge settings they depend on, and their source keys
also cover the frame's calibration (the depth image is the scan seen through it). Entries are
checked (:mod:`liploc.checked_array`), and written with write-and-rename (no fsync), so several
runs and workers can share one cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from liploc.checked_array import CacheWriteWarning
from liploc.errors import DataError, LiplocError
from liploc.runtime.inputs import CachedInput

if TYPE_CHECKING:
    from liploc.config import Config, DataConfig

PREPROCESS_VERSION = 2
"""Bumped when preprocessing changes, so that old cache entries are not reused."""

CACHE_DIR_ENV = "LIPLOC_CACHE_DIR"
"""Environment variable that moves the preprocessing cache (tests point it at a temporary folder)."""

_LATER_STAGES = {
    "datasets",
    "normalize",
    "augment",
    "augment_lidar",
    "photometric",
    "val_fraction",
    "num_workers",
    "cache",
    "cache_dir",
}
"""Data settings that do not change a preprocessed array (applied after the cache, or bookkeeping)."""


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


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


class PreprocessCache:
    """Preprocessed inputs kept as checked ``.npy`` files under ``folder/<settings key>/<modality>/``.

    Keys and sharing: see :mod:`liploc.runtime.preprocess_cache`. An entry that fails its
    checksum is made again, rewritten, and reported once (a warning naming the file); a write that
    fails (read-only or full disk) only costs speed.
    """

    def __init__(self, folder: str | Path, config: Config) -> None:
        from liploc.runtime.preprocess_cache import settings_key

        self.folder = Path(folder) / settings_key(config, PREPROCESS_VERSION)
        self._write_failure = CacheWriteWarning("preprocessing cache")
        h, w = config.data.image_size
        self._shapes: dict[str, tuple[int, ...]] = {
            "image": (3, h, w),
            "lidar": (config.model.lidar_in_chans, h, w),
        }
        self._subfolders: dict[str, str] = {"image": "image", "lidar": "lidar"}
        if config.model.method == "bridge":
            from liploc.models.geometry_bridge import bev_shape

            bridge = config.model.bridge
            depth = {"depth_size": list(bridge.depth_size), "max_depth": bridge.max_depth}
            bev = {**depth, "bev": bridge.bev.model_dump(mode="json"), "soft": bridge.train_bev_on}
            self._subfolders["depth"] = f"depth-{_digest(depth)}"
            self._subfolders["bev"] = f"bev-{_digest(bev)}"
            self._shapes["depth"] = (1, *bridge.depth_size)
            self._shapes["bev"] = bev_shape(bridge)
        # resolve() walks every component of the path (a tenth of a millisecond per entry read);
        # what a path resolves to is fixed for a run, its size and time are checked on each read.
        self._resolved: dict[Path, str] = {}

    def path_for(self, source: Path, modality: CachedInput, variant: str = "") -> Path:
        """Cache file of ``source`` (raises DataError when the source is missing); ``variant``
        names what else the entry depends on (the bridge's: the frame's calibration)."""
        try:
            st = source.stat()
        except OSError as err:
            raise DataError(source, f"cannot read file ({err.strerror or err})") from None
        resolved = self._resolved.get(source)
        if resolved is None:
            resolved = self._resolved[source] = str(source.resolve())
        ident = f"{resolved}|{st.st_size}|{st.st_mtime_ns}" + (f"|{variant}" if variant else "")
        subfolder = self._subfolders.get(modality)
        if subfolder is None:
            raise ValueError(f"no {modality} entries: they belong to model.method bridge")
        return self.folder / subfolder / f"{hashlib.sha1(ident.encode()).hexdigest()[:24]}.npy"

    def get(
        self, source: Path, modality: CachedInput, make: Callable[[], np.ndarray], variant: str = ""
    ) -> np.ndarray:
        """The cached array for ``source`` (and ``variant``, see :meth:`path_for`), made (and
        stored) with ``make()`` when absent, damaged or of the wrong shape."""
        from liploc.checked_array import DamagedEntry, read_checked, write_checked

        path = self.path_for(source, modality, variant)
        try:
            array = read_checked(path)
            expected = self._shapes[modality]
            if array.shape != expected or array.dtype not in (np.uint8, np.float32):
                raise DamagedEntry(f"holds a {array.dtype} array of shape {array.shape}, not {expected}")
            return array
        except FileNotFoundError:
            pass
        except (OSError, DamagedEntry) as err:
            warnings.warn(
                f"{path}: damaged preprocessing cache entry of {source} ({err}); rebuilt it",
                UserWarning,
                stacklevel=2,
            )
        array = make()
        try:
            write_checked(path, array)
        except (OSError, LiplocError) as err:  # a read-only or full disk only costs speed
            self._write_failure.report(err)
        return array
