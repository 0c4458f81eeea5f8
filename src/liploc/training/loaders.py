"""The data of a training run: splits, datasets, samplers and data loaders, one shard per process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from liploc.config import Config
from liploc.errors import DataError
from liploc.runtime.device import capped_num_workers
from liploc.runtime.frame_dataset import PairDataset
from liploc.runtime.preprocess_cache import preprocess_cache_dir
from liploc.training.data_fingerprint import data_listing
from liploc.training.determinism import init_worker
from liploc.training.distributed import DistributedInfo
from liploc.training.samplers import EpochSampler, ValidationBatches, collate_or_none
from liploc.training.splits import TrainingSplits, training_splits


@dataclass
class TrainingData:
    """Splits and this process's loaders of a run."""

    splits: TrainingSplits
    listing: dict[str, Any]
    """The data's file listing (see :func:`liploc.training.data_fingerprint.data_listing`)."""
    train_sampler: EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader | None
    """None when the validation split is empty."""


def training_data(
    config: Config, info: DistributedInfo, device: torch.device, log: Callable[[str], None], out_dir: Path
) -> TrainingData:
    """Split the data, check there is at least one step of it, and make the loaders.

    Workers send uint8 inputs; normalisation and dropout run on the device
    (:func:`liploc.training.validation.model_inputs`).
    """
    tc = config.train
    rank_batch = tc.batch_size // info.world_size
    splits = training_splits(config.data, tc.seed)
    listing = data_listing(config.data)
    _check_one_step(splits, config, out_dir)
    cache_dir = preprocess_cache_dir(config.data) if config.data.cache else None
    train_set = PairDataset(splits.train, config, train=True, cache_dir=cache_dir, raw=True)
    val_set = PairDataset(splits.val, config, train=False, cache_dir=cache_dir, raw=True)
    sampler = EpochSampler(len(train_set), True, tc.seed, info.rank, info.world_size, True)
    workers, note = capped_num_workers(config.data.num_workers)
    if note:
        log(note)
    pin_memory = device.type == "cuda"
    train_loader = DataLoader(
        train_set,
        batch_size=rank_batch,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        pin_memory=pin_memory,
        worker_init_fn=init_worker,
        generator=torch.Generator().manual_seed(tc.seed),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )
    val_loader = None
    if len(val_set):
        # Every validation frame once, whatever the number of processes (no padded duplicates).
        batches = ValidationBatches(len(val_set), tc.batch_size, tc.seed + 1, info.rank, info.world_size)
        val_loader = DataLoader(
            val_set,
            batch_sampler=batches,
            collate_fn=collate_or_none,
            num_workers=workers,
            pin_memory=pin_memory,
            worker_init_fn=init_worker,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )
    return TrainingData(splits, listing, sampler, train_loader, val_loader)


def _check_one_step(splits: TrainingSplits, config: Config, out_dir: Path) -> None:
    """Refuse a training split smaller than one optimiser step."""
    tc = config.train
    if len(splits.train) >= tc.batch_size * tc.grad_accum:
        return
    gap = splits.left_out.get("val_gap", 0)
    raise DataError(
        out_dir,
        f"only {len(splits.train)} training pairs with a pose, fewer than one step of "
        f"batch_size {tc.batch_size} x grad_accum {tc.grad_accum}"
        + (
            f" ({gap} frames lie within data.val_gap_m {config.data.val_gap_m:g} m of validation; "
            "lower it, or name val sequences)"
            if gap
            else ""
        ),
    )
