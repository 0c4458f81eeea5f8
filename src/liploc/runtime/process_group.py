"""The process group of a ``torchrun`` job: rank and world size, start-up from the environment,
and the collectives without gradients that any command may use (training, ``map build``).

Everything here also works without ``torch.distributed`` being initialised: a single process is
rank 0 of a world of size 1, and the collectives return their input. Nothing is node-specific:
``torchrun --nnodes`` gives several nodes the same environment variables that one node gets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether several processes take part."""
        return self.world_size > 1


def is_distributed() -> bool:
    """Whether a process group is initialised and holds more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Rank of this process (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Whether this process is rank 0."""
    return get_rank() == 0


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK`` under a process group; 0 without one): the
    index of its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def init_from_env(backend: str | None = None) -> DistributedInfo:
    """Join the process group that ``torchrun`` describes in the environment.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is initialised and the single process
    is rank 0. ``backend`` defaults to ``nccl`` when CUDA is present and ``gloo`` otherwise; with
    NCCL the CUDA device of ``LOCAL_RANK`` is made current.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 1:
        return DistributedInfo()
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistributedInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def destroy() -> None:
    """Leave the process group if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group_from_env() -> Iterator[DistributedInfo]:
    """:func:`init_from_env` while inside; the group is left on the way out if this made it."""
    was_initialized = dist.is_available() and dist.is_initialized()
    info = init_from_env()
    try:
        yield info
    finally:
        if not was_initialized:
            destroy()


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def collective_device() -> torch.device:
    """Where tensors must be for the group's collectives: this process's GPU under NCCL, else CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_uneven(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` of every process along dim 0 when the row counts differ (no gradient).

    Rows are padded to the largest count for the all-gather and the padding dropped again, so each
    process's rows appear once, in rank order. Without a process group: ``tensor`` itself.
    """
    if not is_distributed():
        return tensor
    padded, sizes = _padded_to_largest(tensor)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return _unpadded(parts, sizes)


def _padded_to_largest(tensor: Tensor) -> tuple[Tensor, list[int]]:
    """``tensor``'s rows padded to the largest row count of any process, and every process's count
    (the collectives need tensors of one shape; a few bytes are all-gathered for the counts)."""
    tensor = tensor.detach().contiguous()
    rows = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    counts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, rows)
    sizes = [int(c.item()) for c in counts]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    return padded, sizes


def _unpadded(parts: list[Tensor], sizes: list[int]) -> Tensor:
    """The gathered ``parts`` without their padding, in rank order."""
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)], dim=0)


def gather_uneven_to_main(tensor: Tensor) -> Tensor | None:
    """Concatenate ``tensor`` of every process along dim 0 on rank 0 alone (no gradient).

    As :func:`all_gather_uneven`, in rank order, but only rank 0 receives the rows (the others get
    None): what a job needs when one process writes the result. A 1M-scan map build would
    otherwise hold every rank's 1 GB of embeddings on every rank. Without a process group:
    ``tensor`` itself.
    """
    if not is_distributed():
        return tensor
    padded, sizes = _padded_to_largest(tensor)
    if dist.get_rank() != 0:
        dist.gather(padded, None, dst=0)
        return None
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.gather(padded, parts, dst=0)
    return _unpadded(parts, sizes)


def shard_range(total: int, rank: int, world_size: int, multiple: int = 1) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous share of ``total`` items, cut at multiples of
    ``multiple`` (whole batches) and as even as that allows; the shares of ranks 0..world_size-1
    follow each other and cover ``0..total`` once (a rank may get none)."""
    if world_size < 1 or not 0 <= rank < world_size or multiple < 1:
        raise ValueError(f"rank {rank} of {world_size} (multiple {multiple}) is not a shard")
    blocks = -(-total // multiple)
    start = rank * blocks // world_size * multiple
    stop = (rank + 1) * blocks // world_size * multiple
    return min(start, total), min(stop, total)
