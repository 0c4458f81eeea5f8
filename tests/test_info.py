"""``liploc info``: the summary of a dataset folder and the problems it lists."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from conftest import write_kitti360, write_kitti_odometry
from rich.console import Console
from typer.testing import CliRunner

from liploc.cli import app
from liploc.commands.info import describe_dataset
from liploc.datasets.calibration_files import read_calibration_file

SAMPLE_DRIVE = "2011_09_26_drive_0000_sync"


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120, color_system=None), out


def _broken_kitti(root: Path) -> Path:
    """A KITTI odometry sequence with a truncated scan, a corrupt image and an image-less scan."""
    seq = write_kitti_odometry(root, "00", n_frames=6, skip_images=[5])
    truncated = seq / "velodyne" / "000001.bin"
    truncated.write_bytes(truncated.read_bytes()[:-5])
    (seq / "image_2" / "000003.png").write_bytes(b"not an image")
    write_kitti_odometry(root, "11", n_frames=2, pose_file=None)
    return seq


def test_summary_of_the_raw_sample(shared_data: Path) -> None:
    console, out = _console()
    summary = describe_dataset(shared_data / "kitti-raw-sample", console=console)
    assert summary.layout == "kitti_raw"
    assert [s.name for s in summary.sequences] == [SAMPLE_DRIVE]
    seq = summary.sequences[0]
    assert (seq.n_frames, seq.n_scans, seq.n_images, seq.n_without_pose) == (8, 8, 8, 8)
    assert seq.image_size == (1242, 375) and seq.error is None
    assert summary.n_frames == 8
    (calib, names), *others = summary.calibrations
    assert names == [SAMPLE_DRIVE] and others == []
    cam = read_calibration_file(shared_data / "kitti-raw-sample" / "2011_09_26" / "calib_cam_to_cam.txt")
    np.testing.assert_allclose(calib.P, cam.matrix("P_rect_02", (3, 4)))
    assert len(summary.problems) == 1 and "8 of 8 frames have no pose" in summary.problems[0]
    text = out.getvalue()
    for expected in ("kitti_raw", SAMPLE_DRIVE, "1242x375", "721.538", "609.559", "172.854", "T_cam_lidar"):
        assert expected in text


def test_every_problem_of_a_broken_folder_is_listed(tmp_path: Path) -> None:
    seq = _broken_kitti(tmp_path)
    console, out = _console()
    summary = describe_dataset(tmp_path, console=console)
    assert summary.layout == "kitti"
    by_name = {s.name: s for s in summary.sequences}
    assert (by_name["00"].n_frames, by_name["00"].n_scans, by_name["00"].n_images) == (5, 6, 5)
    assert by_name["11"].n_without_pose == 2
    problems = "\n".join(summary.problems)
    assert f"{seq / 'velodyne' / '000005.bin'}: scan has no image" in problems
    assert f"{seq / 'velodyne' / '000001.bin'}: size" in problems and "multiple of 16" in problems
    assert f"{seq / 'image_2' / '000003.png'}: not a readable image" in problems
    assert "2 of 2 frames have no pose" in problems
    assert len(summary.problems) == 4
    text = out.getvalue()
    assert "4 problems" in text and "000003.png" in text


def test_a_sequence_that_cannot_be_read_is_reported_not_raised(tmp_path: Path) -> None:
    write_kitti360(tmp_path, "2013_05_28_drive_0000_sync", n_frames=2)
    write_kitti360(tmp_path, "2013_05_28_drive_0002_sync", n_frames=2, pose_lines=["0 1 2 3"])
    console, _ = _console()
    summary = describe_dataset(tmp_path, console=console)
    good, bad = summary.sequences
    assert good.n_frames == 2 and good.error is None
    assert bad.n_frames == 0 and "line 1: 4 columns, expected 13" in bad.error
    assert any("2013_05_28_drive_0002_sync: cannot be read" in p for p in summary.problems)


def test_cli_info_on_the_raw_sample(shared_data: Path) -> None:
    result = CliRunner().invoke(app, ["info", str(shared_data / "kitti-raw-sample")])
    # The sample has no OXTS poses: a problem, so the exit status says so to scripts.
    assert result.exit_code == 1, result.output
    assert "1 problem" in result.output and "no pose in OXTS" in result.output
    assert "kitti_raw" in result.output and "8 frames" in result.output
    assert "721.538" in result.output  # focal length of P_rect_02


def test_cli_info_on_a_broken_layout(tmp_path: Path) -> None:
    _broken_kitti(tmp_path)
    result = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "4 problems" in result.output and "multiple of 16" in result.output


def test_cli_info_on_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 1
    assert "no known dataset layout" in " ".join(result.output.split())  # rich wraps lines
    assert "Traceback" not in result.output


def test_info_names_the_world_frame_of_each_layout(tmp_path: Path) -> None:
    odometry = tmp_path / "odometry"
    for name in ("00", "01"):
        write_kitti_odometry(odometry, name, n_frames=2)
    result = CliRunner().invoke(app, ["info", str(odometry), "--no-check-files"])
    assert result.exit_code == 0, result.output
    assert "each sequence has its own" in result.output

    # The same folder written by `liploc synth --pose-frame town`: one world for all sequences.
    (odometry / "synth.json").write_text('{"pose_frame": "town"}')
    summary = describe_dataset(odometry, console=_console()[0], check_files=False)
    assert {s.world_frame for s in summary.sequences} == {"town frame (synth.json)"}
    result = CliRunner().invoke(app, ["info", str(odometry), "--no-check-files"])
    assert "world frame: town frame (synth.json) - 00, 01" in result.output

    kitti360 = tmp_path / "kitti360"
    write_kitti360(kitti360, "2013_05_28_drive_0000_sync", n_frames=2)
    write_kitti360(kitti360, "2013_05_28_drive_0002_sync", n_frames=2)
    summary = describe_dataset(kitti360, console=_console()[0], check_files=False)
    assert len({s.world_frame for s in summary.sequences}) == 1
