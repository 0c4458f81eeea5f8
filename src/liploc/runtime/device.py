"""Devices, precision and loader processes: what training, evaluation and localization share."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import ThreadpoolController

from liploc.config import Config, resolved_precision
from liploc.errors import ConfigError


# --- devices, precision, seeds --------------------------------------------------------------------
def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (this process's GPU under torchrun) when present, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: '{name}' is not a torch device (auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device is '{name}' but CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """dtype of autocast for ``train.precision`` on ``device`` (None: full fp32)."""
    cuda_bf16 = precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[
        resolved_precision(precision, cuda_bf16=cuda_bf16)
    ]


def capped_num_workers(requested: int, cores: int | None = None) -> tuple[int, str | None]:
    """Loader workers: ``data.num_workers``, lowered to the cores this process may use.

    Returns the count and the one line that says so when it was lowered (more workers than
    cores only add memory and context switches; torch would warn about it for every loader).
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if requested <= cores:
        return requested, None
    return cores, f"data.num_workers {requested} lowered to {cores}, the CPU cores available here"


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """CUDA when present (``auto``; GPU ``local_rank`` under torchrun), else CPU; or the named
    torch device.

    Errors name ``--device``, the option through which evaluation and localization get it.
    """
    try:
        return resolve_device(name, local_rank)
    except ConfigError as err:
        raise ConfigError(str(err).replace("train.device", "--device")) from None


_PRECISION_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def precision_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (None: fp32, no autocast)."""
    if precision not in _PRECISION_DTYPES:
        raise ValueError(f"unknown embedding precision {precision!r} (fp32, bf16, fp16)")
    return _PRECISION_DTYPES[precision]


def embedding_precision(config: Config, device: torch.device) -> str:
    """Name (``fp32``, ``bf16``, ``fp16``) of the precision ``train.precision`` gives on ``device``.

    Queries and map must be embedded alike (a bf16 map searched with fp32 queries loses recall
    for no reason): the map records this name and localization embeds its queries with it.
    """
    dtype = autocast_dtype(config.train.precision, device)
    return next(name for name, d in _PRECISION_DTYPES.items() if d == dtype)


def loader_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loader_workers(requested: int, batches: int) -> int:
    """Worker processes for embedding: ``requested`` (``data.num_workers``), at most one per CPU
    core this process may use and one per batch (a worker costs a process start)."""
    return max(0, min(requested, loader_cores(), batches))


# --- NumPy's BLAS threads while preprocessing -------------------------------------------------------
@functools.cache
def _blas_pools() -> ThreadpoolController:
    """The thread pools of the BLAS libraries loaded in this process (NumPy's), found once: a
    controller made per sample would cost a millisecond, its ``limit`` costs 17 us."""
    return ThreadpoolController()


@contextmanager
def numpy_blas_single_threaded() -> Iterator[None]:
    """NumPy's BLAS on one thread inside the block: what preprocessing a frame wants.

    A frame's preprocessing multiplies some 120,000 points by a small matrix; OpenBLAS splits that
    over its threads, which then spin, waiting for more work, on the cores that torch's threads
    train on. On this project's 2-core CPU, with torch on 2 threads, preprocessing a bridge sample
    (camera image, range image, depth image, BEV) took 26-35 ms with them and 13-14 ms without.
    The results are the same (OpenBLAS splits the rows of a product, not its sums).
    """
    with _blas_pools().limit(limits=1, user_api="blas"):
        yield
