"""Shared test helpers: builders of tiny KITTI-family folders, and the real samples of shared/data.

Builders write a small but complete layout that the readers of ``liploc.datasets`` accept, with
random scans (float32 x, y, z, intensity) and small PNG images. They differ only in where the files
go and in their calibration and pose files: the frames of every layout are written by one writer,
:class:`Frames`, whose options (image size, points per scan, frames left out, seed) each builder
takes as keywords; the KITTI odometry folders and ``times.txt`` are those of ``liploc.synth.writer``.
Use them from any test module::

    from conftest import write_kitti_odometry, write_kitti360, write_kitti_raw

(pytest puts ``tests/`` on ``sys.path``), or through the fixtures at the bottom. Each builder
returns the folder of the sequence/drive it wrote, so that a test can then damage single files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypedDict

import numpy as np
import pytest
from PIL import Image

from liploc.synth import writer as synth_writer

if TYPE_CHECKING:
    from typing_extensions import Unpack

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
"""The real KITTI samples (``shared/data`` beside the repository; see its README)."""
KITTI_RAW_SAMPLE = SHARED_DATA / "kitti-raw-sample"
KITTI_ODOMETRY_POSES = SHARED_DATA / "kitti-odometry-poses"
KITTI360_CALIBRATION = SHARED_DATA / "kitti360-calibration" / "calibration"

# An ideal KITTI Velodyne -> camera 0 transform: camera x = -LiDAR y, camera y = -LiDAR z,
# camera z = LiDAR x, with the Velodyne 0.27 m behind and 0.08 m above camera 0 (as in KITTI).
IDEAL_TR = np.array(
    [
        [0.0, -1.0, 0.0, 0.0],
        [0.0, 0.0, -1.0, -0.08],
        [1.0, 0.0, 0.0, -0.27],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def default_projection(image_size: tuple[int, int], baseline_px: float = 0.0) -> np.ndarray:
    """3x4 projection of a pinhole camera with focal length = width / 2 and a centred principal point."""
    w, h = image_size
    f = w / 2.0
    return np.array([[f, 0.0, w / 2.0, baseline_px], [0.0, f, h / 2.0, 0.0], [0.0, 0.0, 1.0, 0.0]])


def random_scan(rng: np.random.Generator, n_points: int = 64) -> np.ndarray:
    """float32 (n_points, 4) points within 30 m, heights -2..2 m, intensity 0..1."""
    xyz = rng.uniform([-30.0, -30.0, -2.0], [30.0, 30.0, 2.0], size=(n_points, 3))
    intensity = rng.uniform(0.0, 1.0, size=(n_points, 1))
    return np.hstack([xyz, intensity]).astype(np.float32)


def write_scan(path: Path, points: np.ndarray) -> Path:
    """Write ``points`` as a KITTI ``.bin`` (float32, 4 values per point)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.asarray(points, dtype=np.float32).tofile(path)
    return path


