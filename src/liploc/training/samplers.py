"""Samplers of training and validation: every frame once per epoch, in an order that survives a
resume and any number of processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

if TYPE_CHECKING:
    pass


# --- sampling ------------------------------------------------------------------------------------
class ValidationBatches(Sampler[list[int]]):
    """This process's part of each global validation batch, every frame exactly once.

    The frames are taken in one fixed order (a permutation by ``seed``, the same every epoch) and
    cut into global batches of ``batch_size``; each global batch is split among the processes in
    near-equal consecutive parts. Unlike a distributed sampler, nothing is padded: a process may
    get a smaller or an empty part of the last batch (yielded as ``[]``; see
    :func:`collate_or_none`), so every frame is counted once in the metrics. Every process yields
    the same number of batches, as the gathering in validation needs.
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.order = np.random.default_rng(seed).permutation(num_samples).tolist()
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __iter__(self):  # type: ignore[override]
        for start in range(0, len(self.order), self.batch_size):
            batch = self.order[start : start + self.batch_size]
            parts = np.array_split(np.arange(len(batch)), self.world_size)
            yield [batch[i] for i in parts[self.rank].tolist()]

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)


def collate_or_none(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor] | None:
    """torch's default collation; None for an empty part of a batch (see :class:`ValidationBatches`)."""
    if not samples:
        return None
    return torch.utils.data.default_collate(samples)


class EpochSampler(Sampler[tuple[int, int]]):
    """One process's share of an epoch's (shuffled) indices, as ``(epoch, index)`` keys.

    The order is torch's :class:`DistributedSampler` (seeded by ``seed + epoch``; one process is
    the one-replica case), so it depends only on the seed, the epoch and the number of processes.
    ``set_epoch(epoch, start)`` skips the first ``start`` samples of this process's share, which
    is how a resumed run continues mid-epoch exactly where the interrupted one stopped.

    ``set_epoch(..., through=E, per_epoch=M)`` goes on with epochs ``epoch + 1 .. E`` (the first
    ``M`` samples of each) in the same iteration: one loader iterator then spans epoch ends, so
    persistent workers are already preparing the next epoch's first batches while this one ends
    and validates (a new iterator per epoch leaves the device idle until a worker has built a
    whole batch). The keys, and so the batches, are those of separate epochs.
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self._order = DistributedSampler(
            range(num_samples),  # type: ignore[arg-type]  # only its length is used
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.epoch = 0
        self.start = 0
        self.through: int | None = None
        self.per_epoch: int | None = None

    def set_epoch(
        self, epoch: int, start: int = 0, through: int | None = None, per_epoch: int | None = None
    ) -> None:
        """Iterate epoch ``epoch`` next, beginning at its ``start``-th sample; with ``through``,
        go on with the following epochs up to ``through``, ``per_epoch`` samples of each."""
        if through is not None and per_epoch is None:
            raise ValueError("set_epoch(through=...) needs per_epoch: the samples each epoch gives")
        self.epoch, self.start, self.through, self.per_epoch = epoch, start, through, per_epoch

    def __iter__(self):  # type: ignore[override]
        last = self.epoch if self.through is None else max(self.epoch, self.through)
        for epoch in range(self.epoch, last + 1):
            self._order.set_epoch(epoch)
            start = self.start if epoch == self.epoch else 0
            for position, index in enumerate(self._order):
                if self.per_epoch is not None and position >= self.per_epoch:
                    break
                if position >= start:
                    yield (epoch, int(index))

    def __len__(self) -> int:
        """Samples of one epoch's share from ``start`` on (what ``set_epoch`` without ``through``
        iterates)."""
        return max(0, len(self._order) - self.start)
