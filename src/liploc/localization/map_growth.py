"""Maps that grow: a new drive's scans appended to a map in one atomic step (``liploc map add``).

A map is the LiDAR scans of drives in one world frame, embedded by one model with one input
preprocessing. :func:`add_to_map` embeds the new drives' scans with the map's own model copy and
publishes the old map plus them as a new map folder swapped in atomically, so a reader (``serve``
reloading, ``localize``) sees the map before or after the drive, never part of it. A drive is
refused, before anything is embedded, when its world frame is not the map's, when it is already in
the map, when the checkpoint given is another model than the map's, or when its preprocessing or
embedding precision differ from the map's; both sides are named.

The index keeps its kind: exhaustive kinds are rebuilt over all entries, ``hnsw`` and ``ivf-pq``
add the new entries (``ivf-pq`` with the codebooks trained on the map it was built from; a map
grown to many times that size is better rebuilt). Two ``map add`` on one map take turns (a lock
file beside the map), so neither loses the other's drive.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from liploc.atomic_folder import real_folder
from liploc.errors import ConfigError, DataError
from liploc.localization.lidar_map import LidarMap
from liploc.localization.map_folder import MODEL_DIR, MapFolder

if TYPE_CHECKING:
    import torch
    from rich.console import Console

    from liploc.config import Config
    from liploc.datasets.base import DatasetReader
    from liploc.datasets.frame import Frame
    from liploc.models import GeometryBridgeModel, TwoTowerModel


def preprocessing_id(config: Config) -> str:
    """16 hex digits naming every setting that shapes the model's inputs: those of the
    preprocessing cache's key (LiDAR projection, image size, ...) and the image normalisation."""
    from liploc.runtime.preprocess_cache import PREPROCESS_VERSION, settings_key

    settings = {"inputs": settings_key(config, PREPROCESS_VERSION), "normalize": config.data.normalize}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def one_world(reader: DatasetReader, sequences: Sequence[str]) -> str | None:
    """The world-frame id (``reader.world_id``) shared by ``sequences``; None when there are none.

    Raises:
        ConfigError: two of them are in different world frames (both are named, with their frames).
    """
    if not sequences:
        return None
    first = sequences[0]
    world = reader.world_id(first)
    for seq in sequences[1:]:
        if reader.world_id(seq) != world:
            raise ConfigError(
                f"sequences {first} and {seq} are in different world frames "
                f"({reader.world_frame(first)!r} and {reader.world_frame(seq)!r}): the poses of one map "
                "must be comparable; build one map per world frame"
            )
    return world


@contextmanager
def map_lock(map_dir: Path) -> Iterator[None]:
    """Hold the lock of the map at ``map_dir`` (a ``.NAME.lock`` file beside it) while inside."""
    lock = map_dir.parent / f".{map_dir.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def add_to_map(
    map_dir: str | Path,
    data_root: str | Path,
    sequences: Sequence[str],
    *,
    checkpoint: str | Path | None = None,
    layout: str = "auto",
    device: str = "auto",
    batch_size: int = 64,
    precision: str | None = None,
    console: Console | None = None,
) -> LidarMap:
    """Append every posed LiDAR scan of ``sequences`` (of the dataset at ``data_root``) to the map
    at ``map_dir``, atomically; returns the grown map.

    Args:
        checkpoint: the model to embed with; default the map's own copy (``model/``). Another
            model than the map's is refused.
        precision: embedding precision; default the map's. Another than the map's is refused.

    Raises:
        ConfigError: a sequence is in another world frame than the map (or the map does not
            record its world), is already in the map, or the preprocessing or precision differ.
        ModelMismatchError: ``checkpoint`` is another model than the map's.
        DataError: the map, the dataset or a sequence is missing or damaged.
    """
    from liploc.datasets import open_dataset
    from liploc.datasets.base import require_sequences
    from liploc.datasets.frame import frame_times
    from liploc.datasets.sequence_names import resolve_sequence_name
    from liploc.runtime.device import pick_device
    from liploc.runtime.run_folder import load_model_from_checkpoint, resolve_checkpoint

    map_dir = real_folder(Path(map_dir))
    with map_lock(map_dir):
        lidar_map = LidarMap.load(map_dir)
        reader = open_dataset(data_root, layout)
        sequences = [resolve_sequence_name(s, reader.sequences(), data_root) for s in sequences]
        require_sequences(reader, data_root, list(sequences))
        world = one_world(reader, sequences)
        _check_joinable(lidar_map, map_dir, world, sequences)

        map_model = MapFolder(map_dir).checkpoint
        ckpt = resolve_checkpoint(checkpoint) if checkpoint is not None else map_model
        if not ckpt.is_file():
            raise DataError(map_dir, "map has no model/ copy; pass the checkpoint that built it")
        model, config = load_model_from_checkpoint(ckpt)
        lidar_map.check_query_model(model.fingerprint())  # names both models
        expected = lidar_map.preprocessing
        if expected is None and map_model.is_file() and ckpt != map_model:
            expected = preprocessing_id(load_model_from_checkpoint(map_model)[1])
        if expected is not None and preprocessing_id(config) != expected:
            raise ConfigError(
                f"{ckpt}: its input preprocessing ({preprocessing_id(config)}) is not the map's "
                f"({expected}): scans preprocessed otherwise embed otherwise; use the map's model copy"
            )
        dev = pick_device(device)
        precision = _precision(lidar_map, precision, config, dev)

        frames = posed_map_frames(reader, data_root, sequences, console)
        emb = embed_map_scans(model, frames, config, dev, batch_size, precision, console)
        grown = lidar_map.appended(
            emb,
            np.stack([f.pose for f in frames]),
            [(f.sequence, f.index) for f in frames],
            timestamps=frame_times(frames),
        )

        def keep_model(folder: Path) -> None:
            if (map_dir / MODEL_DIR).is_dir():
                shutil.copytree(map_dir / MODEL_DIR, folder / MODEL_DIR, copy_function=_link_or_copy)

        grown.save(map_dir, add_files=keep_model)
    if console is not None:
        console.print(
            f"added {len(frames)} scans ({', '.join(sequences)}) to {map_dir}: {len(grown)} scans in all"
        )
    return grown


