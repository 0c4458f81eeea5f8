"""Reproducibility of training: deterministic kernels, and seeds that depend only on the position.

Everything random in training is a function of the seed and the position in training, never of
the history of a random generator, so that a resumed run ends with the same weights as one never
interrupted: the torch generator (dropout) is reseeded from ``(seed, step, rank)`` before every
optimiser step (:func:`step_seed`), and each data-loading worker seeds numpy and python from
torch's seed of that worker (:func:`init_worker`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the torch generator for optimiser step ``step`` on process ``rank``."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def init_worker(worker_id: int) -> None:
    """Data-loading worker set-up: seeds, and leave Ctrl-C to the main process.

    A terminal's Ctrl-C reaches every process of the group; the main process then finishes its
    step and saves, which needs the workers alive until it shuts them down.
    """
    import random

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # torch seeds each worker from the loader's generator; derive numpy's and python's from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@contextmanager
def determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels while training (restored afterwards)."""
    import torch.utils.deterministic

    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    if enabled and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    # Deterministic mode also fills every torch.empty with NaN, a full memory pass per allocation.
    # Nothing here reads memory before writing it, so results stay bit-exact without that fill.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]
        torch.utils.deterministic.fill_uninitialized_memory = previous[4]
