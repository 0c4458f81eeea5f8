"""Registry of dataset layouts: readers register by name and are auto-detected from a folder."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from liploc.datasets.frame import Frame
from liploc.errors import DataError

_READERS: dict[str, type[DatasetReader]] = {}


class DatasetReader(ABC):
    """A folder of one layout (KITTI odometry, KITTI-360, ...), read lazily.

    Subclasses set ``name``, implement ``detect`` (a cheap check of the folder structure),
    ``sequences`` and ``frames``, and record every non-fatal issue they find in ``problems``
    (unpaired files, frames without a pose) so that ``liploc info`` can report them.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "data root is not a folder")
        self.problems: list[str] = []

    @classmethod
    @abstractmethod
    def detect(cls, root: Path) -> bool:
        """True when ``root`` looks like this layout."""

    @abstractmethod
    def sequences(self) -> list[str]:
        """Names of the sequences (drives) found under the root, sorted."""

    @abstractmethod
    def frames(self, sequence: str) -> list[Frame]:
        """Paired frames of ``sequence`` in time order (frames without a pose have ``pose=None``)."""

    def world_frame(self, sequence: str) -> str:
        """Name of the world frame the poses of ``sequence`` are expressed in.

        Sequences whose world frames have the same name share one metric frame: their positions
        can be compared (cross-drive evaluation, pose-aware positives). The default is one frame
        per sequence (its own first pose, as KITTI odometry); layouts whose sequences share a
        frame override this.
        """
        return f"{sequence} (own frame)"

    def world_id(self, sequence: str) -> str:
        """:meth:`world_frame` made unique across dataset folders (stored on every Frame)."""
        return f"{self.name}:{self.root.resolve()}:{self.world_frame(sequence)}"

    def frame(self, sequence: str, index: int) -> Frame:
        """Frame ``index`` of ``sequence``, or a DataError saying it is not there."""
        for frame in self.frames(sequence):
            if frame.index == index:
                return frame
        raise DataError(self.root, f"no frame {index} in sequence {sequence}")


def register(cls: type[DatasetReader]) -> type[DatasetReader]:
    """Class decorator adding a reader to the registry under ``cls.name``."""
    _READERS[cls.name] = cls
    return cls


def available_layouts() -> list[str]:
    """Names of the registered layouts."""
    _load_builtin_readers()
    return sorted(_READERS)


def get_reader_class(name: str) -> type[DatasetReader]:
    """The reader class registered as ``name``."""
    _load_builtin_readers()
    try:
        return _READERS[name]
    except KeyError:
        raise DataError(name, f"unknown dataset layout; known: {', '.join(sorted(_READERS))}") from None


def detect_layout(root: str | Path) -> str:
    """Name of the layout of ``root``, or a DataError saying none matched."""
    _load_builtin_readers()
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


def _load_builtin_readers() -> None:
    # Imported here, not at module top, so that readers can import this module to register.
    from liploc.datasets import kitti, kitti360, kitti_raw  # noqa: F401