def write_image(path: Path, image_size: tuple[int, int], value: int = 0) -> Path:
    """Write a (width, height) RGB image whose pixels encode ``value`` (so images differ)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = image_size
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    pixels[..., 0] = value % 256
    pixels[..., 1] = np.arange(w, dtype=np.uint8)[None, :]
    pixels[..., 2] = np.arange(h, dtype=np.uint8)[:, None]
    Image.fromarray(pixels).save(path)
    return path


def _matrix_text(matrix: np.ndarray) -> str:
    return " ".join(f"{v:.12e}" for v in np.asarray(matrix, dtype=np.float64).ravel())


def _rt_text(T: np.ndarray) -> str:
    """``R: ...`` and ``T: ...`` lines of a 4x4 (or 3x4) transform, as in KITTI raw calibration files."""
    return f"R: {_matrix_text(T[:3, :3])}\nT: {_matrix_text(T[:3, 3])}\n"


def _translation(x: float, y: float, z: float) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, 3] = x, y, z
    return pose


def _timestamps_text(n: int, start: str = "2011-09-26 13:02:25.000000000", step_s: float = 0.1) -> str:
    t0 = np.datetime64(start.replace(" ", "T"), "ns")
    stamps = t0 + (np.arange(n) * step_s * 1e9).astype("timedelta64[ns]")
    return "".join(str(s).replace("T", " ") + "\n" for s in stamps)


class FrameOptions(TypedDict, total=False):
    """The keyword arguments every layout writer takes for its frames (see :class:`Frames`)."""

    image_size: tuple[int, int]
    n_points: int
    skip_scans: Iterable[int]
    skip_images: Iterable[int]
    seed: int


@dataclass(frozen=True)
class Frames:
    """The frames of one sequence/drive, the part every layout writer shares.

    Attributes:
        image_size: (width, height) of the PNG images.
        n_points: points of each random scan.
        skip_scans / skip_images: frame numbers whose scan / image is not written.
        seed: of the random scans.
    """

    image_size: tuple[int, int] = (32, 16)
    n_points: int = 64
    skip_scans: Iterable[int] = ()
    skip_images: Iterable[int] = ()
    seed: int = 0

    def write(self, scan_folder: Path, image_folder: Path, numbers: Iterable[int], digits: int) -> None:
        """Write scan ``NNN.bin`` and image ``NNN.png`` (``digits`` wide) of each frame number."""
        scan_folder.mkdir(parents=True, exist_ok=True)
        image_folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(self.seed)
        skip_scans, skip_images = set(self.skip_scans), set(self.skip_images)
        for i in numbers:
            if i not in skip_scans:
                write_scan(scan_folder / f"{i:0{digits}d}.bin", random_scan(rng, self.n_points))
            if i not in skip_images:
                write_image(image_folder / f"{i:0{digits}d}.png", self.image_size, value=i)


def forward_camera_poses(n_frames: int, step_m: float = 1.0) -> np.ndarray:
    """(n, 4, 4) KITTI camera-0 poses moving ``step_m`` per frame along the camera z (forward)."""
    poses = np.tile(np.eye(4), (n_frames, 1, 1))
    poses[:, 2, 3] = np.arange(n_frames) * step_m
    return poses


def write_kitti_odometry(
    root: Path,
    sequence: str = "00",
    n_frames: int = 5,
    *,
    camera_poses: np.ndarray | None = None,
    pose_file: str | None = "odometry",
    Tr: np.ndarray | None = None,
    P2: np.ndarray | None = None,
    calib_text: str | None = None,
    with_times: bool = True,
    **frame_options: Unpack[FrameOptions],
) -> Path:
    """Write a KITTI odometry sequence ``root/sequences/<sequence>`` with ``n_frames`` frames.

    The folders and ``times.txt`` are those of :mod:`liploc.synth.writer`; the calibration and the
    poses are the arguments' (or simple defaults), the frames random (see :class:`Frames`).

    Args:
        camera_poses: (n, 4, 4) or (n, 3, 4) camera-0 poses in the KITTI y-down camera world
            (one line per frame); default: 1 m per frame along the camera z (forward).
        pose_file: ``"odometry"`` writes ``root/poses/<sequence>.txt``, ``"semantic"`` writes
            ``sequences/<sequence>/poses.txt`` (SemanticKITTI), None writes no poses.
        Tr: 4x4 (or 3x4) Velodyne -> camera 0; default :data:`IDEAL_TR`.
        P2: 3x4 projection of ``image_2``; default :func:`default_projection` of ``image_size``.
        calib_text: exact content of ``calib.txt`` instead of the one built from Tr and P2.
        with_times: write ``times.txt`` (0.1 s per frame).
        frame_options: image size, points per scan, frames left out, seed (see :class:`Frames`).

    Returns:
        The sequence folder.
    """
    frames = Frames(**frame_options)
    seq = synth_writer.sequence_dir(root, sequence)
    frames.write(seq / "velodyne", seq / "image_2", range(n_frames), 6)
    Tr = IDEAL_TR if Tr is None else np.asarray(Tr)
    P2 = default_projection(frames.image_size, baseline_px=4.5) if P2 is None else np.asarray(P2)
    P0 = default_projection(frames.image_size)
    if calib_text is None:
        calib_text = "".join(
            f"{key}: {_matrix_text(value)}\n"
            for key, value in [("P0", P0), ("P1", P0), ("P2", P2), ("P3", P2), ("Tr", Tr[:3, :])]
        )
    (seq / "calib.txt").write_text(calib_text)
    if with_times:
        (seq / "times.txt").write_text(synth_writer.times_text(n_frames))
    poses = forward_camera_poses(n_frames) if camera_poses is None else np.asarray(camera_poses)
    if pose_file is not None:
        path = root / "poses" / f"{sequence}.txt" if pose_file == "odometry" else seq / "poses.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(_matrix_text(p[:3, :]) + "\n" for p in poses))
    return seq


def write_kitti360_calibration(folder: Path, image_size: tuple[int, int] = (32, 16)) -> Path:
    """Write KITTI-360 calibration files with simple values (camera 0.3 m ahead of the IMU, ...).

    For the real calibration copy :data:`KITTI360_CALIBRATION` instead (``calibration_from``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    # camera 0 -> Velodyne: the camera axes permuted into the LiDAR's (x forward, z up), 0.2 m ahead.
    T_velo_cam0 = np.linalg.inv(IDEAL_TR)
    T_velo_cam0[0, 3] += 0.2
    # camera 0 -> IMU (IMU z down as in KITTI-360): camera z forward = IMU x, camera x right = IMU y.
    T_imu_cam0 = np.array([[0.0, 0.0, 1.0, 1.5], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, -0.65]])
    (folder / "calib_cam_to_velo.txt").write_text(_matrix_text(T_velo_cam0[:3, :]) + "\n")
    (folder / "calib_cam_to_pose.txt").write_text(f"image_00: {_matrix_text(T_imu_cam0)}\n")
    w, h = image_size
    (folder / "perspective.txt").write_text(
        f"S_rect_00: {w:.6e} {h:.6e}\n"
        f"R_rect_00: {_matrix_text(np.eye(3))}\n"
        f"P_rect_00: {_matrix_text(default_projection(image_size))}\n"
    )
    return folder


