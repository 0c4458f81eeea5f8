"""Embedding frames with a trained model, in batches, with an on-disk cache per model.

Data flow: frames -> ImageDataset / LidarDataset (the training preprocessing, no augmentation;
decoded and projected in loader workers, sent as uint8) -> normalised on the device -> model tower
-> L2-normalised float32 embeddings. Queries and map scans go through the same path.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from liploc.atomic import atomic_write
from liploc.config import Config
from liploc.datasets import Frame, load_image
from liploc.models import TwoTowerModel
from liploc.training.data import ImageDataset, LidarDataset, build_transforms, camera_image_input
from liploc.training.train import autocast_dtype, resolve_device

Modality = Literal["image", "lidar"]


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when present (``auto``), else CPU; or the named torch device."""
    return resolve_device(name)


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
) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings of the camera images or LiDAR scans of ``frames``.

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
    channels_last = config.train.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    dtype = autocast_dtype(config.train.precision, device)
    task = None
    if progress is not None:
        task = progress.add_task(f"embedding {modality}", total=len(frames))  # type: ignore[attr-defined]
    out: list[torch.Tensor] = []
    for batch in loader:
        x = dataset.device_inputs(batch, modality, device, channels_last)
        out.append(embed_batch(encode, x, dtype))
        if task is not None:
            progress.advance(task, len(x))  # type: ignore[attr-defined]
    # One copy back at the end: no wait for the device between batches.
    return torch.cat(out).cpu().numpy().astype(np.float32, copy=False)


def embed_batch(encode: object, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """float32 unit-norm embeddings of the model-ready batch ``x`` by the tower ``encode``,
    under autocast to ``dtype`` when given (left on ``x``'s device)."""
    if dtype is not None:
        with torch.autocast(x.device.type, dtype=dtype):
            emb = encode(x)  # type: ignore[operator]
    else:
        emb = encode(x)  # type: ignore[operator]
    # Re-normalise in fp32: a bf16 output is only approximately unit length.
    return torch.nn.functional.normalize(emb.float(), dim=-1)


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
    A key covers the fingerprint, the modality, and every frame's file path, size and mtime.
    """

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder = Path(folder) / fingerprint[:16]

    def _path(self, frames: Sequence[Frame], modality: Modality) -> Path:
        digest = hashlib.sha256(modality.encode())
        for f in frames:
            source = f.image_path if modality == "image" else f.scan_path
            st = source.stat()
            digest.update(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        seq = frames[0].sequence if frames else "empty"
        return self.folder / f"{seq}-{modality}-{digest.hexdigest()[:16]}.npy"

    def get_or_make(self, frames: Sequence[Frame], modality: Modality, make) -> tuple[np.ndarray, bool]:
        """(embeddings, came_from_cache)."""
        path = self._path(frames, modality)
        if path.is_file():
            try:
                emb = np.load(path, allow_pickle=False)
                if emb.shape[0] == len(frames):
                    return emb, True
            except (OSError, ValueError):
                pass
        emb = make()

        def write(p: Path) -> None:
            with open(p, "wb") as f:
                np.save(f, emb, allow_pickle=False)

        atomic_write(path, write)
        meta = {
            "modality": modality,
            "frames": len(frames),
            "sequence": frames[0].sequence if frames else None,
        }
        atomic_write(path.with_suffix(".json"), lambda p: p.write_text(json.dumps(meta)))
        return emb, False
