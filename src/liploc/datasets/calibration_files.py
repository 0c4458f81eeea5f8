"""Parsing the text files of the KITTI family: ``key: numbers`` calibration files, pose and
timestamp tables. Every malformed entry is a DataError naming the file and the key or line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liploc.errors import DataError


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise DataError(path, f"{what} not found") from None
    except OSError as err:
        raise DataError(path, f"cannot read {what} ({err.strerror or err})") from None


def _content_lines(text: str) -> list[str]:
    """Lines of ``text`` without the trailing blank ones (a final newline is not a line)."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _parse_floats(path: Path, text: str, where: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError:
        raise DataError(path, f"{where}: not a list of numbers: {text.strip()[:80]!r}") from None


@dataclass(frozen=True)
class CalibrationFile:
    """A ``key: value ...`` text file (KITTI ``calib.txt``, ``calib_cam_to_cam.txt``, ...).

    Values stay text until asked for, so that non-numeric entries (``calib_time: 09-Jan-2012 ...``)
    do no harm unless needed.
    """

    path: Path
    entries: dict[str, str]

    def has(self, key: str) -> bool:
        """True when the file has an entry ``key``."""
        return key in self.entries

    def matrix(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """The numbers of entry ``key`` as a float64 array of ``shape`` (row-major).

        Raises DataError naming the file and the key when it is missing or malformed.
        """
        if key not in self.entries:
            known = ", ".join(self.entries) or "none"
            raise DataError(self.path, f"missing calibration key '{key}' (keys found: {known})")
        values = _parse_floats(self.path, self.entries[key], f"key '{key}'")
        expected = int(np.prod(shape))
        if values.size != expected:
            raise DataError(self.path, f"key '{key}' has {values.size} numbers, expected {expected}")
        if not np.isfinite(values).all():
            raise DataError(self.path, f"key '{key}' holds NaN or infinite values")
        return values.reshape(shape)


def read_calibration_file(path: str | Path) -> CalibrationFile:
    """Parse a ``key: values`` file; lines without a colon are ignored."""
    path = Path(path)
    entries: dict[str, str] = {}
    for line in _content_lines(_read_text(path, "calibration file")):
        key, sep, value = line.partition(":")
        if sep:
            entries[key.strip()] = value.strip()
    return CalibrationFile(path=path, entries=entries)


def read_matrix_file(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """A file holding only the numbers of one matrix (KITTI-360 ``calib_cam_to_velo.txt``)."""
    path = Path(path)
    values = _parse_floats(path, _read_text(path, "calibration file"), "content")
    expected = int(np.prod(shape))
    if values.size != expected:
        raise DataError(path, f"holds {values.size} numbers, expected {expected} (a {shape} matrix)")
    return values.reshape(shape)


def read_number_table(path: str | Path, n_columns: int, what: str = "pose file") -> np.ndarray:
    """Rows of whitespace-separated numbers, each with exactly ``n_columns`` values.

    Returns a float64 (N, n_columns) array. Raises DataError naming the file and the line of the
    first row with the wrong number of columns, a non-number, or NaN/inf.
    """
    path = Path(path)
    lines = _content_lines(_read_text(path, what))
    rows = np.empty((len(lines), n_columns), dtype=np.float64)
    for number, line in enumerate(lines, start=1):
        values = _parse_floats(path, line, f"line {number}")
        if values.size != n_columns:
            raise DataError(path, f"line {number}: {values.size} columns, expected {n_columns}")
        if not np.isfinite(values).all():
            raise DataError(path, f"line {number}: NaN or infinite value")
        rows[number - 1] = values
    return rows


def read_datetime_seconds(path: str | Path) -> np.ndarray:
    """Seconds since the first line of a KITTI raw/KITTI-360 ``timestamps.txt``.

    Lines look like ``2011-09-26 13:02:25.964389445`` (nanoseconds kept via numpy datetime64).
    """
    path = Path(path)
    lines = _content_lines(_read_text(path, "timestamps file"))
    stamps = np.empty(len(lines), dtype="datetime64[ns]")
    for number, line in enumerate(lines, start=1):
        try:
            stamps[number - 1] = np.datetime64(line.strip().replace(" ", "T"), "ns")
        except ValueError:
            raise DataError(path, f"line {number}: not a date and time: {line.strip()[:40]!r}") from None
    if len(stamps) == 0:
        return np.empty(0, dtype=np.float64)
    return (stamps - stamps[0]).astype(np.int64) / 1e9


def homogeneous(matrix: np.ndarray) -> np.ndarray:
    """4x4 rigid transform from a 3x4 ``[R|t]`` (or a 3x3 rotation; translation zero)."""
    out = np.eye(4, dtype=np.float64)
    out[:3, : matrix.shape[1]] = matrix
    return out


def rigid_transform(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4x4 transform from a 3x3 rotation and a 3-vector translation."""
    out = np.eye(4, dtype=np.float64)
    out[:3, :3] = rotation
    out[:3, 3] = np.ravel(translation)
    return out


def timestamps_by_frame(
    path: Path, frame_numbers: list[int], report: Callable[[str], None]
) -> dict[int, float]:
    """Seconds since the first line of a ``timestamps.txt`` (line i = frame i) for ``frame_numbers``.

    Frames beyond the end of the file get no timestamp; ``report`` is told once how many.
    """
    seconds = read_datetime_seconds(path)
    beyond = [i for i in frame_numbers if i >= len(seconds)]
    if beyond:
        n = len(seconds)
        report(f"{path}: {n} lines, no timestamp for {len(beyond)} frames numbered {n} and above")
    return {i: float(seconds[i]) for i in frame_numbers if i < len(seconds)}