def write_kitti360(
    root: Path,
    drive: str = "2013_05_28_drive_0000_sync",
    n_frames: int = 5,
    *,
    imu_poses: dict[int, np.ndarray] | None = None,
    pose_lines: Sequence[str] | None = None,
    calibration_from: Path | None = None,
    with_timestamps: bool = True,
    **frame_options: Unpack[FrameOptions],
) -> Path:
    """Write a KITTI-360 drive under ``root`` (``data_3d_raw``, ``data_2d_raw``, ``data_poses``).

    Args:
        imu_poses: 4x4 IMU-to-world poses by frame number, written to ``poses.txt`` (frames not
            in it have no pose); default: every frame, 1 m per frame along x. ``{}`` writes no
            pose file.
        pose_lines: exact lines of ``poses.txt`` instead (to write malformed files).
        calibration_from: folder whose calibration files are copied to ``root/calibration``
            (e.g. :data:`KITTI360_CALIBRATION`); default :func:`write_kitti360_calibration`.
        with_timestamps: write ``velodyne_points/timestamps.txt``.
        frame_options: image size, points per scan, frames left out, seed (see :class:`Frames`).

    Returns:
        The drive's folder under ``data_3d_raw``.
    """
    frames = Frames(**frame_options)
    velodyne = root / "data_3d_raw" / drive / "velodyne_points"
    frames.write(
        velodyne / "data", root / "data_2d_raw" / drive / "image_00" / "data_rect", range(n_frames), 10
    )
    if with_timestamps:
        (velodyne / "timestamps.txt").write_text(
            _timestamps_text(n_frames, start="2013-05-28 08:46:02.000000000")
        )
    calib = root / "calibration"
    if calibration_from is not None:
        calib.mkdir(parents=True, exist_ok=True)
        for name in ("calib_cam_to_velo.txt", "calib_cam_to_pose.txt", "perspective.txt"):
            (calib / name).write_bytes((calibration_from / name).read_bytes())
    elif not calib.is_dir():
        write_kitti360_calibration(calib, frames.image_size)
    if imu_poses is None:
        imu_poses = {i: _translation(float(i), 0.0, 0.0) for i in range(n_frames)}
    if pose_lines is None and imu_poses:
        pose_lines = [f"{i} {_matrix_text(p[:3, :])}" for i, p in sorted(imu_poses.items())]
    if pose_lines is not None:
        poses = root / "data_poses" / drive / "poses.txt"
        poses.parent.mkdir(parents=True, exist_ok=True)
        poses.write_text("".join(line + "\n" for line in pose_lines))
    return velodyne.parent


def oxts_row(
    lat: float, lon: float, alt: float, roll: float = 0.0, pitch: float = 0.0, yaw: float = 0.0
) -> list[float]:
    """The 30 values of an OXTS record with the given position/orientation (others zero)."""
    return [lat, lon, alt, roll, pitch, yaw] + [0.0] * 24


