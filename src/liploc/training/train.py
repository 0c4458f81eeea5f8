"""Training, the public entry: :func:`train` runs a whole training, :func:`configure_run` and
:func:`load_training_config` make its config and run folder from ``liploc train``'s arguments.

One call, :func:`train`, runs a whole training in one process or, under ``torchrun``, in each
process of a DDP job (gloo on CPU, NCCL on CUDA). Only rank 0 writes files.

Exact resume: everything random is a function of the seed and the position in training, never of
the history of a random generator. Data order comes from :class:`~liploc.training.samplers.EpochSampler`
(seed + epoch), augmentation from ``(seed, epoch, index)`` per sample, and the torch generator
(dropout) is reseeded from ``(seed, step, rank)`` before every optimiser step. A checkpoint
therefore only needs the weights, the optimiser and schedule states, and the position (epoch and
step within it); a run resumed from it ends with the same weights as one never interrupted (with
the same number of processes).

The training package, by concern (as open_clip_train): :mod:`~liploc.training.run_setup` (a
run's set-up) and :mod:`~liploc.training.loop` (the loop), :mod:`~liploc.training.schedule`
(optimiser, learning rates), :mod:`~liploc.training.validation`, :mod:`~liploc.training.loaders`,
:mod:`~liploc.training.splits` and :mod:`~liploc.training.samplers` (data),
:mod:`~liploc.training.losses`, :mod:`~liploc.training.distributed`,
:mod:`~liploc.training.checkpointing`, :mod:`~liploc.training.run_log`,
:mod:`~liploc.training.determinism` and :mod:`~liploc.training.stop_request`.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch.distributed as dist

from liploc.config import Config, load_config
from liploc.errors import ConfigError
from liploc.runtime.checkpoint import sweep_checkpoint_folder
from liploc.runtime.data_roots import resolve_data_roots
from liploc.runtime.device import resolve_device
from liploc.runtime.run_folder import RunFolder, RunLock
from liploc.training import distributed
from liploc.training.determinism import determinism
from liploc.training.loop import StepCallback, Trainer, TrainResult
from liploc.training.stop_request import StopRequest

__all__ = ["StepCallback", "TrainResult", "configure_run", "load_training_config", "train"]


def train(
    config: Config,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_step: StepCallback | None = None,
    console: Any | None = None,
) -> TrainResult:
    """Train the two-tower model of ``config`` and write the run folder ``out_dir``.

    Args:
        config: full configuration; every dataset entry needs its ``root``
            (see :func:`liploc.runtime.data_roots.resolve_data_roots`).
        out_dir: run folder (see :mod:`liploc.runtime.run_folder`). A folder that already holds a run is
            refused unless ``resume``.
        resume: continue from ``checkpoints/last.safetensors`` of ``out_dir``.
        progress: show a progress bar (rank 0).
        on_step: called on every process after each optimiser step with the step number and its
            logged values (learning rates; loss, temperature and pairs/s on logging steps only,
            which is when the loop reads them from the device).
        console: a rich Console for messages (rank 0); None: messages only go to ``train.log``
            (a console is made for the progress bar when ``progress``).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each process calls this; they form a DDP job, split
    every batch (``train.batch_size`` is the global batch, divided among processes) and only rank
    0 writes files. SIGINT/SIGTERM stop after the current step and save a resumable checkpoint.
    """
    was_initialized = dist.is_available() and dist.is_initialized()
    info = distributed.init_from_env()
    trainer: Trainer | None = None
    lock = _lock_run_folder(Path(out_dir)) if info.is_main else None
    started = False
    try:
        device = resolve_device(config.train.device, info.local_rank)
        with determinism(config.train.deterministic, device), StopRequest() as stop:
            trainer = Trainer(config, Path(out_dir), resume, progress, info, device, console)
            started = True
            return trainer.run(stop, on_step)
    finally:
        if lock is not None:
            lock.release(remove_if_unused=not started)
        if not was_initialized:
            # DDP must be gone before its process group is.
            trainer = None
            gc.collect()
            distributed.destroy()


def _lock_run_folder(out_dir: Path) -> RunLock:
    """Lock the run folder for this process (one writer per run) and sweep what killed writers
    left: temporary files of interrupted saves and logs, weights no manifest vouches for."""
    lock = RunLock(out_dir).acquire()
    try:
        run = RunFolder(out_dir)
        from liploc.atomic import sweep_temporary_files

        sweep_temporary_files(run.root)
        sweep_checkpoint_folder(run.checkpoints)
    except BaseException:
        lock.release(remove_if_unused=True)
        raise
    return lock


def load_training_config(path: str | Path, overrides: list[str] | None = None) -> tuple[Config, Path | None]:
    """Config of ``liploc train``: a YAML file, or a run folder (its ``config.yaml``) to resume.

    Returns the config and, for a run folder, the folder itself (the default ``--out``).
    """
    path = Path(path)
    if path.is_dir():
        run = RunFolder(path)
        if not run.config.is_file():
            raise ConfigError(f"{path}: a folder was given but it holds no config.yaml (not a run folder)")
        return load_config(run.config, overrides), path
    return load_config(path, overrides), None


def configure_run(
    config: str | Path,
    data_roots: list[str] | tuple[str, ...] = (),
    overrides: list[str] | tuple[str, ...] = (),
    out: str | Path | None = None,
) -> tuple[Config, Path]:
    """Config and run folder of ``liploc train CONFIG [--data-root ...] [--set ...] [--out ...]``.

    ``config`` is a YAML file or a run folder (its saved config; the folder is the default
    ``--out``, for resuming). The default run folder is ``runs/<config name>``.
    """
    cfg, run_dir = load_training_config(config, list(overrides))
    cfg = resolve_data_roots(cfg, list(data_roots))
    return cfg, Path(out) if out is not None else (run_dir or Path("runs") / cfg.name)
