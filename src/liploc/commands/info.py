"""``liploc info``: describe a dataset folder and every problem found in it.

The first thing a user runs on their own KITTI folder: which layout was detected, the sequences
and their frame counts, frames without a pose, the image size and calibration, and each unpaired,
truncated or unreadable file. The checks read file sizes and image headers only, so it stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from liploc.commands._common import console as cli_console
from liploc.commands._common import reported_errors
from liploc.commands.options import EXISTING_DIR, Layout, examples
from liploc.console import print_line, print_table
from liploc.errors import DataError

if TYPE_CHECKING:  # numpy and the readers load when a dataset is read, not with the CLI
    import numpy as np

    from liploc.datasets import Calibration, Frame


@dataclass
class SequenceSummary:
    """What ``liploc info`` found for one sequence.

    Attributes:
        name: sequence or drive name.
        n_frames: paired frames (scan and image) the reader yields.
        n_scans / n_images: numbered scan / image files found (paired or not).
        n_without_pose: paired frames without a pose.
        image_size: (width, height) from the calibration, or None.
        duration_s: time from the first to the last frame, when timestamps are known.
        path_length_m: ground-plane length of the trajectory of the frames with a pose.
        error: why the sequence could not be read (then it has no frames), or None.
        world_frame: the world frame its poses are in; sequences with the same one can be
            compared (cross-drive evaluation).
    """

    name: str
    n_frames: int = 0
    n_scans: int = 0
    n_images: int = 0
    n_without_pose: int = 0
    image_size: tuple[int, int] | None = None
    duration_s: float | None = None
    path_length_m: float | None = None
    error: str | None = None
    world_frame: str = ""


@dataclass
class DatasetSummary:
    """Everything ``liploc info`` found in a dataset folder.

    Attributes:
        root: the folder.
        layout: the registered layout name used to read it.
        sequences: one summary per sequence, sorted by name.
        calibrations: distinct calibrations, each with the sequences that use it.
        problems: every problem found (unpaired, truncated or unreadable files, missing poses...).
    """

    root: Path
    layout: str
    sequences: list[SequenceSummary] = field(default_factory=list)
    calibrations: list[tuple[Calibration, list[str]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        """Paired frames over all sequences."""
        return sum(s.n_frames for s in self.sequences)

    @property
    def n_without_pose(self) -> int:
        """Paired frames without a pose over all sequences."""
        return sum(s.n_without_pose for s in self.sequences)


def describe_dataset(
    root: str | Path,
    layout: str = "auto",
    console: Console | None = None,
    check_files: bool = True,
) -> DatasetSummary:
    """Read ``root``, print what it holds as rich tables, and return the same as a summary.

    Args:
        root: dataset folder.
        layout: registered layout name, or ``auto`` to detect it.
        console: where to print (a new console on stdout when None).
        check_files: check every scan's size and every image's header (fast; no pixel decoding).

    Raises:
        DataError: when ``root`` is not a folder or no layout matches it. Problems inside the
            dataset are reported, not raised.
    """
    from liploc.datasets import open_dataset
    from liploc.datasets.paired_reader import PairedFramesReader
    from liploc.datasets.registry import detect_layout

    console = console or Console()
    root = Path(root)
    layout_name = detect_layout(root) if layout in ("auto", None) else layout
    reader = open_dataset(root, layout_name)
    summary = DatasetSummary(root=root, layout=layout_name)
    check_problems: list[str] = []

    with Progress(console=console, transient=True) as progress:
        for name in reader.sequences():
            sequence = SequenceSummary(name=name, world_frame=reader.world_frame(name))
            summary.sequences.append(sequence)
            paths_to_check: tuple[list[Path], list[Path]] = ([], [])
            if isinstance(reader, PairedFramesReader):
                files = reader.files(name)
                sequence.n_scans, sequence.n_images = len(files.scans), len(files.images)
                paths_to_check = (list(files.scans.values()), list(files.images.values()))
            try:
                frames = reader.frames(name)
            except DataError as err:
                sequence.error = str(err)
                check_problems.append(f"{name}: cannot be read: {err}")
                frames = []
            _summarise_frames(sequence, frames)
            if not isinstance(reader, PairedFramesReader):
                paths_to_check = ([f.scan_path for f in frames], [f.image_path for f in frames])
                sequence.n_scans = sequence.n_images = len(frames)
            if frames:
                _add_calibration(summary, frames[0].calib, name)
            if check_files:
                check_problems += _check_files(*paths_to_check, progress, name)

    if not summary.sequences:
        check_problems.append(f"{root}: no sequences found for layout {layout_name}")
    # Reader problems first (in the order found), then the file checks; each once.
    summary.problems = list(dict.fromkeys([*reader.problems, *check_problems]))
    _print_summary(summary, reader.description, console)
    return summary


def _summarise_frames(sequence: SequenceSummary, frames: list[Frame]) -> None:
    import numpy as np

    sequence.n_frames = len(frames)
    sequence.n_without_pose = sum(f.pose is None for f in frames)
    if frames:
        sequence.image_size = frames[0].calib.image_size
    times = [f.timestamp for f in frames if f.timestamp is not None]
    if len(times) >= 2:
        sequence.duration_s = float(max(times) - min(times))
    xy = np.array([f.position_xy for f in frames if f.pose is not None])
    if len(xy) >= 1:
        sequence.path_length_m = float(np.linalg.norm(np.diff(xy, axis=0), axis=1).sum())


def _add_calibration(summary: DatasetSummary, calib: Calibration, sequence: str) -> None:
    import numpy as np

    for known, names in summary.calibrations:
        if (
            known.image_size == calib.image_size
            and np.allclose(known.P, calib.P)
            and np.allclose(known.T_cam_lidar, calib.T_cam_lidar)
        ):
            names.append(sequence)
            return
    summary.calibrations.append((calib, [sequence]))


def _check_files(scans: list[Path], images: list[Path], progress: Progress, sequence: str) -> list[str]:
    from liploc.datasets.scan import check_scan_size, read_image_size

    problems: list[str] = []
    task = progress.add_task(f"checking {sequence}", total=len(scans) + len(images))
    checks = [(path, check_scan_size) for path in scans] + [(path, read_image_size) for path in images]
    for path, check in checks:
        try:
            check(path)
        except DataError as err:
            problems.append(str(err))
        progress.advance(task)
    progress.remove_task(task)
    return problems


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _format_matrix(matrix: np.ndarray) -> str:
    return "\n".join(" ".join(f"{v:10.5g}" for v in row) for row in matrix)


def world_frame_lines(sequences: list[SequenceSummary]) -> list[str]:
    """Lines saying which sequences share a world frame (only those can be compared by position)."""
    groups: dict[str, list[str]] = {}
    for s in sequences:
        groups.setdefault(s.world_frame, []).append(s.name)
    if not groups:
        return []
    if len(groups) == len(sequences) and len(sequences) > 1:
        return ["world frames: each sequence has its own (positions across sequences not comparable)"]
    lines = []
    for frame, names in groups.items():
        shown = ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:3])}, ... ({len(names)} in all)"
        lines.append(f"world frame: {frame} - {shown}")
    return lines


def _print_summary(summary: DatasetSummary, description: str, console: Console) -> None:
    print_line(console, f"[bold]{summary.root}[/]")
    print_line(console, f"layout: [bold cyan]{summary.layout}[/] — {description}")
    print_line(
        console,
        f"{_count(len(summary.sequences), 'sequence')}, {_count(summary.n_frames, 'frame')}, "
        f"{summary.n_without_pose} without a pose",
    )

    table = Table(title="Sequences", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("sequence", no_wrap=True)
    for column in ("frames", "unpaired", "no pose", "image", "time", "path"):
        table.add_column(column, justify="right", no_wrap=True)
    for s in summary.sequences:
        unpaired = (s.n_scans - s.n_frames) + (s.n_images - s.n_frames) if s.error is None else 0
        table.add_row(
            s.name,
            str(s.n_frames) if s.error is None else "[red]error[/]",
            f"[yellow]{unpaired}[/]" if unpaired else "0",
            f"[yellow]{s.n_without_pose}[/]" if s.n_without_pose else "0",
            f"{s.image_size[0]}x{s.image_size[1]}" if s.image_size else "-",
            f"{s.duration_s:.1f} s" if s.duration_s is not None else "-",
            f"{s.path_length_m:.0f} m" if s.path_length_m is not None else "-",
        )
    print_table(console, table)
    for line in world_frame_lines(summary.sequences):
        print_line(console, escape(line))  # whole: the terminal wraps it, rich does not break it

    for calib, names in summary.calibrations:
        print_table(console, _calibration_table(calib, names))

    if summary.problems:
        # One line per problem, left to the terminal to wrap: paths stay whole and greppable.
        print_line(console, f"[red]{_count(len(summary.problems), 'problem')}[/]:")
        for k, problem in enumerate(summary.problems, start=1):
            print_line(console, f"{k:>3}. {escape(problem)}")
    elif summary.sequences:
        print_line(console, "[green]no problems found[/]")


def _calibration_table(calib: Calibration, sequences: list[str]) -> Table:
    if len(sequences) <= 6:
        shown = ", ".join(sequences)
    else:
        shown = f"{sequences[0]} .. {sequences[-1]}, {len(sequences)} sequences"
    table = Table(title=f"Calibration ({shown})", show_header=False)
    table.add_column("entry", no_wrap=True)
    table.add_column("value", no_wrap=True)
    K = calib.K
    size = calib.image_size
    table.add_row("image size", f"{size[0]} x {size[1]} px" if size else "unknown")
    table.add_row("focal length", f"fx {K[0, 0]:.3f}  fy {K[1, 1]:.3f} px")
    table.add_row("principal point", f"cx {K[0, 2]:.3f}  cy {K[1, 2]:.3f} px")
    t = calib.T_cam_lidar[:3, 3]
    c = calib.T_lidar_cam[:3, 3]
    table.add_row("LiDAR->camera t", f"{t[0]:+.3f} {t[1]:+.3f} {t[2]:+.3f} m")
    table.add_row("camera in LiDAR", f"x {c[0]:+.3f}  y {c[1]:+.3f}  z {c[2]:+.3f} m")
    table.add_row("P", _format_matrix(calib.P))
    table.add_row("T_cam_lidar", _format_matrix(calib.T_cam_lidar))
    return table


# --- the command ---------------------------------------------------------------------------------
EPILOG = examples(
    "liploc info /data/kitti/dataset",
    "liploc info /data/kitti_raw --layout kitti_raw --no-check-files",
    notes="Exit status: 0 when the folder reads cleanly, 1 when a problem or no sequence is found.",
)


def info(
    data_root: Annotated[
        Path,
        typer.Argument(
            metavar="DATA_ROOT", help="Dataset folder (KITTI, SemanticKITTI, KITTI-360, raw).", **EXISTING_DIR
        ),
    ],
    layout: Layout = "auto",
    check_files: Annotated[
        bool, typer.Option("--check-files/--no-check-files", help="Check every scan's size and image header.")
    ] = True,
) -> None:
    """Describe a dataset folder: layout, sequences, frames, calibration and every problem found."""
    with reported_errors():
        summary = describe_dataset(data_root, layout=layout, console=cli_console, check_files=check_files)
    # A script (or CI) can tell a clean dataset from one with problems by the exit status.
    if summary.problems or not summary.sequences:
        raise typer.Exit(code=1)
