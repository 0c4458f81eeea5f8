"""The base class of dataset readers: a folder of one layout, read lazily."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from liploc.datasets.frame import Frame
from liploc.errors import DataError


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


def require_sequences(reader: DatasetReader, data_root: str | Path, sequences: list[str]) -> None:
    """Raise a DataError naming the folder when one of ``sequences`` is not in the dataset."""
    known = reader.sequences()
    for s in sequences:
        if s not in known:
            raise DataError(data_root, f"no sequence '{s}' (found: {', '.join(known) or 'none'})")


def unpaired_count(reader: DatasetReader, sequence: str) -> int:
    """Scans without their image and images without their scan in ``sequence`` (readers of paired
    files; 0 for others): frames no command can use, which each command says it left out."""
    files_of = getattr(reader, "files", None)
    if files_of is None:
        return 0
    files = files_of(sequence)
    return len(files.scans.keys() ^ files.images.keys())
