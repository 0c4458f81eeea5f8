"""Torch datasets of camera/LiDAR pairs with the paper's preprocessing.

Files on disk become model inputs in two stages:

1. **Preprocessing** (deterministic, cacheable): the camera image is decoded and resized to
   ``data.image_size``; the scan is read, turned into the LiDAR input of ``data.lidar_input``
   (cropped range image, or depth image in the camera plane) and resized. Both are kept in the
   0..255 scale, as the reference code's 8-bit images are. In training, with
   ``data.lidar_sideways_m``, some scans are seen from a LiDAR moved sideways instead (drawn per
   sample like the transform's randomness, and not cached).
2. **Transform** (per sample): scale to 0..1, ImageNet normalisation and, in training, coarse
   dropout. Its randomness comes from a generator seeded by ``(seed, epoch, index)`` so that a
   sample looks the same whatever the worker, the number of processes, or a resume in between.
   Training and embedding split it (``raw=True``): workers send the uint8 inputs and the dropout
   rectangles they drew, and the device normalises and fills the holes of the whole batch.

:class:`PairDataset` yields both inputs of a frame with its ground-plane position;
:class:`ImageDataset` and :class:`LidarDataset` yield one modality, for embedding a sequence.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler, Sampler

from liploc.config import Config, DataConfig, DatasetSplit, ModelConfig
from liploc.datasets import Frame, load_image, load_scan, open_dataset
from liploc.datasets.sequence_range import parse_ranges
from liploc.errors import ConfigError, DataError, LiplocError
from liploc.training.losses import world_code

if TYPE_CHECKING:
    from liploc.lidar import RangeProjector

# IMAGENET_* re-exported: callers import them from here.
from liploc.models.input_normalization import IMAGENET_MEAN as IMAGENET_MEAN
from liploc.models.input_normalization import IMAGENET_STD as IMAGENET_STD
from liploc.models.input_normalization import tower_mean_std

Modality = Literal["image", "lidar"]
SplitName = Literal["train", "val", "test"]

PREPROCESS_VERSION = 1
"""Bumped when preprocessing changes, so that old cache entries are not reused."""


# --- transforms ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CoarseDropout:
    """Blank ``holes`` rectangles of an input (the reference code's albumentations CoarseDropout).

    Each hole's height and width are drawn uniformly in ``[min_size, max_size]`` times the input's
    height and width; holes lie inside the input and may overlap. Filled with ``fill`` (0 after
    normalisation: the mean colour).
    """

    holes: int
    min_size: float
    max_size: float
    p: float
    fill: float = 0.0

    def draw(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """The holes of one sample as int32 rows ``(top, left, height, width)``, ``holes`` rows.

        Rows of height 0 are no hole (the sample was not augmented). Drawing consumes ``rng``
        exactly as applying them does, so workers can draw and the device can apply.
        """
        rects = np.zeros((self.holes, 4), dtype=np.int32)
        if self.holes == 0 or rng.random() >= self.p:
            return rects
        for i in range(self.holes):
            hh = max(1, round(height * rng.uniform(self.min_size, self.max_size)))
            hw = max(1, round(width * rng.uniform(self.min_size, self.max_size)))
            top = int(rng.integers(0, max(1, height - hh + 1)))
            left = int(rng.integers(0, max(1, width - hw + 1)))
            rects[i] = (top, left, hh, hw)
        return rects

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """``x`` (C, H, W) with holes, changed in place and returned."""
        return fill_holes(
            x[None], torch.from_numpy(self.draw(x.shape[-2], x.shape[-1], rng))[None], self.fill
        )[0]


def fill_holes(x: torch.Tensor, holes: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Batch ``x`` (B, C, H, W) with the rectangles ``holes`` (B, K, 4) of :meth:`CoarseDropout.draw`
    set to ``fill``, on ``x``'s device (one masked fill, no per-hole loop on the host)."""
    holes = holes.to(x.device, non_blocking=True).long()
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    top, left, hh, hw = (holes[..., i].view(*holes.shape[:2], 1, 1) for i in range(4))
    inside = (rows >= top) & (rows < top + hh) & (cols >= left) & (cols < left + hw)
    mask = inside.any(dim=1, keepdim=True)  # (B, 1, H, W)
    return x.masked_fill_(mask, fill)


def normalize_input(
    x: torch.Tensor, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> torch.Tensor:
    """Inputs in the 0..255 scale (uint8 or float; ``(C, H, W)`` or ``(B, C, H, W)``) -> float32
    ``(x / 255 - mean) / std`` per channel on ``x``'s device (no normalisation when mean/std are None).

    The one place normalisation happens: workers' CPU transform and the device path both call it.
    """
    x = x.to(torch.float32) / 255.0
    if mean is None or std is None:
        return x
    c = x.shape[-3]
    shape = (c, 1, 1)
    m = torch.tensor(_per_channel(mean, c), dtype=torch.float32).view(shape).to(x.device, non_blocking=True)
    s = torch.tensor(_per_channel(std, c), dtype=torch.float32).view(shape).to(x.device, non_blocking=True)
    return (x - m) / s


@dataclass(frozen=True)
class InputTransform:
    """A preprocessed (C, H, W) array in 0..255 -> float tensor: /255, normalise, optional dropout."""

    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    dropout: CoarseDropout | None = None

    def __call__(self, array: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        x = normalize_input(torch.from_numpy(np.asarray(array)), self.mean, self.std)
        if self.dropout is not None and rng is not None:
            x = self.dropout(x, rng)
        return x

    def on_device(
        self, batch: torch.Tensor, holes: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor:
        """The same transform of a collated batch of raw inputs (B, C, H, W; uint8 or 0..255 float)
        on ``device``, with the holes the workers drew (see :meth:`PairDataset` ``raw``)."""
        x = normalize_input(batch.to(device, non_blocking=True), self.mean, self.std)
        if self.dropout is not None and holes is not None:
            x = fill_holes(x, holes, self.dropout.fill)
        return x


def _per_channel(values: tuple[float, ...], channels: int) -> list[float]:
    # ImageNet statistics have 3 entries; other channel counts reuse them cyclically.
    return [values[i % len(values)] for i in range(channels)]


@dataclass(frozen=True)
class Transforms:
    """The transform of each tower's input."""

    image: InputTransform
    lidar: InputTransform


def build_transforms(data: DataConfig, train: bool, model: ModelConfig | None = None) -> Transforms:
    """The per-sample transforms of ``data``: normalisation, plus coarse dropout when ``train``.

    Normalisation follows ``data.normalize``; ``auto`` (each encoder's pretrained statistics from
    timm) needs ``model``.
    """
    image_norm, lidar_norm = tower_mean_std(data, model)
    dropout = None
    if train and data.augment and data.coarse_dropout_holes > 0:
        dropout = CoarseDropout(
            holes=data.coarse_dropout_holes,
            min_size=data.coarse_dropout_min_size,
            max_size=data.coarse_dropout_size,
            p=data.coarse_dropout_p,
        )
    return Transforms(
        image=InputTransform(*(image_norm or (None, None)), dropout),
        lidar=InputTransform(*(lidar_norm or (None, None)), dropout if data.augment_lidar else None),
    )


# --- preprocessing -------------------------------------------------------------------------------
def resize_chw(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (C, h, w) array to (C, H, W) float32 (``size`` = (H, W)).

    Half-pixel centres without antialiasing, as OpenCV's ``INTER_LINEAR`` used by the reference code.
    """
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if tuple(x.shape[-2:]) == tuple(size):
        return x.numpy()
    out = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=False)
    return out[0].numpy()


def resize_chw_opencv(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(..., INTER_LINEAR)`` of a (C, h, w) array to (C, H, W), as the reference code.

    Whole 8-bit levels (uint8 input, or floats holding whole numbers in 0..255) are resized as a
    uint8 image, so OpenCV's fixed-point arithmetic and rounding apply as in the reference;
    other values are resized in float32. Returns float32 either way.
    """
    try:
        import cv2  # opencv-python-headless; imported here so that only this setting needs it
    except ImportError:
        raise ConfigError(
            "data.resize: opencv needs the package opencv-python-headless (pip install "
            "opencv-python-headless), or set data.resize: torch"
        ) from None

    x = np.asarray(array)
    h, w = size
    if tuple(x.shape[-2:]) == (h, w):
        return x.astype(np.float32)
    whole_levels = x.dtype == np.uint8 or (
        x.size > 0 and np.all((x >= 0) & (x <= 255)) and np.array_equal(x, np.rint(x))
    )
    hwc = np.ascontiguousarray(x.transpose(1, 2, 0), dtype=np.uint8 if whole_levels else np.float32)
    out = cv2.resize(hwc, (w, h), interpolation=cv2.INTER_LINEAR)
    if out.ndim == 2:  # OpenCV drops a single channel axis
        out = out[..., None]
    return out.transpose(2, 0, 1).astype(np.float32)


def resize_input(array: np.ndarray, size: tuple[int, int], method: str = "torch") -> np.ndarray:
    """Resize a (C, h, w) input to ``size`` (H, W) with ``data.resize``'s ``method``."""
    if method == "opencv":
        return resize_chw_opencv(array, size)
    return resize_chw(array, size)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    # OpenCV rounds when resizing 8-bit images; so do we.
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def camera_input(frame: Frame, config: Config) -> np.ndarray:
    """uint8 (3, H, W) camera image of ``frame`` resized to ``data.image_size``."""
    return camera_image_input(load_image(frame.image_path), config)


def camera_image_input(image: np.ndarray, config: Config) -> np.ndarray:
    """uint8 (3, H, W) of an (H, W, 3) camera image resized to ``data.image_size``."""
    return _to_uint8(resize_input(image.transpose(2, 0, 1), config.data.image_size, config.data.resize))


def lidar_input(
    frame: Frame, config: Config, projector: RangeProjector | None = None, sideways_m: float = 0.0
) -> np.ndarray:
    """(C, H, W) LiDAR input of ``frame`` in the 0..255 scale at ``data.image_size``.

    ``range``: the cropped range image, resized. ``camera_depth``: the sparse depth image in the
    camera, projected directly at the network size (scaled intrinsics) instead of blurred by a
    resize. uint8 when the projection quantises to 8-bit levels (paper), float32 otherwise.
    ``projector`` (optional) reuses its work memory across scans. ``sideways_m`` (non-zero): the
    input of a LiDAR that many metres to the left (negative: right), see
    :mod:`liploc.lidar.viewpoint_shift`.
    """
    from liploc.lidar import (
        RangeProjector,
        camera_depth_input,
        fill_small_gaps,
        range_image_to_input,
        shift_points_sideways,
    )

    points = load_scan(frame.scan_path)
    if sideways_m:
        points = shift_points_sideways(points, sideways_m)
    h, w = config.data.image_size
    try:
        if config.data.lidar_input == "range":
            projector = projector or RangeProjector(config.projection)
            if sideways_m:
                window = projector.crop_window(frame.calib)
                image = fill_small_gaps(projector.project(points), window=window)
                values = range_image_to_input(image, config.projection, window=window)
            else:
                values = projector.model_input(points, frame.calib)
            values = resize_input(values, (h, w), config.data.resize)
        else:
            if frame.calib.image_size is None:
                raise DataError(
                    frame.image_path, "calibration has no image size; the camera depth input needs it"
                )
            values = camera_depth_input(points, frame.calib, config.projection, out_size=(w, h))
    except LiplocError:
        raise
    except (ValueError, ArithmeticError) as err:
        raise DataError(frame.scan_path, f"cannot make the LiDAR input ({err})") from None
    return _to_uint8(values) if config.projection.quantize else values.astype(np.float32)


class PreprocessCache:
    """Preprocessed inputs kept as checked ``.npy`` files under ``folder/<settings key>/<modality>/``.

    Keys and sharing: see :mod:`liploc.training.preprocess_cache`. An entry that fails its
    checksum is made again, rewritten, and reported once (a warning naming the file); a write that
    fails (read-only or full disk) only costs speed.
    """

    def __init__(self, folder: str | Path, config: Config) -> None:
        from liploc.training.preprocess_cache import settings_key

        self.folder = Path(folder) / settings_key(config, PREPROCESS_VERSION)
        self._write_failure_reported = False
        # resolve() walks every component of the path (a tenth of a millisecond per entry read);
        # what a path resolves to is fixed for a run, its size and time are checked on each read.
        self._resolved: dict[Path, str] = {}

    def path_for(self, source: Path, modality: Modality) -> Path:
        """Cache file of ``source`` (raises DataError when the source is missing)."""
        try:
            st = source.stat()
        except OSError as err:
            raise DataError(source, f"cannot read file ({err.strerror or err})") from None
        resolved = self._resolved.get(source)
        if resolved is None:
            resolved = self._resolved[source] = str(source.resolve())
        ident = f"{resolved}|{st.st_size}|{st.st_mtime_ns}"
        return self.folder / modality / f"{hashlib.sha1(ident.encode()).hexdigest()[:24]}.npy"

    def get(self, source: Path, modality: Modality, make: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for ``source``, made (and stored) with ``make()`` when absent or damaged."""
        from liploc.checked_array import DamagedEntry, read_checked, write_checked

        path = self.path_for(source, modality)
        try:
            return read_checked(path)
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
            if not self._write_failure_reported:
                self._write_failure_reported = True
                warnings.warn(
                    f"the preprocessing cache could not be written, which only costs speed: {err}",
                    UserWarning,
                    stacklevel=2,
                )
        return array


# --- datasets ------------------------------------------------------------------------------------
class WorkerDataError(DataError):
    """A DataError raised in a data-loading worker process, as the main process receives it.

    torch re-creates a worker's exception in the main process from one string (a traceback
    text); this class takes that string and keeps only the original ``PATH: problem`` line, so
    the command line still shows a clean message naming the file.
    """

    _MARK = "DataError: "

    def __init__(self, message: str) -> None:
        lines = [line for line in str(message).splitlines() if line.strip()]
        last = lines[-1] if lines else str(message)
        if self._MARK in last:
            last = last.split(self._MARK, 1)[1]
        path, sep, problem = last.partition(": ")
        super().__init__(path if sep else "<data>", problem if sep else last)


class PairDataset(Dataset):
    """Samples of frames: ``{"image", "lidar", "position_xy", "world", "index"}`` (the modalities asked for).

    Args:
        frames: the frames, in the order of the dataset's indices.
        config: full configuration (``data`` and ``projection`` are used).
        train: apply the training augmentation.
        modalities: which inputs to build (``image``, ``lidar`` or both).
        cache_dir: folder of a :class:`PreprocessCache`, or None to preprocess every time.
        seed: seed of the augmentation (default ``config.train.seed``).
        raw: yield the preprocessed inputs as they are (uint8 in 0..255, a quarter of float32's
            bytes through the workers' shared memory) plus, in training, the coarse-dropout
            rectangles drawn from the same seeded stream (``image_holes`` / ``lidar_holes``, see
            :meth:`CoarseDropout.draw`); :meth:`device_inputs` then normalises and drops out on
            the device. Equal results to the default path, which does it all here.

    An item is looked up by index, or by ``(epoch, index)`` as :class:`EpochSampler` yields: the
    augmentation of a sample (and, with ``data.lidar_sideways_m``, the sideways move of its scan)
    is a function of ``(seed, epoch, index)`` alone.

    ``position_xy`` is the float64 ground-plane position (NaN for frames without a pose);
    ``world`` the int64 code of the world frame it is in (positions of different worlds are not
    comparable; the pose-aware loss takes positives only within one world).
    """

    def __init__(
        self,
        frames: Sequence[Frame],
        config: Config,
        train: bool = False,
        modalities: Sequence[Modality] = ("image", "lidar"),
        cache_dir: str | Path | None = None,
        seed: int | None = None,
        raw: bool = False,
    ) -> None:
        unknown = set(modalities) - {"image", "lidar"}
        if unknown or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of ('image', 'lidar'), got {modalities}")
        self.frames = list(frames)
        self.config = config
        self.train = train
        self.modalities = tuple(modalities)
        self.transforms = build_transforms(config.data, train, config.model)
        self.cache = PreprocessCache(cache_dir, config) if cache_dir is not None else None
        self.seed = config.train.seed if seed is None else seed
        self.raw = raw
        self._projector: RangeProjector | None = None  # made lazily: one per worker process

    def __len__(self) -> int:
        return len(self.frames)

    def _range_projector(self) -> RangeProjector:
        if self._projector is None:
            from liploc.lidar import RangeProjector

            self._projector = RangeProjector(self.config.projection)
        return self._projector

    def preprocessed(self, index: int, modality: Modality) -> np.ndarray:
        """The preprocessed (C, H, W) 0..255 array of one modality of frame ``index`` (cached)."""
        frame = self.frames[index]

        def make() -> np.ndarray:
            if modality == "image":
                return camera_input(frame, self.config)
            return lidar_input(frame, self.config, self._range_projector())

        if self.cache is None:
            return make()
        source = frame.image_path if modality == "image" else frame.scan_path
        return self.cache.get(source, modality, make)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        try:
            return self._sample(key)
        except DataError as err:
            if torch.utils.data.get_worker_info() is None:
                raise
            raise WorkerDataError(str(err)) from None

    def _sample(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = int(index)
        frame = self.frames[index]
        # Independent streams per modality and for the sideways move, fixed by (seed, epoch,
        # index); the first two are what they were before the third existed.
        streams = np.random.SeedSequence([self.seed, int(epoch), index]).spawn(3)
        sample: dict[str, torch.Tensor] = {
            "index": torch.tensor(index, dtype=torch.long),
            "position_xy": torch.from_numpy(frame.position_xy.astype(np.float64)),
            "world": torch.tensor(world_code(frame.world_id), dtype=torch.long),
        }
        for modality, stream in zip(("image", "lidar"), streams[:2], strict=True):
            if modality not in self.modalities:
                continue
            rng = np.random.default_rng(stream) if self.train else None
            transform: InputTransform = getattr(self.transforms, modality)
            sideways = self.sideways_m(streams[2]) if modality == "lidar" else 0.0
            if sideways:
                array = lidar_input(frame, self.config, self._range_projector(), sideways)
            else:
                array = self.preprocessed(index, modality)  # type: ignore[arg-type]
            if not self.raw:
                sample[modality] = transform(array, rng)
                continue
            sample[modality] = torch.from_numpy(np.ascontiguousarray(array))
            if transform.dropout is not None and rng is not None:
                holes = transform.dropout.draw(array.shape[-2], array.shape[-1], rng)
                sample[f"{modality}_holes"] = torch.from_numpy(holes)
        return sample

    def sideways_m(self, stream: np.random.SeedSequence) -> float:
        """Metres to the left (negative: right) that a training sample's scan is seen from, drawn
        from the sample's own ``stream``: 0 outside training, without ``data.lidar_sideways_m``,
        or with probability ``1 - data.lidar_sideways_p``."""
        data = self.config.data
        if not self.train or data.lidar_sideways_m <= 0:
            return 0.0
        rng = np.random.default_rng(stream)
        if rng.random() >= data.lidar_sideways_p:
            return 0.0
        return float(rng.uniform(-data.lidar_sideways_m, data.lidar_sideways_m))

    def device_inputs(
        self,
        batch: dict[str, torch.Tensor],
        modality: Modality,
        device: torch.device,
        channels_last: bool = True,
    ) -> torch.Tensor:
        """Model input of ``modality`` from a collated batch of this dataset, on ``device``.

        With ``raw`` the normalisation and dropout run here, on the device; otherwise the batch
        is already transformed and only moves. ``channels_last`` (NHWC) suits convolutions on GPUs
        and oneDNN on CPUs.
        """
        x = batch[modality]
        if self.raw:
            transform: InputTransform = getattr(self.transforms, modality)
            x = transform.on_device(x, batch.get(f"{modality}_holes"), device)
        else:
            x = x.to(device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


class ImageDataset(PairDataset):
    """Camera inputs of frames (no augmentation): ``{"image", "position_xy", "index"}``."""

    def __init__(
        self, frames: Sequence[Frame], config: Config, cache_dir: str | Path | None = None, raw: bool = False
    ) -> None:
        super().__init__(frames, config, train=False, modalities=("image",), cache_dir=cache_dir, raw=raw)


class LidarDataset(PairDataset):
    """LiDAR inputs of frames (no augmentation): ``{"lidar", "position_xy", "index"}``."""

    def __init__(
        self, frames: Sequence[Frame], config: Config, cache_dir: str | Path | None = None, raw: bool = False
    ) -> None:
        super().__init__(frames, config, train=False, modalities=("lidar",), cache_dir=cache_dir, raw=raw)


# --- frames of a split ---------------------------------------------------------------------------
def resolve_data_roots(config: Config, data_roots: Sequence[str | Path]) -> Config:
    """A copy of ``config`` with dataset roots set from ``--data-root`` values.

    ``DIR`` sets the root of every dataset entry that has none; ``LAYOUT=DIR`` sets the root of
    every entry of that layout (for configs combining datasets). A value whose part before ``=``
    names no layout of the config is taken as a plain folder (folder names may hold ``=``).
    """
    config = config.model_copy(deep=True)
    layouts = {d.layout for d in config.data.datasets}
    for value in data_roots:
        text = str(value)
        name, sep, folder = text.partition("=")
        if sep and name in layouts:
            for entry in config.data.datasets:
                if entry.layout == name:
                    entry.root = Path(folder)
        else:
            for entry in config.data.datasets:
                if entry.root is None:
                    entry.root = Path(text)
    return config


def _check_root(entry: DatasetSplit, position: int) -> Path:
    if entry.root is None:
        raise ConfigError(
            f"data.datasets[{position}] (layout {entry.layout}) has no root: pass --data-root DIR "
            f"(or --data-root {entry.layout}=DIR) or set data.datasets[{position}].root"
        )
    return entry.root


def split_frames(data: DataConfig, split: SplitName) -> list[Frame]:
    """Frames of the ``split`` sequences of every dataset entry, every ``frame_step``-th frame.

    A sequence may be a frame range (``00[0:3000]``: frame numbers 0-2999; see
    :class:`~liploc.datasets.sequence_range.SequenceRange`).

    Poses are not required here (see :func:`posed`). A named sequence missing from its folder is a
    DataError naming the folder and the sequences found.
    """
    frames: list[Frame] = []
    for position, entry in enumerate(data.datasets):
        sequences = getattr(entry, split)
        if not sequences:
            continue
        reader = open_dataset(_check_root(entry, position), entry.layout)
        for spec in parse_ranges(sequences):
            frames.extend(spec.select(reader.frames(spec.sequence))[:: entry.frame_step])
    return frames


def posed(frames: Sequence[Frame]) -> tuple[list[Frame], int]:
    """The frames that have a pose, and how many had none."""
    kept = [f for f in frames if f.pose is not None]
    return kept, len(frames) - len(kept)


@dataclass
class TrainingSplits:
    """Training and validation frames, and what was left out and why."""

    train: list[Frame]
    val: list[Frame]
    notes: list[str] = field(default_factory=list)
    """Human-readable lines: frames left out and why, how validation was chosen."""
    left_out: dict[str, int] = field(default_factory=dict)
    """Frames of the named sequences used by neither split, by reason (``unpaired``: a scan without
    image or the reverse; ``no_pose``; ``val_gap``: within ``val_gap_m`` of a validation frame;
    ``missing_sequence``: sequences skipped with ``allow_missing``)."""
    missing_sequences: list[str] = field(default_factory=list)
    """``layout:sequence`` of the sequences left out whole (only with ``allow_missing``)."""
    val_split: str = "none"
    """``blocks``, ``random``, ``sequences`` (the val sequences) or ``none``."""
    min_train_val_distance_m: float | None = None
    """Smallest distance between a training and a validation frame of one sequence (None: no
    sequence is in both splits)."""

    def summary(self, data: DataConfig) -> dict[str, object]:
        """JSON-ready record of the splits for ``summary.json``."""
        return {
            "train_frames": len(self.train),
            "val_frames": len(self.val),
            "val_split": self.val_split,
            "val_gap_m": data.val_gap_m if self.val_split == "blocks" else None,
            "min_train_val_distance_m": self.min_train_val_distance_m,
            "left_out": dict(self.left_out),
            "missing_sequences": list(self.missing_sequences),
            "train_sequences": sorted({f.sequence for f in self.train}),
            "val_sequences": sorted({f.sequence for f in self.val}),
        }


def _base_sequence(name: str) -> str:
    # A frame range in a split (``00[0:3000]``) names a part of sequence ``00``.
    return name.split("[", 1)[0]


def _missing_parts(reader: object, sequence: str) -> list[tuple[Path, str]]:
    """(path, problem) for each of scans, images and poses that ``sequence`` has none of."""
    files_of = getattr(reader, "files", None)
    if files_of is None:  # a reader without numbered scan/image folders: only poses are checked
        frames = reader.frames(sequence)  # type: ignore[attr-defined]
        if frames and all(f.pose is None for f in frames):
            return [(Path(str(reader.root)), f"sequence {sequence} has no poses")]  # type: ignore[attr-defined]
        return []
    files = files_of(sequence)
    out: list[tuple[Path, str]] = []
    for kind, folder, found in (
        ("scans", files.scan_folder, files.scans),
        ("images", files.image_folder, files.images),
    ):
        if not found:
            state = "is missing" if not folder.is_dir() else "holds none"
            out.append((folder, f"sequence {sequence} has no {kind} (the folder {state})"))
    if not out:
        frames = reader.frames(sequence)  # type: ignore[attr-defined]
        if frames and all(f.pose is None for f in frames):
            source = reader.pose_source(sequence) if hasattr(reader, "pose_source") else "its pose file"
            path = getattr(reader, "pose_file", lambda s: None)(sequence)
            if path is None and hasattr(reader, "pose_file_candidates"):
                path = reader.pose_file_candidates(sequence)[0]
            path = path or Path(str(reader.root))  # type: ignore[attr-defined]
            out.append((Path(path), f"sequence {sequence} has no poses ({source})"))
    return out


def check_named_sequences(
    data: DataConfig, splits: Sequence[SplitName] = ("train", "val")
) -> tuple[DataConfig, list[str]]:
    """Refuse sequences named in ``splits`` that have no images, no scans or no poses.

    Returns ``data`` unchanged and no skipped names when all are complete. Otherwise a DataError
    naming the sequence and the missing folder or file, unless ``data.allow_missing``: then a copy
    of ``data`` without those sequences and their ``layout:sequence`` names.
    """
    problems: list[tuple[Path, str]] = []
    skipped: list[str] = []
    kept = data.model_copy(deep=True)
    for position, entry in enumerate(data.datasets):
        names = {n for split in splits for n in getattr(entry, split)}
        if not names:
            continue
        reader = open_dataset(_check_root(entry, position), entry.layout)
        for name in sorted(names):
            missing = _missing_parts(reader, _base_sequence(name))
            if missing:
                problems.extend(missing)
                skipped.append(f"{entry.layout}:{name}")
                for split in splits:
                    lst = getattr(kept.datasets[position], split)
                    setattr(kept.datasets[position], split, [n for n in lst if n != name])
    if problems and not data.allow_missing:
        path, first = problems[0]
        others = "".join(f"; {p}: {problem}" for p, problem in problems[1:])
        raise DataError(
            path,
            f"{first}{others}. Training on a sequence without it would drop its frames; complete the "
            "download, remove the sequence from the config, or pass --allow-missing to go on without it",
        )
    return kept, skipped


def _unpaired_count(data: DataConfig, split: SplitName) -> int:
    """Scans without an image and images without a scan in the ``split`` sequences."""
    count = 0
    for position, entry in enumerate(data.datasets):
        names = getattr(entry, split)
        if not names:
            continue
        reader = open_dataset(_check_root(entry, position), entry.layout)
        files_of = getattr(reader, "files", None)
        if files_of is None:
            continue
        for name in {_base_sequence(n) for n in names}:
            files = files_of(name)
            count += len(files.scans.keys() ^ files.images.keys())
    return count


def training_splits(data: DataConfig, seed: int) -> TrainingSplits:
    """Training and validation frames of ``data``, with a record of everything left out.

    A named sequence without images, scans or poses is a DataError (see
    :func:`check_named_sequences`). Frames without a pose are left out (the pose-aware loss and
    validation positions need one) and counted. Validation takes the ``val`` sequences when any
    entry lists some; else ``val_fraction`` of the training frames, held out by ``val_split``:
    contiguous blocks with a ``val_gap_m`` gap (default) or at random (the paper's reference code).
    """
    from liploc.training.validation_split import block_split, min_train_val_distance, random_split

    data, missing = check_named_sequences(data)
    notes: list[str] = []
    left_out = {"unpaired": 0, "no_pose": 0, "val_gap": 0, "missing_sequence": len(missing)}
    if missing:
        notes.append(
            f"left out {len(missing)} sequence(s) with missing data (--allow-missing): {', '.join(missing)}"
        )
    train, no_pose = posed(split_frames(data, "train"))
    left_out["no_pose"] += no_pose
    left_out["unpaired"] += _unpaired_count(data, "train")
    if no_pose:
        notes.append(f"left out {no_pose} training frames without a pose")
    val_split = "none"
    if any(entry.val for entry in data.datasets):
        val, no_pose_val = posed(split_frames(data, "val"))
        left_out["no_pose"] += no_pose_val
        left_out["unpaired"] += _unpaired_count(data, "val")
        if no_pose_val:
            notes.append(f"left out {no_pose_val} validation frames without a pose")
        val_split = "sequences"
        notes.append(f"validation: {len(val)} frames of the val sequences")
    elif data.val_fraction > 0 and len(train) > 1:
        if data.val_split == "random":
            held = random_split(train, data.val_fraction, seed)
            notes.append(
                f"validation: {len(held.val)} random training frames ({data.val_fraction:.0%}, seed {seed}; "
                "the paper's split: validation frames have training neighbours metres away)"
            )
        else:
            held = block_split(train, data.val_fraction, data.val_gap_m, seed)
            notes.append(
                f"validation: {len(held.val)} frames in {held.blocks} contiguous region(s), one per world "
                f"({data.val_fraction:.0%}, seed {seed}); gap {data.val_gap_m:g} m: {len(held.gap)} frames "
                "within it used by neither split"
            )
        train, val, val_split = held.train, held.val, data.val_split
        left_out["val_gap"] = len(held.gap)
    else:
        val = []
        notes.append("validation: none (no val sequences and val_fraction 0)")
    if left_out["unpaired"]:
        notes.append(f"left out {left_out['unpaired']} scans or images without their pair")
    distance = min_train_val_distance(train, val)
    if val:
        notes.append(
            "smallest train-validation distance: "
            + (f"{distance:.1f} m (same sequence)" if distance is not None else "none (no sequence in both)")
        )
    return TrainingSplits(
        train=train,
        val=val,
        notes=notes,
        left_out=left_out,
        missing_sequences=missing,
        val_split=val_split,
        min_train_val_distance_m=distance,
    )


# --- sampling ------------------------------------------------------------------------------------
class ValidationBatches(Sampler[list[int]]):
    """This process's part of each global validation batch, every frame exactly once.

    The frames are taken in one fixed order (a permutation by ``seed``, the same every epoch) and
    cut into global batches of ``batch_size``; each global batch is split among the processes in
    near-equal consecutive parts. Unlike a distributed sampler, nothing is padded: a process may
    get a smaller or an empty part of the last batch (yielded as ``[]``; see
    :func:`collate_or_none`), so every frame is counted once in the metrics. Every process yields
    the same number of batches, as the gathering in validation needs.
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.order = np.random.default_rng(seed).permutation(num_samples).tolist()
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __iter__(self):  # type: ignore[override]
        for start in range(0, len(self.order), self.batch_size):
            batch = self.order[start : start + self.batch_size]
            parts = np.array_split(np.arange(len(batch)), self.world_size)
            yield [batch[i] for i in parts[self.rank].tolist()]

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)


def collate_or_none(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor] | None:
    """torch's default collation; None for an empty part of a batch (see :class:`ValidationBatches`)."""
    if not samples:
        return None
    return torch.utils.data.default_collate(samples)


class EpochSampler(Sampler[tuple[int, int]]):
    """One process's share of an epoch's (shuffled) indices, as ``(epoch, index)`` keys.

    The order is torch's :class:`DistributedSampler` (seeded by ``seed + epoch``; one process is
    the one-replica case), so it depends only on the seed, the epoch and the number of processes.
    ``set_epoch(epoch, start)`` skips the first ``start`` samples of this process's share, which
    is how a resumed run continues mid-epoch exactly where the interrupted one stopped.

    ``set_epoch(..., through=E, per_epoch=M)`` goes on with epochs ``epoch + 1 .. E`` (the first
    ``M`` samples of each) in the same iteration: one loader iterator then spans epoch ends, so
    persistent workers are already preparing the next epoch's first batches while this one ends
    and validates (a new iterator per epoch leaves the device idle until a worker has built a
    whole batch). The keys, and so the batches, are those of separate epochs.
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self._order = DistributedSampler(
            range(num_samples),  # type: ignore[arg-type]  # only its length is used
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.epoch = 0
        self.start = 0
        self.through: int | None = None
        self.per_epoch: int | None = None

    def set_epoch(
        self, epoch: int, start: int = 0, through: int | None = None, per_epoch: int | None = None
    ) -> None:
        """Iterate epoch ``epoch`` next, beginning at its ``start``-th sample; with ``through``,
        go on with the following epochs up to ``through``, ``per_epoch`` samples of each."""
        if through is not None and per_epoch is None:
            raise ValueError("set_epoch(through=...) needs per_epoch: the samples each epoch gives")
        self.epoch, self.start, self.through, self.per_epoch = epoch, start, through, per_epoch

    def __iter__(self):  # type: ignore[override]
        last = self.epoch if self.through is None else max(self.epoch, self.through)
        for epoch in range(self.epoch, last + 1):
            self._order.set_epoch(epoch)
            start = self.start if epoch == self.epoch else 0
            for position, index in enumerate(self._order):
                if self.per_epoch is not None and position >= self.per_epoch:
                    break
                if position >= start:
                    yield (epoch, int(index))

    def __len__(self) -> int:
        """Samples of one epoch's share from ``start`` on (what ``set_epoch`` without ``through``
        iterates)."""
        return max(0, len(self._order) - self.start)
