"""Base of the readers whose scans and images are numbered files in two folders per sequence.

Pairs scans with images by frame number, records the unpaired ones as problems, attaches poses,
timestamps and calibration, and caches the frames of each sequence.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liploc.datasets.base import DatasetReader
from liploc.datasets.frame import Calibration, Frame
from liploc.datasets.scan import read_image_size
from liploc.errors import DataError

SCAN_SUFFIXES = (".bin",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_NUMBERED = re.compile(r"^\d+$")
_NO_IMAGE = "scan has no image (frame {} not in {})"
_NO_SCAN = "image has no scan (frame {} not in {})"


def index_numbered_files(folder: Path, suffixes: Iterable[str]) -> dict[int, Path]:
    """Files of ``folder`` named by a frame number (``000042.bin``), keyed by that number.

    Returns an empty dict when the folder does not exist.
    """
    if not folder.is_dir():
        return {}
    wanted = {s.lower() for s in suffixes}
    files: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in wanted and _NUMBERED.match(path.stem) and path.is_file():
            files.setdefault(int(path.stem), path)
    return files


def format_ranges(indices: Iterable[int]) -> str:
    """Compact text of frame numbers: ``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    numbers = sorted(set(indices))
    parts: list[str] = []
    start = prev = None
    for n in [*numbers, None]:
        if start is not None and (n is None or n != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if n is not None and start is None:
            start = n
        prev = n
    return ", ".join(parts)


def chosen_camera(root: Path, camera: str, cameras: tuple[str, ...], dataset: str) -> str:
    """``camera`` when it is one of the layout's camera folders ``cameras``, else a DataError
    naming ``dataset`` (``KITTI``, ``KITTI raw``) and the folders it has."""
    if camera not in cameras:
        known = ", ".join(cameras)
        raise DataError(root, f"unknown {dataset} camera folder {camera!r} (one of {known})")
    return camera


@dataclass(frozen=True)
class SequenceFiles:
    """The numbered scans and images found for one sequence."""

    scan_folder: Path
    image_folder: Path
    scans: dict[int, Path]
    images: dict[int, Path]

    @property
    def paired(self) -> list[int]:
        """Frame numbers having both a scan and an image, sorted."""
        return sorted(self.scans.keys() & self.images.keys())

    @property
    def n_numbers(self) -> int:
        """One more than the highest frame number of any file (KITTI numbers frames from 0)."""
        numbers = self.scans.keys() | self.images.keys()
        return max(numbers) + 1 if numbers else 0

    def problems(self) -> list[str]:
        """One line per unpaired file (one line in all when a whole folder is missing)."""
        lonely_scans = sorted(self.scans.keys() - self.images.keys())
        lonely_images = sorted(self.images.keys() - self.scans.keys())
        out: list[str] = []
        if lonely_scans and not self.images:
            state = "is missing" if not self.image_folder.is_dir() else "has no images"
            out.append(f"{self.image_folder}: image folder {state}; {len(lonely_scans)} scans have no image")
        else:
            out += [f"{self.scans[i]}: {_NO_IMAGE.format(i, self.image_folder)}" for i in lonely_scans]
        if lonely_images and not self.scans:
            state = "is missing" if not self.scan_folder.is_dir() else "has no scans"
            out.append(f"{self.scan_folder}: scan folder {state}; {len(lonely_images)} images have no scan")
        else:
            out += [f"{self.images[i]}: {_NO_SCAN.format(i, self.scan_folder)}" for i in lonely_images]
        return out


class PairedFramesReader(DatasetReader):
    """A layout whose sequences hold a folder of numbered scans and one of numbered images.

    Subclasses say where the folders are and how to read calibration, poses and timestamps.
    """

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self._sequence_names: list[str] | None = None
        self._frames: dict[str, list[Frame]] = {}
        self._calibrations: dict[str, Calibration] = {}

    # --- what a layout provides ---------------------------------------------------------------
    @abstractmethod
    def _find_sequences(self) -> list[str]:
        """Names of the sequences under the root (any order)."""

    @abstractmethod
    def scan_folder(self, sequence: str) -> Path:
        """Folder of the numbered ``.bin`` scans of ``sequence``."""

    @abstractmethod
    def image_folder(self, sequence: str) -> Path:
        """Folder of the numbered images of ``sequence``."""

    @abstractmethod
    def _read_calibration(self, sequence: str, files: SequenceFiles) -> Calibration:
        """Calibration of ``sequence`` (DataError naming the file and key when incomplete)."""

    @abstractmethod
    def _poses(self, sequence: str, files: SequenceFiles, calib: Calibration) -> dict[int, np.ndarray]:
        """4x4 LiDAR poses in the z-up world by frame number (frames without a pose left out)."""

    def _timestamps(self, sequence: str, files: SequenceFiles) -> dict[int, float]:
        """Seconds since the start of the sequence by frame number (empty when unknown)."""
        return {}

    def _pose_source(self, sequence: str) -> str:
        """Text naming where poses come from, for the 'no pose' problem line."""
        return "the pose file"

    def pose_source(self, sequence: str) -> str:
        """Text naming where the poses of ``sequence`` come from (or were looked for)."""
        return self._pose_source(sequence)

    # --- shared machinery ---------------------------------------------------------------------
    def report(self, problem: str) -> None:
        """Record a non-fatal problem once."""
        if problem not in self.problems:
            self.problems.append(problem)

    def sequences(self) -> list[str]:
        """Names of the sequences (drives) found under the root, sorted."""
        if self._sequence_names is None:
            self._sequence_names = sorted(set(self._find_sequences()))
        return list(self._sequence_names)

    def files(self, sequence: str) -> SequenceFiles:
        """The numbered scans and images of ``sequence``, paired or not."""
        self._check_sequence(sequence)
        scan_folder, image_folder = self.scan_folder(sequence), self.image_folder(sequence)
        return SequenceFiles(
            scan_folder=scan_folder,
            image_folder=image_folder,
            scans=index_numbered_files(scan_folder, SCAN_SUFFIXES),
            images=index_numbered_files(image_folder, IMAGE_SUFFIXES),
        )

    def calibration(self, sequence: str) -> Calibration:
        """Calibration of ``sequence`` (read once); DataError naming the file and key when incomplete."""
        if sequence not in self._calibrations:
            self._calibrations[sequence] = self._read_calibration(sequence, self.files(sequence))
        return self._calibrations[sequence]

    def frames(self, sequence: str) -> list[Frame]:
        """Paired frames of ``sequence`` in frame-number order; unpaired files go to ``problems``."""
        if sequence in self._frames:
            return list(self._frames[sequence])
        files = self.files(sequence)
        for problem in files.problems():
            self.report(problem)
        if sequence not in self._calibrations:
            self._calibrations[sequence] = self._read_calibration(sequence, files)
        calib = self._calibrations[sequence]
        poses = self._poses(sequence, files, calib)
        times = self._timestamps(sequence, files)
        indices = files.paired
        world = self.world_id(sequence)
        no_pose = [i for i in indices if i not in poses]
        if no_pose:
            self.report(
                f"{sequence}: {len(no_pose)} of {len(indices)} frames have no pose in "
                f"{self._pose_source(sequence)} (frames {format_ranges(no_pose)})"
            )
        frames = [
            Frame(
                sequence=sequence,
                index=i,
                image_path=files.images[i],
                scan_path=files.scans[i],
                pose=poses.get(i),
                calib=calib,
                timestamp=times.get(i),
                world=world,
            )
            for i in indices
        ]
        self._frames[sequence] = frames
        return list(frames)

    def frame(self, sequence: str, index: int) -> Frame:
        """Frame ``index`` of ``sequence``; a DataError naming the scan or image that lacks its pair."""
        for frame in self.frames(sequence):
            if frame.index == index:
                return frame
        files = self.files(sequence)
        if index in files.scans:
            raise DataError(files.scans[index], _NO_IMAGE.format(index, files.image_folder))
        if index in files.images:
            raise DataError(files.images[index], _NO_SCAN.format(index, files.scan_folder))
        raise DataError(files.scan_folder, f"no frame {index} in sequence {sequence}")

    def _check_sequence(self, sequence: str) -> None:
        if sequence not in self.sequences():
            found = ", ".join(self.sequences()) or "none"
            raise DataError(self.root, f"no sequence {sequence!r} in {self.name} folder (found: {found})")

    def _first_image_size(self, files: SequenceFiles) -> tuple[int, int] | None:
        """(width, height) from the lowest-numbered image's header; None (and a problem) if unreadable."""
        if not files.images:
            return None
        try:
            return read_image_size(files.images[min(files.images)])
        except DataError as err:
            self.report(str(err))
            return None
