"""Embedding frames with a trained model, in batches, with an on-disk cache per model.

Data flow: frames -> ImageDataset / LidarDataset (the training preprocessing, no augmentation;
decoded and projected in loader workers, sent as uint8) -> normalised on the device -> model tower
-> float32 embeddings (L2-normalised unless the model's ``normalize`` is false: the paper's model
retrieves by the raw dot product). Queries and map scans go through the same path.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from liploc.atomic import atomic_write_bytes, sweep_stale_temporary_files
from liploc.checked_array import DamagedEntry, read_checked, write_checked
from liploc.config import Config
from liploc.datasets import Frame
from liploc.errors import ConfigError, DataError, LiplocError
from liploc.models import TwoTowerModel
from liploc.training.data import ImageDataset, LidarDataset
from liploc.training.train import autocast_dtype, resolve_device

Modality = Literal["image", "lidar"]


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when present (``auto``), else CPU; or the named torch device.

    Errors name ``--device``, the option through which evaluation and localization get it.
    """
    try:
        return resolve_device(name)
    except ConfigError as err:
        raise ConfigError(str(err).replace("train.device", "--device")) from None


_PRECISION_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def precision_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (None: fp32, no autocast)."""
    if precision not in _PRECISION_DTYPES:
        raise ValueError(f"unknown embedding precision {precision!r} (fp32, bf16, fp16)")
    return _PRECISION_DTYPES[precision]


def embedding_precision(config: Config, device: torch.device) -> str:
    """Name (``fp32``, ``bf16``, ``fp16``) of the precision ``train.precision`` gives on ``device``.

    Queries and map must be embedded alike (a bf16 map searched with fp32 queries loses recall
    for no reason): the map records this name and localization embeds its queries with it.
    """
    dtype = autocast_dtype(config.train.precision, device)
    return next(name for name, d in _PRECISION_DTYPES.items() if d == dtype)


def loader_workers(requested: int, batches: int) -> int:
    """Worker processes for embedding: ``requested`` (``data.num_workers``), at most one per CPU
    core this process may use and one per batch (a worker costs a process start)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(requested, cores, batches))


@torch.no_grad()
def embed_frames(
    model: TwoTowerModel,
    frames: Sequence[Frame],
    config: Config,
    modality: Modality,
    *,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int | None = None,
    cache_dir: str | Path | None = None,
    progress: object | None = None,
    precision: str | None = None,
) -> np.ndarray:
    """(N, D) float32 embeddings of the camera images or LiDAR scans of ``frames`` (L2-normalised
    unless ``model.cfg.normalize`` is false).

    Args:
        model: the trained two-tower model (put in eval mode here).
        frames: frames to embed, in order.
        config: configuration the model was trained with (preprocessing and projection).
        modality: ``image`` (camera tower) or ``lidar`` (LiDAR tower).
        device: where to run the model; bf16 autocast on CUDA when supported.
        batch_size: frames per forward pass.
        num_workers: DataLoader worker processes for loading and preprocessing; None:
            ``data.num_workers`` of ``config``. Capped by :func:`loader_workers`.
        cache_dir: preprocessing cache folder (see :class:`liploc.training.data.PreprocessCache`).
        progress: a ``rich.progress.Progress`` to report to, or None.
        precision: ``fp32``, ``bf16`` or ``fp16``; None: :func:`embedding_precision` of the config.
    """
    model.eval().to(device)
    if not frames:
        return np.zeros((0, model.embed_dim), dtype=np.float32)
    dataset_cls = ImageDataset if modality == "image" else LidarDataset
    dataset = dataset_cls(frames, config, cache_dir=cache_dir, raw=True)
    workers = loader_workers(
        config.data.num_workers if num_workers is None else num_workers, math.ceil(len(frames) / batch_size)
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    encode = model.encode_image if modality == "image" else model.encode_lidar
    precision = precision or embedding_precision(config, device)
    dtype = precision_dtype(precision)
    channels_last = config.train.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    task = None
    if progress is not None:
        task = progress.add_task(f"embedding {modality}", total=len(frames))  # type: ignore[attr-defined]
    out: list[torch.Tensor] = []
    for batch in loader:
        x = dataset.device_inputs(batch, modality, device, channels_last)
        out.append(embed_batch(encode, x, dtype, normalize=model.cfg.normalize))
        if task is not None:
            progress.advance(task, len(x))  # type: ignore[attr-defined]
    # One copy back at the end: no wait for the device between batches.
    return torch.cat(out).cpu().numpy().astype(np.float32, copy=False)


def embed_batch(
    encode: object, x: torch.Tensor, dtype: torch.dtype | None, normalize: bool = True
) -> torch.Tensor:
    """float32 embeddings of the model-ready batch ``x`` by the tower ``encode``, under autocast to
    ``dtype`` when given (left on ``x``'s device); unit-norm unless ``normalize`` is false (the
    paper's raw dot-product model)."""
    if dtype is not None:
        with torch.autocast(x.device.type, dtype=dtype):
            emb = encode(x)  # type: ignore[operator]
    else:
        emb = encode(x)  # type: ignore[operator]
    # Re-normalise in fp32: a bf16 output is only approximately unit length.
    return torch.nn.functional.normalize(emb.float(), dim=-1) if normalize else emb.float()


class EmbeddingCache:
    """Embeddings kept in a run folder, keyed by the model fingerprint and what was embedded.

    Re-evaluating a run with another protocol or threshold reuses them instead of re-embedding.
    A key covers the fingerprint, the modality, and every frame's file path, size and mtime. Each
    entry carries a checksum (:mod:`liploc.checked_array`): one that fails it is embedded again
    and rewritten, with a warning naming the file; a failed write only costs speed.
    """

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder = Path(folder) / fingerprint[:16]
        self._write_failure_reported = False
        if self.folder.is_dir():
            sweep_stale_temporary_files(self.folder)  # what killed evaluations left

    def _path(self, frames: Sequence[Frame], modality: Modality) -> Path:
        digest = hashlib.sha256(modality.encode())
        for f in frames:
            source = f.image_path if modality == "image" else f.scan_path
            try:
                st = source.stat()
            except OSError as err:
                raise DataError(source, f"cannot read file ({err.strerror or err})") from None
            digest.update(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        seq = frames[0].sequence if frames else "empty"
        return self.folder / f"{seq}-{modality}-{digest.hexdigest()[:16]}.npy"

    def get_or_make(self, frames: Sequence[Frame], modality: Modality, make) -> tuple[np.ndarray, bool]:
        """(embeddings, came_from_cache)."""
        path = self._path(frames, modality)
        try:
            emb = read_checked(path)
            if emb.ndim == 2 and emb.shape[0] == len(frames):
                return emb, True
            raise DamagedEntry(f"holds {emb.shape[0]} rows for {len(frames)} frames")
        except FileNotFoundError:
            pass
        except (OSError, DamagedEntry) as err:
            warnings.warn(
                f"{path}: damaged embedding cache entry ({err}); embedding again", UserWarning, stacklevel=2
            )
        emb = make()
        meta = {
            "modality": modality,
            "frames": len(frames),
            "sequence": frames[0].sequence if frames else None,
        }
        try:
            write_checked(path, emb)
            atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta).encode(), durable=False)
        except (OSError, LiplocError) as err:  # a full or read-only disk only costs speed
            if not self._write_failure_reported:
                self._write_failure_reported = True
                warnings.warn(
                    f"the embedding cache could not be written, which only costs speed: {err}",
                    UserWarning,
                    stacklevel=2,
                )
        return emb, False
