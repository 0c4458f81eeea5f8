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


def model_extras(loader: DataLoader, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, Any]:
    """Keyword inputs of the model's forward beside (image, LiDAR): none for appearance models;
    the images' calibration and the scans' BEV rasters for the geometry bridge."""
    dataset = loader.dataset
    if isinstance(dataset, PairDataset) and dataset.bridge:
        return {
            **dataset.model_extras(batch, "image", device),
            **dataset.model_extras(batch, "lidar", device),
        }
    return {}


def bridge_of(model: nn.Module) -> Any:
    """The model's ``BridgeConfig`` when it is a geometry-bridge model, else None."""
    cfg = getattr(distributed.unwrap(model), "cfg", None)
    return cfg.bridge if getattr(cfg, "method", "appearance") == "bridge" else None


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

    Geometry-bridge models: ``val_loss`` is the training objective (contrastive plus
    ``depth_weight`` times the depth loss), ``val_depth_loss`` the depth loss alone, and the
    predicted depth is scored against the scans' depth on every pixel with a return (pooled over
    the held-out frames): ``val_abs_rel``, ``val_rmse`` (metres) and ``val_delta1``.
    """
    from liploc.training.losses import bridge_depth_loss, in_batch_accuracy

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
    bridge = bridge_of(net)
    # Per process: depth loss x images, and AbsRel, squared error, delta < 1.25 and pixel counts.
    depth_sums = torch.zeros(5, dtype=torch.float64, device=device)
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
                out = net(image, lidar, **model_extras(loader, batch, device))
            image_emb, lidar_emb = out[0], out[1]
            if bridge is not None:
                target = batch["depth"].to(device)
                depth_sums += _depth_sums(out[2], target, bridge, bridge_depth_loss)
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
    results = {
        "val_loss": loss_sum / pairs,
        "val_top1_image_to_lidar": i2l_sum / pairs,
        "val_top1_lidar_to_image": l2i_sum / pairs,
        "val_pairs": float(pairs),
    }
    if bridge is not None:
        from liploc.models.depth_head import pooled_depth_metrics

        depth_loss, *error_sums = distributed.all_reduce_sum(depth_sums).tolist()
        results["val_depth_loss"] = depth_loss / pairs
        results["val_loss"] += bridge.depth_weight * results["val_depth_loss"]
        m = pooled_depth_metrics(error_sums)
        results.update(val_abs_rel=m["abs_rel"], val_rmse=m["rmse"], val_delta1=m["delta1"])
    return results


def _depth_sums(pred: torch.Tensor, target: torch.Tensor, bridge: Any, loss: Any) -> torch.Tensor:
    """(depth loss x images, then :func:`~liploc.models.depth_head.depth_error_sums`) of a batch."""
    from liploc.models.depth_head import depth_error_sums

    errors = depth_error_sums(pred.float(), target, max_depth=bridge.max_depth)
    sums = [float(loss(pred, target, bridge)) * len(pred), *errors]
    return torch.tensor(sums, dtype=torch.float64, device=pred.device)


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
