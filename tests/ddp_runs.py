"""Training runs of the DDP equivalence tests, run by ``torchrun`` (one process group for all).

``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_runs.py DATA OUT``:
``OUT/short``: a few plain-SGD steps (compared with one process on the concatenated batch);
``OUT/short-gradient-x2``: the same with the gradient multiplied by the number of processes (the
failing control of that comparison: a gradient-scaling bug);
``OUT/straight``: the plateau schedule run uninterrupted; ``OUT/resumed``: the same run stopped
mid-way and resumed; ``OUT/signalled``: Ctrl-C in rank 1 alone after step 3 (all processes must
stop together and save).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from liploc.config import Config, load_config
from liploc.runtime.data_roots import resolve_data_roots
from liploc.training import distributed, run_setup
from liploc.training.losses import ContrastiveLoss
from liploc.training.train import train

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"

EQUIVALENCE = [
    "data.num_workers=0",
    "data.augment=false",
    "model.head_dropout=0",
    # Group norm: batch statistics would differ between a process's half batch and the whole.
    "model.image_encoder=test_efficientnet_gn",
    "model.lidar_encoder=test_efficientnet_gn",
    "train.batch_size=8",
    "train.log_every=1",
]
PLATEAU = [
    *EQUIVALENCE,
    "train.scheduler=plateau",
    "train.plateau_patience=0",
    "train.plateau_factor=0.5",
    "train.lr_head=0.02",
    "train.epochs=5",
]
"""The paper configs' schedule, with a patience and rates that make it reduce within a few epochs."""


def config(data: Path, overrides: list[str]) -> Config:
    return resolve_data_roots(load_config(TINY, overrides), [data])


def _plain_sgd(groups: list[dict], tc, device: torch.device) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
    return torch.optim.SGD(groups, lr=tc.lr_head, weight_decay=tc.weight_decay)


@contextmanager
def plain_sgd() -> Iterator[None]:
    """Training steps with plain SGD (no momentum) instead of AdamW: the update is the learning rate
    times the gradient, so a wrong gradient scale shows in the weights (Adam divides it out)."""
    saved = run_setup.build_optimizer
    run_setup.build_optimizer = _plain_sgd
    try:
        yield
    finally:
        run_setup.build_optimizer = saved


@contextmanager
def gradient_times_world_size() -> Iterator[None]:
    """A gradient-scaling bug: the loss's value unchanged, its gradient multiplied by the number of
    processes (as if the loss's scaling for DDP's gradient averaging were applied twice). One
    process: no change."""
    real = ContrastiveLoss._forward_fp32

    def scaled(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        loss = real(self, *args, **kwargs)
        world = distributed.get_world_size()
        return loss * world - (loss * (world - 1)).detach()

    ContrastiveLoss._forward_fp32 = scaled  # type: ignore[method-assign]
    try:
        yield
    finally:
        ContrastiveLoss._forward_fp32 = real  # type: ignore[method-assign]


def main(data: Path, out: Path) -> None:
    torch.set_num_threads(1)
    distributed.init_from_env()  # one group for every run below (train keeps a group it finds)
    try:
        with plain_sgd():
            train(config(data, [*EQUIVALENCE, "train.max_steps=3"]), out / "short", progress=False)
            with gradient_times_world_size():
                short = config(data, [*EQUIVALENCE, "train.max_steps=3"])
                train(short, out / "short-gradient-x2", progress=False)
        train(config(data, PLATEAU), out / "straight", progress=False)
        train(config(data, [*PLATEAU, "train.max_steps=10"]), out / "resumed", progress=False)
        train(config(data, PLATEAU), out / "resumed", resume=True, progress=False)

        def interrupt_rank_1(step: int, row: dict[str, float]) -> None:
            if step == 3 and distributed.get_rank() == 1:
                os.kill(os.getpid(), signal.SIGINT)

        train(config(data, PLATEAU), out / "signalled", progress=False, on_step=interrupt_rank_1)
    finally:
        distributed.destroy()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
