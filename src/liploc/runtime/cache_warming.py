"""``liploc cache warm``: preprocess every frame of a config into the shared cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liploc.runtime.preprocess_cache import preprocess_cache_dir

if TYPE_CHECKING:
    from liploc.config import Config


@dataclass(frozen=True)
class WarmResult:
    """What :func:`warm_cache` did."""

    folder: Path
    made: int
    present: int
    frames: int


class _WarmItems:
    """Dataset of (frame, modality) items that preprocess into the cache (run in loader workers)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.items = [(i, m) for i in range(len(dataset.frames)) for m in dataset.cached_inputs()]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> int:
        from liploc.errors import DataError
        from liploc.runtime.frame_dataset import WorkerDataError

        index, modality = self.items[k]
        frame = self.dataset.frames[index]
        source = frame.image_path if modality == "image" else frame.scan_path
        try:
            variant = self.dataset.cache_variant(index, modality)
            present = self.dataset.cache.path_for(source, modality, variant).is_file()
            self.dataset.preprocessed(index, modality)
        except DataError as err:
            import torch.utils.data

            if torch.utils.data.get_worker_info() is None:
                raise
            raise WorkerDataError(str(err)) from None
        return int(present)


def warm_cache(
    config: Config, cache_dir: str | Path | None = None, workers: int | None = None, progress: Any = None
) -> WarmResult:
    """Preprocess every frame of every split of ``config`` into the cache, with ``workers``
    loader processes (default: all cores). ``progress``: a rich Progress to report to.
    Temporary files older than an hour (killed writers') are swept first."""
    from torch.utils.data import DataLoader

    from liploc.atomic import sweep_stale_temporary_files
    from liploc.runtime.data_roots import split_frames
    from liploc.runtime.frame_dataset import PairDataset

    folder = Path(cache_dir) if cache_dir is not None else preprocess_cache_dir(config.data)
    if folder.is_dir():
        sweep_stale_temporary_files(folder)  # what killed writers left (live ones' are young)
    frames, seen = [], set()
    for split in ("train", "val", "test"):
        for frame in split_frames(config.data, split):
            key = (str(frame.image_path), str(frame.scan_path))
            if key not in seen:
                seen.add(key)
                frames.append(frame)
    dataset = PairDataset(frames, config, cache_dir=folder)
    items = _WarmItems(dataset)
    workers = (os.cpu_count() or 1) if workers is None else workers
    loader = DataLoader(items, batch_size=None, num_workers=workers)  # type: ignore[arg-type]
    task = progress.add_task("warming cache", total=len(items)) if progress is not None else None
    present = 0
    for flag in loader:
        present += int(flag)
        if task is not None:
            progress.advance(task)
    assert dataset.cache is not None
    return WarmResult(dataset.cache.folder, len(items) - present, present, len(frames))
