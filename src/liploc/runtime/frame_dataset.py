"""Torch datasets of frames: :class:`PairDataset` yields both inputs of a frame with its
ground-plane position; :class:`ImageDataset` and :class:`LidarDataset` one modality, for embedding.

Randomness (dropout, sideways moves) comes from a generator seeded by ``(seed, epoch, index)``, so
that a sample looks the same whatever the worker, the number of processes or a resume in between."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from liploc.config import Config
from liploc.datasets import Frame
from liploc.errors import DataError
from liploc.runtime.device import numpy_blas_single_threaded
from liploc.runtime.inputs import (
    CachedInput,
    InputTransform,
    Modality,
    build_transforms,
    camera_input,
    depth_calibration,
    depth_target,
    lidar_input,
    scan_bev_input,
)
from liploc.runtime.preprocess_cache import PreprocessCache

if TYPE_CHECKING:
    from liploc.lidar import RangeProjector


def world_code(world: str) -> int:
    """A stable int64 code of a world-frame id (the same in every process and run)."""
    return int.from_bytes(hashlib.sha1(world.encode("utf-8")).digest()[:8], "little", signed=True)


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

    For the geometry bridge (``model.method: bridge``) a sample also holds, with the image,
    ``P`` (3, 4) and ``T_cam_lidar`` (4, 4), float64, the calibration of a depth image of
    ``bridge.depth_size``; with the LiDAR input, ``bev``, the scan's BEV raster (float32, made from
    the scan's depth image at that size, as the image's is from its predicted depth; empty for a
    bridge without a BEV branch); with both
    (training pairs), ``depth``, the sparse depth target (1, h, w) float32 in metres. A scan moved
    sideways (``data.lidar_sideways_m``) gives its BEV from the moved points too; the depth target
    stays the scan as taken, since it supervises the image's depth.
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

    @property
    def bridge(self) -> bool:
        """Whether samples carry the geometry bridge's inputs (``model.method: bridge``)."""
        return self.config.model.method == "bridge"

    @property
    def lidar_tower_input(self) -> bool:
        """Whether samples carry the LiDAR tower's input (the range or depth image): not for a
        model without that tower (``ModelConfig.has_lidar_tower``: a bridge that matches BEV
        alone), whose samples hold an empty ``lidar`` placeholder instead."""
        return self.config.model.has_lidar_tower

    @property
    def bev_input(self) -> bool:
        """Whether samples carry the scan's BEV raster: a bridge with a BEV branch
        (``BridgeConfig.has_bev``; the ``depth_aux`` ablation has none and gets an empty ``bev``)."""
        return self.bridge and self.config.model.bridge.has_bev

    def cached_inputs(self) -> tuple[CachedInput, ...]:
        """What :meth:`preprocessed` makes for this dataset's samples (what the cache may hold)."""
        out: list[CachedInput] = [m for m in self.modalities if m != "lidar" or self.lidar_tower_input]
        if self.bridge and "lidar" in self.modalities:
            # The scan's depth image: the BEV's source, and the depth target of training pairs.
            if self.bev_input or "image" in self.modalities:
                out.append("depth")
            if self.bev_input:
                out.append("bev")
        return tuple(out)

    def preprocessed(self, index: int, modality: CachedInput) -> np.ndarray:
        """The preprocessed array of one input of frame ``index`` (cached): the (C, H, W) 0..255
        tower inputs, and for the bridge the scan's depth image (``depth``) and BEV (``bev``)."""
        frame = self.frames[index]

        def make() -> np.ndarray:
            # Also when called alone (cache warming); a cache hit computes nothing and pays nothing.
            with numpy_blas_single_threaded():
                if modality == "image":
                    return camera_input(frame, self.config)
                if modality == "depth":
                    return depth_target(frame, self.config)
                if modality == "bev":
                    P, T = depth_calibration(frame, self.config)
                    return scan_bev_input(self.preprocessed(index, "depth"), P, T, self.config)
                return lidar_input(frame, self.config, self._range_projector())

        if self.cache is None:
            return make()
        source = frame.image_path if modality == "image" else frame.scan_path
        return self.cache.get(source, modality, make, self.cache_variant(index, modality))

    def cache_variant(self, index: int, modality: CachedInput) -> str:
        """What a cache entry depends on besides its source file: the frame's calibration for the
        bridge's depth image and BEV (the scan seen through it), nothing for the others."""
        if modality not in ("depth", "bev"):
            return ""
        P, T = depth_calibration(self.frames[index], self.config)
        return hashlib.sha1(P.tobytes() + T.tobytes()).hexdigest()[:16]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        try:
            # NumPy's BLAS on one thread for the whole sample: limited to the projections alone, a
            # cold sample took 60 % longer (BLAS runs elsewhere in it too).
            with numpy_blas_single_threaded():
                return self._sample(key)
        except DataError as err:
            if torch.utils.data.get_worker_info() is None:
                raise
            raise WorkerDataError(str(err)) from None

    def _sample(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = int(index)
        frame = self.frames[index]
        # Independent streams per modality, for the sideways move and the photometric jitter,
        # fixed by (seed, epoch, index); a child stream depends only on its number, so each is
        # what it was before the later ones existed.
        streams = np.random.SeedSequence([self.seed, int(epoch), index]).spawn(4)
        sample: dict[str, torch.Tensor] = {
            "index": torch.tensor(index, dtype=torch.long),
            "position_xy": torch.from_numpy(frame.position_xy.astype(np.float64)),
            "world": torch.tensor(world_code(frame.world_id), dtype=torch.long),
        }
        sideways = self.sideways_m(streams[2]) if "lidar" in self.modalities else 0.0
        for modality, stream in zip(("image", "lidar"), streams[:2], strict=True):
            if modality not in self.modalities:
                continue
            if modality == "lidar" and not self.lidar_tower_input:
                sample["lidar"] = torch.zeros(0, dtype=torch.uint8)  # batches to (B, 0)
                continue
            rng = np.random.default_rng(stream) if self.train else None
            transform: InputTransform = getattr(self.transforms, modality)
            if modality == "lidar" and sideways:
                array = lidar_input(frame, self.config, self._range_projector(), sideways)
            else:
                array = self.preprocessed(index, modality)  # type: ignore[arg-type]
            if modality == "image" and self.transforms.photometric is not None:
                array = self.transforms.photometric(array, np.random.default_rng(streams[3]))
            if not self.raw:
                sample[modality] = transform(array, rng)
                continue
            sample[modality] = torch.from_numpy(np.ascontiguousarray(array))
            if transform.dropout is not None and rng is not None:
                holes = transform.dropout.draw(array.shape[-2], array.shape[-1], rng)
                sample[f"{modality}_holes"] = torch.from_numpy(holes)
        if self.bridge:
            self._bridge_inputs(sample, index, sideways)
        return sample

    def _bridge_inputs(self, sample: dict[str, torch.Tensor], index: int, sideways: float) -> None:
        """The geometry bridge's entries of a sample (see the class docstring)."""
        frame = self.frames[index]
        P, T = depth_calibration(frame, self.config)
        if "image" in self.modalities:
            sample["P"], sample["T_cam_lidar"] = torch.from_numpy(P), torch.from_numpy(T)
        if "lidar" in self.modalities:
            if not self.bev_input:
                sample["bev"] = torch.zeros(0, dtype=torch.float32)  # batches to (B, 0); never read
            else:
                if sideways:
                    bev = scan_bev_input(depth_target(frame, self.config, sideways), P, T, self.config)
                else:
                    bev = self.preprocessed(index, "bev")
                sample["bev"] = torch.from_numpy(np.ascontiguousarray(bev, dtype=np.float32))
            if "image" in self.modalities:
                sample["depth"] = torch.from_numpy(self.preprocessed(index, "depth"))

    def model_extras(
        self, batch: dict[str, torch.Tensor], modality: Modality, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """The keyword inputs of ``encode_image`` / ``encode_lidar`` for ``modality`` from a
        collated batch, on ``device``: none for appearance models; for the bridge, the images'
        calibration (``P``, ``T_cam_lidar``) or the scans' BEV rasters (``bev``)."""
        if not self.bridge:
            return {}
        keys = ("P", "T_cam_lidar") if modality == "image" else ("bev",)
        return {k: batch[k].to(device, non_blocking=True) for k in keys}

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
        if modality == "lidar" and not self.lidar_tower_input:
            return x.to(device)  # the empty placeholder: the model reads the BEV raster
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
