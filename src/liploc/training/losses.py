"""Contrastive losses between image and LiDAR embeddings: CLIP (paper), soft targets, SigLIP.

Every loss takes the embeddings ``image_emb`` and ``lidar_emb`` [B, D] (row i of both comes from
the same place), L2-normalised unless ``model.normalize`` is false (the paper's model: raw
embeddings, soft targets, temperature 1) and optionally the ground-plane positions [B, 2] for
pose-aware targets: pairs of the batch taken within ``positive_radius_m`` of each other are
positives too, but only pairs of one world frame (``worlds`` [B], integer codes of
:func:`world_code`): two KITTI sequences that both start at (0, 0) are not the same place.

Distributed training: with a process group of several processes and ``gather_distributed``, the
embeddings (and positions) of every process are all-gathered so the global batch serves as
negatives. Each process computes the loss of its own rows against all columns; the returned value
is the global-batch loss (the same on every process) and its gradient is scaled by the world size,
so that DDP's gradient averaging gives exactly the single-process gradient of the concatenated
batch. Learnable loss parameters (temperature, SigLIP bias) average their gradient over processes
inside the loss, so do not wrap the loss in DDP; give its parameters to the optimiser
(:meth:`ContrastiveLoss.param_groups`) and save its ``state_dict`` with the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from liploc.config import BridgeConfig, LossConfig
from liploc.errors import ConfigError
from liploc.training import distributed


@dataclass(frozen=True)
class _Batch:
    """The local rows and the global columns of one loss computation."""

    image: Tensor  # [n, D] this process's rows
    lidar: Tensor  # [n, D]
    image_all: Tensor  # [N, D] every process's rows (== image in a single process)
    lidar_all: Tensor  # [N, D]
    positives: Tensor  # [n, N] bool: column j is a positive of local row i (diagonal included)
    offset: int  # global index of local row 0


def positive_mask(
    rows: int,
    offset: int,
    total: int,
    positions: Tensor | None = None,
    positions_all: Tensor | None = None,
    radius_m: float | None = None,
    device: torch.device | str = "cpu",
    worlds: Tensor | None = None,
    worlds_all: Tensor | None = None,
) -> Tensor:
    """Positives [rows, total] of local rows among all columns: the same pair (column
    ``offset + i`` for row ``i``), plus, when ``radius_m`` is given, pairs whose ground-plane
    positions are within ``radius_m`` and, when ``worlds`` codes are given, in the same world
    frame. NaN positions (frames without a pose) match nothing else.
    """
    if radius_m is None:
        mask = torch.zeros(rows, total, dtype=torch.bool, device=device)
    else:
        if positions is None or positions_all is None:
            raise ValueError("pose-aware positives need the positions of the rows and the columns")
        mask = torch.cdist(positions.double(), positions_all.double()) <= radius_m
        if (worlds is None) != (worlds_all is None):
            raise ValueError("give the world codes of both the rows and the columns, or of neither")
        if worlds is not None and worlds_all is not None:
            mask &= worlds.to(mask.device)[:, None] == worlds_all.to(mask.device)[None, :]
    index = torch.arange(rows, device=mask.device)
    mask[index, index + offset] = True
    return mask


class ContrastiveLoss(nn.Module):
    """Base of the contrastive losses: gathering, pose-aware positives, gradient scaling, and the
    log-parametrised logit scale (a parameter when learnable, else a buffer kept in the state)."""

    def __init__(self, cfg: LossConfig, init_scale: float, learnable_scale: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.check_rows = True
        """Check under DDP that every process has as many rows (a host synchronisation; the
        training loop checks its first step and then turns it off: its batches are equal by
        construction)."""
        value = torch.tensor(math.log(init_scale), dtype=torch.float32)
        if learnable_scale:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)

    def _clamped_log_scale(self) -> Tensor:
        return self.log_scale.clamp(max=math.log(self.cfg.max_logit_scale))

    def scale(self) -> Tensor:
        """Current logit scale (1/tau; SigLIP's t), gradients averaged over processes."""
        return distributed.all_reduce_grad_mean(self._clamped_log_scale()).exp()

    @property
    def temperature(self) -> float:
        """Current temperature tau = 1 / scale (for SigLIP, logged alongside CLIP's)."""
        return 1.0 / float(self._clamped_log_scale().detach().exp())

    def forward(
        self,
        image_emb: Tensor,
        lidar_emb: Tensor,
        positions_xy: Tensor | None = None,
        worlds: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss of the (global) batch; see the module docstring for the distributed case.

        ``worlds`` [B] (int64 :func:`world_code` of each pair's world frame) keeps pose-aware
        positives within one world; None treats the whole batch as one world.
        """
        if image_emb.shape != lidar_emb.shape or image_emb.ndim != 2:
            raise ValueError(
                f"image and LiDAR embeddings must both be [B, D]; got {tuple(image_emb.shape)} "
                f"and {tuple(lidar_emb.shape)}"
            )
        if self.cfg.pose_aware:
            if positions_xy is None:
                raise ValueError("pose-aware loss needs positions_xy [B, 2] of the pairs")
            if positions_xy.shape != (image_emb.shape[0], 2):
                raise ValueError(f"positions_xy must be [B, 2]; got {tuple(positions_xy.shape)}")
            if worlds is not None and worlds.shape != (image_emb.shape[0],):
                raise ValueError(f"worlds must be [B]; got {tuple(worlds.shape)}")
        # The loss runs in float32 even under bf16/fp16 autocast (logsumexp over the batch).
        with torch.autocast(device_type=image_emb.device.type, enabled=False):
            return self._forward_fp32(image_emb.float(), lidar_emb.float(), positions_xy, worlds)

    def _forward_fp32(
        self, image: Tensor, lidar: Tensor, positions_xy: Tensor | None, worlds: Tensor | None = None
    ) -> Tensor:
        gather = self.cfg.gather_distributed and distributed.is_distributed()
        if gather:
            if self.check_rows:
                distributed.check_same_rows(image)
            image_all = distributed.all_gather_with_grad(image)
            lidar_all = distributed.all_gather_with_grad(lidar)
            offset = distributed.get_rank() * image.shape[0]
        else:
            image_all, lidar_all, offset = image, lidar, 0
        positions = positions_all = world_rows = world_cols = None
        if self.cfg.pose_aware:
            assert positions_xy is not None
            # float64 on the embeddings' device: NCCL gathers device tensors only.
            positions = positions_xy.detach().to(device=image.device, dtype=torch.float64)
            positions_all = distributed.all_gather_no_grad(positions) if gather else positions
            if worlds is not None:
                world_rows = worlds.detach().to(device=image.device, dtype=torch.int64)
                world_cols = distributed.all_gather_no_grad(world_rows) if gather else world_rows
        positives = positive_mask(
            image.shape[0],
            offset,
            image_all.shape[0],
            positions,
            positions_all,
            self.cfg.positive_radius_m if self.cfg.pose_aware else None,
            device=image.device,
            worlds=world_rows,
            worlds_all=world_cols,
        )
        batch = _Batch(image, lidar, image_all, lidar_all, positives, offset)
        row_sum = self._row_loss_sum(batch)
        local = row_sum / image_all.shape[0]
        if not gather:
            return local
        # sum over processes of `local` is the global loss. Scale the gradient by the world size
        # so that DDP's averaging yields the global gradient; report the global value.
        world = distributed.get_world_size()
        total = distributed.all_reduce_sum(local.detach())
        return local * world + (total - local * world).detach()

    def _row_loss_sum(self, batch: _Batch) -> Tensor:
        """Sum over the local rows of their loss against all columns (not yet divided by N)."""
        raise NotImplementedError

    def logits(self, image_emb: Tensor, lidar_emb: Tensor) -> Tensor:
        """Scaled image-to-LiDAR logits [B, B] of a local batch (no gathering)."""
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups of the learnable loss parameters (no weight decay); empty if none."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        return [{"params": params, "lr": lr, "weight_decay": 0.0, "name": "loss"}]


class ClipLoss(ContrastiveLoss):
    """The paper's symmetric cross-entropy over the N x N cosine similarities / temperature.

    The logit scale 1/tau is CLIP's log-parametrised scale, clamped to ``max_logit_scale``.
    Pose-aware targets spread a row's probability uniformly over all its positives.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__(cfg, 1.0 / cfg.temperature, cfg.learnable_temperature)

    def logits(self, image_emb: Tensor, lidar_emb: Tensor) -> Tensor:
        return self.scale() * image_emb.float() @ lidar_emb.float().T

    def _row_loss_sum(self, batch: _Batch) -> Tensor:
        scale = self.scale()
        image_to_lidar = scale * batch.image @ batch.lidar_all.T  # [n, N]
        lidar_to_image = scale * batch.lidar @ batch.image_all.T  # [n, N]
        targets = batch.positives.float()
        targets = targets / targets.sum(dim=1, keepdim=True)
        loss_i = -(targets * F.log_softmax(image_to_lidar, dim=1)).sum(dim=1)
        loss_l = -(targets * F.log_softmax(lidar_to_image, dim=1)).sum(dim=1)
        return ((loss_i + loss_l) / 2).sum()


class SoftTargetLoss(ClipLoss):
    """Cross-entropy against soft targets softmax((S_img + S_lidar) / 2 / tau), as in the LIP-Loc
    reference code (after the 'simple CLIP' implementation).

    The targets keep their gradient, as in the reference code. The reference multiplies the
    averaged similarities by tau instead of dividing; both agree at the paper's tau = 1. The second
    term uses the transposed target matrix (rows need not sum to 1), also as the reference does.
    """

    def _row_loss_sum(self, batch: _Batch) -> Tensor:
        scale = self.scale()
        n = batch.image.shape[0]
        rows = slice(batch.offset, batch.offset + n)
        # The transposed targets of local rows need the normaliser of every global row: N x N.
        similarity = (batch.image_all @ batch.image_all.T + batch.lidar_all @ batch.lidar_all.T) / 2
        targets = F.softmax(scale * similarity, dim=1)  # [N, N]
        targets_rows = targets[rows]  # [n, N]: T[i, :]
        targets_cols = targets[:, rows].T  # [n, N]: T[:, i]
        lidar_to_image = scale * batch.lidar @ batch.image_all.T  # reference: logits = L @ I^T
        image_to_lidar = scale * batch.image @ batch.lidar_all.T  # logits^T rows
        loss_l = -(targets_rows * F.log_softmax(lidar_to_image, dim=1)).sum(dim=1)
        loss_i = -(targets_cols * F.log_softmax(image_to_lidar, dim=1)).sum(dim=1)
        return ((loss_i + loss_l) / 2).sum()


class SigLipLoss(ContrastiveLoss):
    """Pairwise sigmoid loss (SigLIP): -1/N sum_ij log sigmoid(z_ij (t x_i.y_j + b)), z = +-1.

    Scale t (log-parametrised, clamped to ``max_logit_scale``) and bias b are always learnable
    (SigLIP defines them so; a frozen b = -10 with t = 10 keeps every logit <= 0), initialised as in
    the paper (``siglip_scale_init`` 10, ``siglip_bias_init`` -10); ``temperature`` is not used.
    Pose-aware: pairs within the radius get label +1.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__(cfg, cfg.siglip_scale_init, learnable_scale=True)
        bias = torch.tensor(cfg.siglip_bias_init, dtype=torch.float32)
        self.bias = nn.Parameter(bias)

    def logits(self, image_emb: Tensor, lidar_emb: Tensor) -> Tensor:
        bias = distributed.all_reduce_grad_mean(self.bias)
        return self.scale() * image_emb.float() @ lidar_emb.float().T + bias

    def _row_loss_sum(self, batch: _Batch) -> Tensor:
        bias = distributed.all_reduce_grad_mean(self.bias)
        logits = self.scale() * batch.image @ batch.lidar_all.T + bias  # [n, N]
        labels = batch.positives.float() * 2 - 1
        return -F.logsigmoid(labels * logits).sum()


def build_loss(cfg: LossConfig) -> ContrastiveLoss:
    """The loss named by ``cfg.kind`` (``clip``, ``soft-target``/``soft`` or ``siglip``)."""
    if cfg.kind == "clip":
        return ClipLoss(cfg)
    if cfg.kind in ("soft", "soft-target"):
        if cfg.pose_aware:
            raise ConfigError(f"loss.pose_aware works with loss.kind clip or siglip, not {cfg.kind}")
        return SoftTargetLoss(cfg)
    if cfg.kind == "siglip":
        return SigLipLoss(cfg)
    raise ConfigError(f"unknown loss.kind '{cfg.kind}' (expected clip, soft-target or siglip)")


@torch.no_grad()
def in_batch_accuracy(image_emb: Tensor, lidar_emb: Tensor) -> tuple[float, float]:
    """Top-1 accuracy of in-batch retrieval (image->LiDAR, LiDAR->image) of a local batch."""
    similarity = image_emb.float() @ lidar_emb.float().T
    target = torch.arange(similarity.shape[0], device=similarity.device)
    image_to_lidar = (similarity.argmax(dim=1) == target).float().mean().item()
    lidar_to_image = (similarity.argmax(dim=0) == target).float().mean().item()
    return image_to_lidar, lidar_to_image


def bridge_depth_loss(pred: Tensor, target: Tensor, bridge: BridgeConfig) -> Tensor:
    """The geometry bridge's depth loss (``bridge.depth_loss``: SILog or L1) of predicted depth
    (B, h, w) against the scans' sparse depth (B, 1, h, w), over the pixels with a return closer
    than ``bridge.max_depth`` (:func:`liploc.models.depth_head.depth_loss`), in float32."""
    from liploc.models.depth_head import depth_loss

    return depth_loss(
        pred.float(),
        target.float(),
        kind=bridge.depth_loss,
        silog_lambda=bridge.silog_lambda,
        max_depth=bridge.max_depth,
    )