def write_kitti_raw(
    root: Path,
    date: str = "2011_09_26",
    drive_number: int = 1,
    frame_numbers: Sequence[int] = range(5),
    *,
    oxts: dict[int, Sequence[float]] | None = None,
    T_velo_imu: np.ndarray | None = None,
    T_cam0_velo: np.ndarray | None = None,
    cam_to_cam_text: str | None = None,
    with_timestamps: bool = True,
    **frame_options: Unpack[FrameOptions],
) -> Path:
    """Write a KITTI raw drive ``root/<date>/<date>_drive_NNNN_sync`` and the date's calibration.

    Args:
        frame_numbers: the frame numbers written (need not start at 0 or be consecutive).
        oxts: OXTS records (30 values, see :func:`oxts_row`) by frame number; None writes no
            ``oxts`` folder.
        T_velo_imu: 4x4 IMU -> Velodyne written to ``calib_imu_to_velo.txt``; None writes none.
        T_cam0_velo: 4x4 Velodyne -> camera 0 written as R, T; default :data:`IDEAL_TR`.
        cam_to_cam_text: exact content of ``calib_cam_to_cam.txt`` (default: identity
            ``R_rect_00`` and :func:`default_projection` as ``P_rect_00``/``P_rect_02``).
        with_timestamps: write ``velodyne_points/timestamps.txt`` (one line per frame number up to
            the highest, 0.1 s apart, as in a recording).
        frame_options: image size, points per scan, frames left out, seed (see :class:`Frames`).

    Returns:
        The drive folder.
    """
    frames = Frames(**frame_options)
    date_folder = root / date
    drive = date_folder / f"{date}_drive_{drive_number:04d}_sync"
    frames.write(drive / "velodyne_points" / "data", drive / "image_02" / "data", frame_numbers, 10)
    T = IDEAL_TR if T_cam0_velo is None else np.asarray(T_cam0_velo)
    (date_folder / "calib_velo_to_cam.txt").write_text(f"calib_time: 15-Mar-2012 11:37:16\n{_rt_text(T)}")
    if cam_to_cam_text is None:
        P = default_projection(frames.image_size)
        cam_to_cam_text = (
            f"calib_time: 09-Jan-2012 13:57:47\nR_rect_00: {_matrix_text(np.eye(3))}\n"
            f"P_rect_00: {_matrix_text(P)}\n"
            f"P_rect_02: {_matrix_text(default_projection(frames.image_size, 4.5))}\n"
        )
    (date_folder / "calib_cam_to_cam.txt").write_text(cam_to_cam_text)
    if T_velo_imu is not None:
        (date_folder / "calib_imu_to_velo.txt").write_text(_rt_text(T_velo_imu))
    if with_timestamps and len(frame_numbers):
        (drive / "velodyne_points" / "timestamps.txt").write_text(_timestamps_text(max(frame_numbers) + 1))
    if oxts is not None:
        folder = drive / "oxts" / "data"
        folder.mkdir(parents=True, exist_ok=True)
        for i, values in oxts.items():
            (folder / f"{i:010d}.txt").write_text(" ".join(f"{v:.12g}" for v in values) + "\n")
    return drive


def under_ci() -> bool:
    """The one rule for "under CI": ``CI`` set to a true value (1, true or yes, in any case).

    CI services set ``CI=true``; ``.ci/run`` sets it too.
    """
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_unless_ci(message: str) -> NoReturn:
    """Skip the test for a missing prerequisite (real data, a browser, a package), or FAIL it under
    CI (:func:`under_ci`): CI must not pass by skipping. Every such skip of the suite goes here."""
    if under_ci():
        pytest.fail(f"{message}; under CI it is required", pytrace=False)
    pytest.skip(message)


def require_shared_data() -> Path:
    """``shared/data``; when absent the test is skipped, or FAILS under CI (:func:`under_ci`).

    The real KITTI samples guard behaviour synthetic data cannot: CI must not pass by skipping them.
    """
    if not SHARED_DATA.is_dir():
        skip_unless_ci(f"real KITTI samples not found at {SHARED_DATA} (see shared/data/README.md)")
    return SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    """``shared/data`` with the real KITTI samples (skipped when absent; a failure under CI)."""
    return require_shared_data()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread during the test; a module asks for it in every test with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.

    Tiny models run many small ops: one thread is as fast and immune to other processes competing
    for the cores (OpenMP threads on a busy 2-core machine slow them down many times over).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Torch on two threads during the test, the count restored after it (as :func:`one_thread`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def torch_threads_restored() -> Iterator[None]:
    """Every test leaves torch's thread count as it found it (set it through :func:`one_thread` or
    :func:`two_threads`): the speed and the rounding of the tests after it depend on the count."""
    import torch

    threads = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == threads, (
        f"the test changed torch's thread count from {threads} to {torch.get_num_threads()}"
    )


@pytest.fixture
def kitti_odometry_root(tmp_path: Path) -> Path:
    """A KITTI odometry folder with sequence ``00`` (5 frames, poses), from :func:`write_kitti_odometry`."""
    write_kitti_odometry(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True, scope="session")
def private_preprocess_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests never write into the user's real cache: the shared preprocessing cache lives in a
    temporary folder for the session (subprocesses inherit the variable)."""
    import os

    folder = tmp_path_factory.mktemp("user-cache")
    previous = os.environ.get("LIPLOC_CACHE_DIR")
    os.environ["LIPLOC_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("LIPLOC_CACHE_DIR", None)
    else:
        os.environ["LIPLOC_CACHE_DIR"] = previous
