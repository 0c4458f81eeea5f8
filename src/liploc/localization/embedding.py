"""Embedding frames with a trained model, in batches, with an on-disk cache per model.

Data flow: frames -> ImageDataset / LidarDataset (the training preprocessing, no augmentation;
decoded and projected in loader workers, sent as uint8) -> normalised on the device -> model tower
-> float32 embeddings (L2-normalised unless the model's ``normalize`` is false: the paper's model
retrieves by the raw dot product). Queries and map scans go through the same path. A
geometry-bridge model's towers also take what the datasets add to each batch (the images'
calibration, the scans' BEV rasters; :meth:`PairDataset.model_extras`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypedDict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from liploc.atomic import atomic_write_bytes, sweep_stale_temporary_files
from liploc.checked_array import CacheWriteWarning, DamagedEntry, read_checked, write_checked
from liploc.config import Config
from liploc.datasets import Frame
from liploc.errors import DataError, LiplocError
from liploc.models import GeometryBridgeModel, TwoTowerModel
from liploc.runtime.device import embedding_precision, loader_cores, loader_workers, precision_dtype
from liploc.runtime.frame_dataset import ImageDataset, LidarDataset, PairDataset
from liploc.runtime.preprocess_cache import preprocess_cache_dir

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; the annotations are not evaluated (3.10)

Modality = Literal["image", "lidar"]


class _FrameSets(Dataset):
    """Samples of several datasets (one per frame set), keyed ``(set, index)``; each sample
    names its set, so that a batch knows its tower."""

    def __init__(self, datasets: Sequence[PairDataset]) -> None:
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        which, index = key
        return {**self.datasets[which][index], "set": torch.tensor(which)}


@contextmanager
def _main_threads(workers: int, device: torch.device) -> Iterator[None]:
    """On a CPU, leave the cores the loader workers need: torch's idle intra-op threads spin
    and take CPU from the workers that decode and project (measured on 2 cores: 29 -> 20 CPU ms
    per frame with 2 workers)."""
    threads = torch.get_num_threads()
    wanted = max(1, min(threads, loader_cores() - workers))
    if device.type != "cpu" or workers == 0 or wanted == threads:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def embed_frame_sets(
    model: TwoTowerModel | GeometryBridgeModel,
    sets: Sequence[tuple[Sequence[Frame], Modality]],
    config: Config,
    *,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int | None = None,
    cache_dir: str | Path | None = None,
    progress: object | None = None,
    precision: str | None = None,
) -> list[np.ndarray]:
    """(N, D) float32 embeddings of each ``(frames, modality)`` set: the camera images or the
    LiDAR scans of its frames (L2-normalised unless ``model.cfg.normalize`` is false).

    All sets go through one DataLoader, so the workers start once and prepare the next set while
    the model embeds this one (an evaluation embeds queries' images and the map's scans).

    Args:
        model: the trained two-tower model (put in eval mode here).
        sets: the frame sets, each with ``image`` (camera tower) or ``lidar`` (LiDAR tower).
        config: configuration the model was trained with (preprocessing and projection).
        device: where to run the model; bf16 autocast on CUDA when supported.
        batch_size: frames per forward pass.
        num_workers: DataLoader worker processes for loading and preprocessing; None:
            ``data.num_workers`` of ``config``. Capped by :func:`loader_workers`.
        cache_dir: preprocessing cache folder (see :class:`liploc.runtime.preprocess_cache.PreprocessCache`);
            None: the shared one of ``data.cache_dir`` (the user's cache folder by default)
            when ``data.cache`` is on, as training uses.
        progress: a ``rich.progress.Progress`` to report to, or None.
        precision: ``fp32``, ``bf16`` or ``fp16``; None: :func:`embedding_precision` of the config.
    """
    model.eval().to(device)
    if cache_dir is None and config.data.cache:
        cache_dir = preprocess_cache_dir(config.data)
    datasets: list[PairDataset] = [
        (ImageDataset if modality == "image" else LidarDataset)(frames, config, cache_dir=cache_dir, raw=True)
        for frames, modality in sets
    ]
    batches = [
        [(which, i) for i in range(start, min(start + batch_size, len(d)))]
        for which, d in enumerate(datasets)
        for start in range(0, len(d), batch_size)
    ]
    out: list[list[torch.Tensor]] = [[] for _ in sets]
    if not batches:
        return [np.zeros((0, model.embed_dim), dtype=np.float32) for _ in sets]
    workers = loader_workers(config.data.num_workers if num_workers is None else num_workers, len(batches))
    loader = DataLoader(
        _FrameSets(datasets),
        batch_sampler=batches,  # type: ignore[arg-type]  # a list of index lists is a batch sampler
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    precision = precision or embedding_precision(config, device)
    dtype = precision_dtype(precision)
    channels_last = config.train.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    tasks: list[object] = []
    if progress is not None:
        tasks = [
            progress.add_task(f"embedding {modality}", total=len(frames))  # type: ignore[attr-defined]
            for frames, modality in sets
        ]
    with _main_threads(workers, device):
        for batch in loader:
            which = int(batch["set"][0])
            modality = sets[which][1]
            encode = model.encode_image if modality == "image" else model.encode_lidar
            extras = datasets[which].model_extras(batch, modality, device)
            if extras:  # a geometry-bridge model: calibration or BEV rasters
                encode = functools.partial(encode, **extras)
            x = datasets[which].device_inputs(batch, modality, device, channels_last)
            out[which].append(embed_batch(encode, x, dtype, normalize=model.cfg.normalize))
            if tasks:
                progress.advance(tasks[which], len(x))  # type: ignore[attr-defined]
    # One copy back at the end: no wait for the device between batches.
    return [
        torch.cat(parts).cpu().numpy().astype(np.float32, copy=False)
        if parts
        else np.zeros((0, model.embed_dim), dtype=np.float32)
        for parts in out
    ]


class EmbeddingOptions(TypedDict, total=False):
    """The keyword options of :func:`embed_frame_sets` after ``device``, as :func:`embed_frames`
    passes them on (see there for their meaning and defaults)."""

    batch_size: int
    num_workers: int | None
    cache_dir: str | Path | None
    progress: object | None
    precision: str | None


def embed_frames(
    model: TwoTowerModel | GeometryBridgeModel,
    frames: Sequence[Frame],
    config: Config,
    modality: Modality,
    *,
    device: torch.device,
    **options: Unpack[EmbeddingOptions],
) -> np.ndarray:
    """(N, D) float32 embeddings of the camera images or LiDAR scans of ``frames``: one set of
    :func:`embed_frame_sets` (same keyword options)."""
    return embed_frame_sets(model, [(frames, modality)], config, device=device, **options)[0]


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
        self._write_failure = CacheWriteWarning("embedding cache")
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
        # v2: entries' checksums cover their key (liploc.checked_array)
        return self.folder / f"{seq}-{modality}-v2-{digest.hexdigest()[:16]}.npy"

    def get_or_make(self, frames: Sequence[Frame], modality: Modality, make) -> tuple[np.ndarray, bool]:
        """(embeddings, came_from_cache)."""
        emb = self.get(frames, modality)
        if emb is not None:
            return emb, True
        emb = make()
        self.put(frames, modality, emb)
        return emb, False

    def get(self, frames: Sequence[Frame], modality: Modality) -> np.ndarray | None:
        """The embeddings kept for ``frames``' ``modality``, or None (a damaged entry warns)."""
        path = self._path(frames, modality)
        try:
            emb = read_checked(path)
            if emb.ndim == 2 and emb.shape[0] == len(frames):
                return emb
            raise DamagedEntry(f"holds {emb.shape[0]} rows for {len(frames)} frames")
        except FileNotFoundError:
            return None
        except (OSError, DamagedEntry) as err:
            warnings.warn(
                f"{path}: damaged embedding cache entry ({err}); embedding again", UserWarning, stacklevel=2
            )
            return None

    def put(self, frames: Sequence[Frame], modality: Modality, emb: np.ndarray) -> None:
        """Keep ``emb`` for ``frames``' ``modality`` (a failed write warns once: it only costs speed)."""
        path = self._path(frames, modality)
        meta = {
            "modality": modality,
            "frames": len(frames),
            "sequence": frames[0].sequence if frames else None,
        }
        try:
            write_checked(path, emb)
            atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta).encode(), durable=False)
        except (OSError, LiplocError) as err:  # a full or read-only disk only costs speed
            self._write_failure.report(err)


def embed_with_cache(
    cache: EmbeddingCache,
    model: TwoTowerModel | GeometryBridgeModel,
    sets: Sequence[tuple[Sequence[Frame], Modality]],
    config: Config,
    **options: object,
) -> list[np.ndarray]:
    """Embeddings of each ``(frames, modality)`` set from ``cache`` where kept, the others
    embedded together in one pass (:func:`embed_frame_sets` with ``options``) and kept."""
    found = [cache.get(frames, modality) for frames, modality in sets]
    missing = [i for i, emb in enumerate(found) if emb is None]
    if missing:
        made = embed_frame_sets(model, [sets[i] for i in missing], config, **options)  # type: ignore[arg-type]
        for i, emb in zip(missing, made, strict=True):
            cache.put(*sets[i], emb)
            found[i] = emb
    return found  # type: ignore[return-value]