def _check_joinable(lidar_map: LidarMap, map_dir: Path, world: str | None, sequences: Sequence[str]) -> None:
    """Refuse drives that cannot join the map: another world frame, or already in it."""
    if lidar_map.world is None:
        raise ConfigError(
            f"{map_dir}: the map does not record its world frame (built before maps could grow); "
            "rebuild it with `liploc map build` to add drives to it"
        )
    if world != lidar_map.world:
        raise ConfigError(
            f"sequence {sequences[0]} is in world frame {world!r} but the map {map_dir} is in "
            f"{lidar_map.world!r}: a map's poses must be comparable"
        )
    present = sorted(set(sequences) & set(lidar_map.sequences))
    if present:
        raise ConfigError(f"{map_dir}: sequence {present[0]} is already in the map")


def posed_map_frames(
    reader: DatasetReader, data_root: str | Path, sequences: Sequence[str], console: Console | None
) -> list[Frame]:
    """The frames of ``sequences`` that have a pose (those without are counted aloud)."""
    from liploc.datasets.base import unpaired_count
    from liploc.runtime.data_roots import posed

    frames = []
    for seq in sequences:
        kept, skipped = posed(reader.frames(seq))
        if skipped and console is not None:
            console.print(f"[yellow]{seq}: {skipped} frames without a pose left out of the map[/]")
        frames.extend(kept)
        unpaired = unpaired_count(reader, seq)
        if unpaired and console is not None:
            console.print(
                f"[yellow]{seq}: {unpaired} scans or images without their pair left out of the map "
                "(`liploc info` lists them)[/]"
            )
    if not frames:
        raise DataError(data_root, "no frame with a pose in the requested sequences")
    return frames


def embed_map_scans(
    model: TwoTowerModel | GeometryBridgeModel,
    frames: Sequence[Frame],
    config: Config,
    device: torch.device,
    batch_size: int,
    precision: str,
    console: Console | None,
) -> np.ndarray:
    """(N, D) LiDAR embeddings of a map's ``frames`` (``map build`` and ``map add``), with a
    progress bar on ``console``."""
    from liploc.console import progress_bar
    from liploc.localization.embedding import embed_frames

    progress = progress_bar(console)
    with progress if progress is not None else nullcontext():
        return embed_frames(
            model,
            frames,
            config,
            "lidar",
            device=device,
            batch_size=batch_size,
            progress=progress,
            precision=precision,
        )


def _precision(lidar_map: LidarMap, asked: str | None, config: Config, device: object) -> str:
    from liploc.runtime.device import embedding_precision

    recorded = lidar_map.embedding_precision
    if asked is not None and recorded is not None and asked != recorded:
        raise ConfigError(
            f"the map's scans were embedded in {recorded}; its drives must all be (asked: {asked})"
        )
    return asked or recorded or embedding_precision(config, device)  # type: ignore[arg-type]


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link a map file into the new map (map files are replaced, never changed in place)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
