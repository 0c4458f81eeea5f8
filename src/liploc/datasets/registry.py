"""Registry of dataset layouts: the readers by name, and the layout of a folder detected.

The registry imports the readers; the readers import only :mod:`liploc.datasets.base`."""

from __future__ import annotations

from pathlib import Path

from liploc.datasets.base import DatasetReader
from liploc.datasets.kitti import KittiOdometryReader, SemanticKittiReader
from liploc.datasets.kitti360 import Kitti360Reader
from liploc.datasets.kitti_raw import KittiRawReader
from liploc.errors import DataError

_READERS: dict[str, type[DatasetReader]] = {
    cls.name: cls for cls in (KittiOdometryReader, SemanticKittiReader, Kitti360Reader, KittiRawReader)
}


def available_layouts() -> list[str]:
    """Names of the registered layouts."""
    return sorted(_READERS)


def get_reader_class(name: str) -> type[DatasetReader]:
    """The reader class registered as ``name``."""
    try:
        return _READERS[name]
    except KeyError:
        raise DataError(name, f"unknown dataset layout; known: {', '.join(sorted(_READERS))}") from None


def detect_layout(root: str | Path) -> str:
    """Name of the layout of ``root``, or a DataError saying none matched."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "data root does not exist or is not a folder")
    matches = [name for name, cls in sorted(_READERS.items()) if cls.detect(root)]
    if not matches:
        raise DataError(root, f"no known dataset layout found (looked for: {', '.join(sorted(_READERS))})")
    return matches[0]


def open_dataset(root: str | Path, layout: str | None = None) -> DatasetReader:
    """Open ``root`` with the reader of ``layout`` (auto-detected when None or ``"auto"``)."""
    if layout in (None, "auto"):
        layout = detect_layout(root)
    return get_reader_class(layout)(root)
