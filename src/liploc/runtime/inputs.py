"""Model inputs of a frame: the camera image and the LiDAR input, preprocessed (deterministic,
cacheable, 0..255) and transformed (normalisation and, in training, coarse dropout; see
:class:`InputTransform`); and for the geometry bridge (``model.method: bridge``) the scan's sparse
depth image at ``bridge.depth_size`` (the depth target), the scan's BEV raster made from it, and
the calibration of a depth image of that size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F

from liploc.config import Config, DataConfig, ModelConfig, PhotometricAugment
from liploc.datasets import Frame, load_image, load_scan
from liploc.errors import ConfigError, DataError, LiplocError
from liploc.models.input_normalization import tower_mean_std

if TYPE_CHECKING:
    from liploc.lidar import RangeProjector

# IMAGENET_* re-exported: callers import them from here.
from liploc.models.input_normalization import IMAGENET_MEAN as IMAGENET_MEAN
from liploc.models.input_normalization import IMAGENET_STD as IMAGENET_STD

Modality = Literal["image", "lidar"]
CachedInput = Literal["image", "lidar", "depth", "bev"]
"""What the preprocessing cache holds: the towers' inputs and the bridge's depth target and BEV."""


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


@dataclass(frozen=True)
class PhotometricJitter:
    """Photometric jitter of a camera image (see :class:`liploc.config.PhotometricAugment`)."""

    settings: PhotometricAugment

    def __call__(self, array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A (3, H, W) image in 0..255 -> float32 (3, H, W) in 0..255, jittered with draws from
        ``rng`` (the image's own stream, so a sample's jitter is fixed by seed, epoch and index)."""
        import torchvision.transforms.v2.functional as TF

        s = self.settings
        x = torch.from_numpy(np.asarray(array, dtype=np.float32) / 255.0)
        if rng.random() >= s.p:
            return x.numpy() * 255.0

        def factor(bound: float) -> float:
            return float(rng.uniform(1.0 - bound, 1.0 + bound))

        gains = torch.tensor([factor(s.white_balance) for _ in range(3)]).view(3, 1, 1)
        x = (x * gains).clamp_(0.0, 1.0)
        x = TF.adjust_brightness(x, factor(s.brightness))
        x = TF.adjust_contrast(x, factor(s.contrast))
        x = TF.adjust_saturation(x, factor(s.saturation))
        x = TF.adjust_hue(x, float(rng.uniform(-s.hue, s.hue)))
        x = TF.adjust_gamma(x, factor(s.gamma))
        if s.blur_sigma > 0 and rng.random() < s.blur_p:
            sigma = float(rng.uniform(0.1, s.blur_sigma))
            kernel = 2 * int(np.ceil(3 * sigma)) + 1
            x = TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
        if s.noise > 0:
            std = float(rng.uniform(0.0, s.noise))
            noise = rng.standard_normal(x.shape).astype(np.float32) * std
            x = x + torch.from_numpy(noise)
        return x.clamp_(0.0, 1.0).numpy() * 255.0


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
    photometric: PhotometricJitter | None = None
    """Jitter of the camera image before :attr:`image` (training only, when configured)."""


def build_transforms(data: DataConfig, train: bool, model: ModelConfig | None = None) -> Transforms:
    """The per-sample transforms of ``data``: normalisation, plus coarse dropout (and the camera
    image's photometric jitter, when configured) when ``train``.

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
        photometric=PhotometricJitter(data.photometric) if train and data.photometric.p > 0 else None,
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


# --- geometry bridge -----------------------------------------------------------------------------
def depth_calibration(frame: Frame, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(P (3, 4), T_cam_lidar (4, 4))`` of ``frame``'s camera image resized (no crop) to
    ``model.bridge.depth_size``: what back-projects a depth image of that size."""
    from liploc.lidar.back_projection import calibration_for_depth

    if frame.calib.image_size is None:
        raise DataError(frame.image_path, "calibration has no image size; the geometry bridge needs it")
    calib = calibration_for_depth(frame.calib, tuple(config.model.bridge.depth_size))  # type: ignore[arg-type]
    P = np.asarray(calib.P, dtype=np.float64)
    if P.shape == (3, 3):
        P = np.hstack([P, np.zeros((3, 1))])
    return P, np.asarray(calib.T_cam_lidar, dtype=np.float64)


def depth_target(frame: Frame, config: Config, sideways_m: float = 0.0) -> np.ndarray:
    """float32 (1, h, w) sparse depth image of ``frame``'s scan in its camera at
    ``model.bridge.depth_size`` (metres, 0 where no point landed; points beyond
    ``bridge.max_depth`` left out): the depth head's target and the source of the scan's BEV.
    ``sideways_m``: the scan as seen from that many metres to the left (the rig moved as one)."""
    from liploc.lidar import camera_depth_image, shift_points_sideways
    from liploc.lidar.camera_depth import DEFAULT_MIN_DEPTH

    if frame.calib.image_size is None:
        raise DataError(frame.image_path, "calibration has no image size; the geometry bridge needs it")
    bridge = config.model.bridge
    h, w = bridge.depth_size
    points = load_scan(frame.scan_path)
    if sideways_m:
        points = shift_points_sideways(points, sideways_m)
    try:
        depth = camera_depth_image(
            points, frame.calib, out_size=(w, h), min_depth=DEFAULT_MIN_DEPTH, max_depth=bridge.max_depth
        )
    except LiplocError:
        raise
    except (ValueError, ArithmeticError) as err:
        raise DataError(frame.scan_path, f"cannot make the depth image ({err})") from None
    return depth[None].astype(np.float32, copy=False)


def scan_bev_input(depth: np.ndarray, P: np.ndarray, T_cam_lidar: np.ndarray, config: Config) -> np.ndarray:
    """float32 (C, rows, cols) BEV raster of a scan's depth image (1, h, w) with its calibration:
    back-projected and rasterised by the function that rasterises the predicted depth
    (:func:`liploc.models.geometry_bridge.depth_image_bev`), so that both sides sample alike."""
    from liploc.models.geometry_bridge import depth_image_bev

    d = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)).reshape(1, *depth.shape[-2:])
    with torch.no_grad():
        raster = depth_image_bev(
            d, torch.from_numpy(P)[None], torch.from_numpy(T_cam_lidar)[None], config.model.bridge
        )
    return raster[0].numpy()
