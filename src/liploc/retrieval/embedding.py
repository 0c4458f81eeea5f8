"""Embedding frames with a trained model, in batches, with an on-disk cache per model.

Data flow: frames -> ImageDataset / LidarDataset (the training preprocessing, no augmentation)
-> model tower -> L2-normalised float32 embeddings.
"""

from __future__ import annotations

import hashlib
import json
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
from liploc.datasets import Frame, load_image
from liploc.errors import DataError, LiplocError
from liploc.models import TwoTowerModel
from liploc.training.data import ImageDataset, LidarDataset, build_transforms, camera_image_input
from liploc.training.train import autocast_dtype, resolve_device

Modality = Literal["image", "lidar"]


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when present (``auto``), else CPU; or the named torch device."""
    return resolve_device(name)


@torch.no_grad()
def embed_frames(
    model: TwoTowerModel,
    frames: Sequence[Frame],
    config: Config,
    modality: Modality,
    *,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: object | None = None,
) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings of the camera images or LiDAR scans of ``frames``.

    Args:
        model: the trained two-tower model (put in eval mode here).
        frames: frames to embed, in order.
        config: configuration the model was trained with (preprocessing and projection).
        modality: ``image`` (camera tower) or ``lidar`` (LiDAR tower).
        device: where to run the model; bf16 autocast on CUDA when supported.
        batch_size: frames per forward pass.
        num_workers: DataLoader worker processes for loading and preprocessing.
        cache_dir: preprocessing cache folder (see :class:`liploc.training.data.PreprocessCache`).
        progress: a ``rich.progress.Progress`` to report to, or None.
    """
    model.eval().to(device)
    if not frames:
        return np.zeros((0, model.embed_dim), dtype=np.float32)
    dataset_cls = ImageDataset if modality == "image" else LidarDataset
    dataset = dataset_cls(frames, config, cache_dir=cache_dir)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    encode = model.encode_image if modality == "image" else model.encode_lidar
    dtype = autocast_dtype(config.train.precision, device)
    task = None
    if progress is not None:
        task = progress.add_task(f"embedding {modality}", total=len(frames))  # type: ignore[attr-defined]
    out: list[np.ndarray] = []
    for batch in loader:
        x = batch[modality].to(device, non_blocking=True)
        if dtype is not None:
            with torch.autocast(device.type, dtype=dtype):
                emb = encode(x)
        else:
            emb = encode(x)
        # Re-normalise in fp32: a bf16 output is only approximately unit length.
        out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy())
        if task is not None:
            progress.advance(task, len(x))  # type: ignore[attr-defined]
    return np.concatenate(out).astype(np.float32, copy=False)


@torch.no_grad()
def embed_image_files(
    model: TwoTowerModel, paths: Sequence[str | Path], config: Config, *, device: torch.device
) -> np.ndarray:
    """(N, D) embeddings of camera image files (no frame or calibration needed): a query's path."""
    transform = build_transforms(config.data, train=False).image
    tensors = []
    for path in paths:
        tensors.append(transform(camera_image_input(load_image(Path(path)), config)))
    model.eval().to(device)
    emb = model.encode_image(torch.stack(tensors).to(device))
    return torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()


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
