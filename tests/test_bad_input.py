"""Bad input: every broken file gives an error naming the file and the problem (or is counted)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image, write_kitti360, write_kitti_odometry, write_kitti_raw, write_scan

from liploc.datasets import load_image, load_scan, open_dataset, read_image_size, read_scan
from liploc.errors import DataError


def test_scan_size_not_multiple_of_16(tmp_path: Path) -> None:
    path = tmp_path / "000000.bin"
    path.write_bytes(np.zeros(9, dtype=np.float32).tobytes())  # 36 bytes
    with pytest.raises(DataError, match="multiple of 16") as err:
        load_scan(path)
    assert err.value.path == path
    assert str(path) in str(err.value) and "36 bytes" in str(err.value)


def test_nan_and_inf_points_are_dropped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    points = np.arange(40, dtype=np.float32).reshape(10, 4)
    points[2, 0] = np.nan
    points[5, 3] = np.inf
    points[7, 1] = -np.inf
    path = write_scan(tmp_path / "000001.bin", points)
    scan = read_scan(path)
    assert scan.n_dropped == 3 and scan.n_read == 10
    np.testing.assert_array_equal(scan.points, points[[0, 1, 3, 4, 6, 8, 9]])
    with caplog.at_level(logging.WARNING, logger="liploc.datasets.scan"):
        loaded = load_scan(path)
    assert loaded.shape == (7, 4) and loaded.dtype == np.float32
    assert "dropped 3 of 10 points" in caplog.text and str(path) in caplog.text


def test_empty_scan_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "000002.bin"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty scan") as err:
        load_scan(path)
    assert err.value.path == path


def test_scan_of_only_nan_points_is_an_error(tmp_path: Path) -> None:
    path = write_scan(tmp_path / "000003.bin", np.full((4, 4), np.nan, dtype=np.float32))
    with pytest.raises(DataError, match="all 4 points have NaN"):
        load_scan(path)


def test_missing_scan_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_scan(tmp_path / "nope.bin")


def test_scan_without_image_is_a_problem_and_an_error_when_asked_for(tmp_path: Path) -> None:
    seq = write_kitti_odometry(tmp_path, n_frames=4, skip_images=[2])
    reader = open_dataset(tmp_path)
    assert [f.index for f in reader.frames("00")] == [0, 1, 3]
    lonely = seq / "velodyne" / "000002.bin"
    assert any(p.startswith(str(lonely)) and "scan has no image" in p for p in reader.problems)
    with pytest.raises(DataError, match="scan has no image") as err:
        reader.frame("00", 2)
    assert err.value.path == lonely
    assert reader.frame("00", 3).index == 3
    with pytest.raises(DataError, match="no frame 9"):
        reader.frame("00", 9)


def test_image_without_scan_is_a_problem(tmp_path: Path) -> None:
    seq = write_kitti_raw(tmp_path, frame_numbers=[0, 1, 2], skip_scans=[0])
    reader = open_dataset(tmp_path)
    assert [f.index for f in reader.frames(seq.name)] == [1, 2]
    lonely = seq / "image_02" / "data" / "0000000000.png"
    assert any(p.startswith(str(lonely)) and "image has no scan" in p for p in reader.problems)
    with pytest.raises(DataError, match="image has no scan"):
        reader.frame(seq.name, 0)


def test_pose_file_with_too_few_lines(tmp_path: Path) -> None:
    write_kitti_odometry(tmp_path, n_frames=5)
    poses = tmp_path / "poses" / "00.txt"
    poses.write_text("".join(poses.read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(DataError, match=r"3 pose lines but the sequence has 5 frames.*line 4") as err:
        open_dataset(tmp_path).frames("00")
    assert err.value.path == poses


def test_pose_file_with_too_many_lines(tmp_path: Path) -> None:
    write_kitti_odometry(tmp_path, n_frames=5)
    poses = tmp_path / "poses" / "00.txt"
    lines = poses.read_text().splitlines(keepends=True)
    poses.write_text("".join(lines + lines[:2]))
    with pytest.raises(DataError, match="lines 6-7 extra"):
        open_dataset(tmp_path).frames("00")


def test_pose_file_with_wrong_number_of_columns(tmp_path: Path) -> None:
    write_kitti_odometry(tmp_path, n_frames=5)
    poses = tmp_path / "poses" / "00.txt"
    lines = poses.read_text().splitlines()
    lines[3] = " ".join(lines[3].split()[:11])
    poses.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 4: 11 columns, expected 12") as err:
        open_dataset(tmp_path).frames("00")
    assert err.value.path == poses


def test_pose_file_with_text(tmp_path: Path) -> None:
    write_kitti_odometry(tmp_path, n_frames=3)
    poses = tmp_path / "poses" / "00.txt"
    lines = poses.read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split()[5], "abc", 1)
    poses.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 2: not a list of numbers"):
        open_dataset(tmp_path).frames("00")


def test_kitti360_pose_file_with_wrong_columns(tmp_path: Path) -> None:
    drive = "2013_05_28_drive_0000_sync"
    good = "0 " + " ".join(["1", "0", "0", "0", "0", "1", "0", "0", "0", "0", "1", "0"])
    write_kitti360(tmp_path, drive, n_frames=2, pose_lines=[good, "1 1 0 0 0"])
    with pytest.raises(DataError, match="line 2: 5 columns, expected 13") as err:
        open_dataset(tmp_path).frames(drive)
    assert err.value.path.name == "poses.txt"


@pytest.mark.parametrize("missing", ["P2", "Tr"])
def test_kitti_calibration_missing_key(tmp_path: Path, missing: str) -> None:
    seq = write_kitti_odometry(tmp_path, n_frames=2)
    calib = seq / "calib.txt"
    calib.write_text(
        "".join(line + "\n" for line in calib.read_text().splitlines() if not line.startswith(missing))
    )
    with pytest.raises(DataError, match=f"missing calibration key '{missing}'") as err:
        open_dataset(tmp_path).frames("00")
    assert err.value.path == calib


def test_kitti_raw_calibration_missing_key(tmp_path: Path) -> None:
    write_kitti_raw(tmp_path, frame_numbers=[0], cam_to_cam_text="R_rect_00: 1 0 0 0 1 0 0 0 1\n")
    reader = open_dataset(tmp_path)
    with pytest.raises(DataError, match="missing calibration key 'P_rect_02'") as err:
        reader.frames(reader.sequences()[0])
    assert err.value.path.name == "calib_cam_to_cam.txt"


def test_kitti360_calibration_missing_key(tmp_path: Path) -> None:
    drive = "2013_05_28_drive_0000_sync"
    write_kitti360(tmp_path, drive, n_frames=1)
    perspective = tmp_path / "calibration" / "perspective.txt"
    perspective.write_text(
        "".join(x + "\n" for x in perspective.read_text().splitlines() if "P_rect_00" not in x)
    )
    with pytest.raises(DataError, match="missing calibration key 'P_rect_00'") as err:
        open_dataset(tmp_path).frames(drive)
    assert err.value.path == perspective


def test_calibration_key_with_wrong_count(tmp_path: Path) -> None:
    seq = write_kitti_odometry(tmp_path, n_frames=1)
    calib = seq / "calib.txt"
    calib.write_text(calib.read_text().replace("P2:", "P2: 1.0"))
    with pytest.raises(DataError, match="key 'P2' has 13 numbers, expected 12"):
        open_dataset(tmp_path).frames("00")


def test_missing_calibration_file(tmp_path: Path) -> None:
    seq = write_kitti_odometry(tmp_path, n_frames=1)
    (seq / "calib.txt").unlink()
    with pytest.raises(DataError, match="calibration file not found"):
        open_dataset(tmp_path).frames("00")


def test_corrupt_and_truncated_images(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a png at all")
    with pytest.raises(DataError, match="not a readable image") as err:
        load_image(garbage)
    assert err.value.path == garbage
    with pytest.raises(DataError, match="not a readable image"):
        read_image_size(garbage)

    good = write_image(tmp_path / "good.png", (64, 48), value=7)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:-60])
    assert read_image_size(truncated) == (64, 48)  # the header is intact ...
    with pytest.raises(DataError, match="corrupt image") as err:
        load_image(truncated)  # ... the pixels are not
    assert err.value.path == truncated
    with pytest.raises(DataError, match="image file not found"):
        load_image(tmp_path / "missing.png")


def test_grey_image_is_loaded_as_rgb(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "grey.png"
    Image.fromarray(np.full((20, 30), 200, dtype=np.uint8)).save(path)
    image = load_image(path)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8 and (image == 200).all()


def test_unknown_sequence_and_not_a_dataset(tmp_path: Path) -> None:
    write_kitti_odometry(tmp_path / "kitti", n_frames=1)
    with pytest.raises(DataError, match=r"no sequence '05'.*found: 00"):
        open_dataset(tmp_path / "kitti").frames("05")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no known dataset layout"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="unknown dataset layout"):
        open_dataset(tmp_path / "kitti", layout="nuscenes")
