"""Validation during training (mean loss and in-batch top-1 over the validation split), and the
model inputs of a batch, shared with the training step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from liploc.runtime.frame_dataset import PairDataset
from liploc.training import distributed


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Autocast to ``dtype`` on ``device``, or nothing for full precision."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def model_inputs(
    loader: DataLoader, batch: dict[str, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, LiDAR) model inputs of a collated batch on ``device``: the device half of the
    transform when the loader's dataset sends raw uint8 inputs, channels-last when it asks."""
    dataset = loader.dataset
    if isinstance(dataset, PairDataset):
        channels_last = dataset.config.train.channels_last
        return (
            dataset.device_inputs(batch, "image", device, channels_last),
            dataset.device_inputs(batch, "lidar", device, channels_last),
        )
    return batch["image"].to(device, non_blocking=True), batch["lidar"].to(device, non_blocking=True)


def loss_positions(
    loss_fn: nn.Module, batch: dict[str, torch.Tensor], device: torch.device
) -> torch.Tensor | None:
    """The batch's positions on ``device`` when the loss uses them (pose-aware), else None: no
    copy to the device, and so no wait for it, when they are not needed."""
    cfg = getattr(loss_fn, "cfg", None)
    if cfg is not None and not getattr(cfg, "pose_aware", True):
        return None
    return batch["position_xy"].to(device, non_blocking=True)


@torch.no_grad()
def validate(
    model: nn.Module,
    loss_fn: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean loss and in-batch top-1 (image->LiDAR, LiDAR->image) over ``loader``'s batches.

    Under DDP every process passes its shard; embeddings are gathered so each batch is the global
    one, and every process returns the same numbers (those of rank 0's weights and buffers).
    """
    from liploc.training.losses import in_batch_accuracy

    net = distributed.unwrap(model)
    if distributed.is_distributed():
        # Batch-norm statistics drift apart on each process after DDP's last buffer broadcast:
        # evaluate every shard with rank 0's, the weights its checkpoints hold.
        for buffer in net.buffers():
            dist.broadcast(buffer, src=0)
    was_training = net.training
    net.eval()
    loss_sum = i2l_sum = l2i_sum = 0.0
    pairs = 0
    check_rows = getattr(loss_fn, "check_rows", None)
    if check_rows is not None:
        loss_fn.check_rows = True  # the last validation batch may be short: check every batch
    # The loss is computed on the gathered global batch (the same on every process), so that its
    # own gathering, which needs equal parts, is off; parts may differ (see ValidationBatches).
    for batch in loader:
        if batch is None:  # this process's part of a last, small global batch is empty
            image_emb = torch.zeros((0, net.embed_dim), device=device)
            lidar_emb = torch.zeros((0, net.embed_dim), device=device)
            positions = torch.zeros((0, 2), device=device, dtype=torch.float64)
            worlds = torch.zeros((0,), device=device, dtype=torch.int64)
        else:
            image, lidar = model_inputs(loader, batch, device)
            with autocast(device, amp_dtype):
                image_emb, lidar_emb = net(image, lidar)
            positions = batch["position_xy"].to(device)
            worlds = batch["world"].to(device) if "world" in batch else None
        image_all = distributed.all_gather_uneven(image_emb.float())
        lidar_all = distributed.all_gather_uneven(lidar_emb.float())
        positions_all = distributed.all_gather_uneven(positions)
        worlds_all = None if worlds is None else distributed.all_gather_uneven(worlds)
        n = image_all.shape[0]
        if n == 0:
            continue
        with _gathering_off(loss_fn):
            loss = loss_fn(image_all, lidar_all, positions_all, worlds_all)
        i2l, l2i = in_batch_accuracy(image_all, lidar_all)
        loss_sum += float(loss) * n
        i2l_sum += i2l * n
        l2i_sum += l2i * n
        pairs += n
    net.train(was_training)
    if check_rows is not None:
        loss_fn.check_rows = check_rows
    if pairs == 0:
        return {}
    return {
        "val_loss": loss_sum / pairs,
        "val_top1_image_to_lidar": i2l_sum / pairs,
        "val_top1_lidar_to_image": l2i_sum / pairs,
        "val_pairs": float(pairs),
    }


@contextmanager
def _gathering_off(loss_fn: nn.Module) -> Iterator[None]:
    """``loss_fn`` without all-gathering (its input is already the global batch)."""
    cfg = getattr(loss_fn, "cfg", None)
    if cfg is None or not getattr(cfg, "gather_distributed", False):
        yield
        return
    loss_fn.cfg = cfg.model_copy(update={"gather_distributed": False})
    try:
        yield
    finally:
        loss_fn.cfg = cfg
