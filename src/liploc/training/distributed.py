"""Training's distributed helpers: collectives with gradients, the DDP wrapper of the model; and,
re-exported from :mod:`liploc.runtime.process_group` (which ``map build`` shares), rank and world
size, start-up from torchrun, barriers and the uneven all-gather.

Everything here also works without ``torch.distributed`` being initialised: a single process is
rank 0 of a world of size 1, and the collectives return their input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from liploc.runtime.process_group import (
    DistributedInfo,
    all_gather_uneven,
    barrier,
    destroy,
    get_rank,
    get_world_size,
    init_from_env,
    is_distributed,
    is_main_process,
)

if TYPE_CHECKING:
    from liploc.config import TrainConfig

__all__ = [
    "DistributedInfo",
    "all_gather_no_grad",
    "all_gather_uneven",
    "all_gather_with_grad",
    "all_reduce_grad_mean",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "check_same_rows",
    "destroy",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "unwrap",
    "wrap_distributed",
]


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sends each process the summed gradient of its rows.

    The backward all-reduces the full gradient and keeps this rank's rows: every backend supports
    all-reduce (gloo has no reduce-scatter), and embeddings are small.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        world_size = dist.get_world_size()
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor)
        ctx.rank = dist.get_rank()  # type: ignore[attr-defined]
        ctx.rows = tensor.shape[0]  # type: ignore[attr-defined]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows  # type: ignore[attr-defined]
        return grad[start : start + ctx.rows]  # type: ignore[attr-defined]


class _AllReduceGradMean(torch.autograd.Function):
    """Identity whose backward averages the gradient over processes.

    For parameters outside DDP (a learnable temperature in the loss): every process then holds the
    same gradient, so the parameter stays the same on every process.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad / dist.get_world_size()


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` [n, ...] of every process along dim 0 -> [world_size * n, ...].

    Gradients flow back to the process that owns the rows (summed over every process's use of
    them). Every process must pass the same shape. Without a process group: ``tensor`` itself.
    """
    if not is_distributed():
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def all_gather_no_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` of every process along dim 0, without gradient (e.g. positions)."""
    if not is_distributed():
        return tensor
    tensor = tensor.detach().contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)


def all_reduce_grad_mean(tensor: Tensor) -> Tensor:
    """Identity in the forward pass; the backward averages the gradient over processes."""
    if not is_distributed():
        return tensor
    return _AllReduceGradMean.apply(tensor)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over processes (a new tensor, no gradient)."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over processes (a new tensor, no gradient), e.g. for logging a metric."""
    return all_reduce_sum(tensor) / get_world_size()


def check_same_rows(tensor: Tensor) -> None:
    """Raise ValueError unless every process has the same number of rows in ``tensor``.

    All-gather needs equal shapes; a sampler without ``drop_last`` breaks this on the last batch.
    """
    if not is_distributed():
        return
    rows = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, rows)
    counts = [int(p.item()) for p in parts]
    if len(set(counts)) != 1:
        raise ValueError(
            f"processes hold different batch sizes {counts}; gathering needs equal batches "
            "(use drop_last=True in the distributed sampler and loader)"
        )


# --- the model under DDP ---------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (the model itself when not wrapped)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _needs_buffer_broadcast(model: nn.Module) -> bool:
    """Whether DDP must broadcast rank 0's buffers before each forward.

    Batch-norm running statistics need not be: a training forward uses the batch's statistics,
    :func:`liploc.training.validation.validate` broadcasts rank 0's before evaluating, and only
    rank 0 saves. Any other buffer (unknown meaning) is kept in step, to be safe.
    """
    bn_names = {"running_mean", "running_var", "num_batches_tracked"}
    for module in model.modules():
        is_bn = isinstance(module, nn.modules.batchnorm._NormBase)
        for name, _ in module.named_buffers(recurse=False):
            if not (is_bn and name in bn_names):
                return True
    return False


def wrap_distributed(model: nn.Module, tc: TrainConfig, device: torch.device) -> DistributedDataParallel:
    """DDP with gradients as views of its buckets (no copy, less memory), a static graph when
    the graph cannot change between steps (no accumulation, no compiled encoders), and buffer
    broadcasts only when :func:`_needs_buffer_broadcast`."""
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(
        model,
        device_ids=ids,
        gradient_as_bucket_view=True,
        static_graph=tc.grad_accum == 1 and not tc.compile,
        broadcast_buffers=_needs_buffer_broadcast(model),
    )
