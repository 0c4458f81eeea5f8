"""The training loop: AdamW with per-module learning rates, schedules, AMP, DDP, checkpoints, resume.

One call, :func:`train`, runs a whole training in one process or, under ``torchrun``, in each
process of a DDP job (gloo on CPU, NCCL on CUDA). Only rank 0 writes files.

Exact resume: everything random is a function of the seed and the position in training, never of
the history of a random generator. Data order comes from :class:`~liploc.training.samplers.EpochSampler`
(seed + epoch), augmentation from ``(seed, epoch, index)`` per sample, and the torch generator
(dropout) is reseeded from ``(seed, step, rank)`` before every optimiser step. A checkpoint
therefore only needs the weights, the optimiser and schedule states, and the position (epoch and
step within it); a run resumed from it ends with the same weights as one never interrupted (with
the same number of processes).
"""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from liploc.atomic import append_text, atomic_write_text
from liploc.config import Config, TrainConfig, config_from_dict, load_config, save_config
from liploc.errors import ConfigError, DataError, LiplocError
from liploc.runtime.checkpoint import (
    load_newest_checkpoint,
    save_checkpoint,
    state_to_tensors,
    strip_prefix,
    sweep_checkpoint_folder,
    tensors_to_state,
)
from liploc.runtime.data_roots import resolve_data_roots
from liploc.runtime.device import autocast_dtype, capped_num_workers, resolve_device
from liploc.runtime.frame_dataset import PairDataset
from liploc.runtime.preprocess_cache import preprocess_cache_dir
from liploc.runtime.run_folder import MODEL_PREFIX, CsvLog, RunFolder, RunLock
from liploc.training import distributed
from liploc.training.data_fingerprint import FILENAME as FINGERPRINT_FILE
from liploc.training.data_fingerprint import check_unchanged, data_listing, digest, write_listing
from liploc.training.samplers import EpochSampler, ValidationBatches, collate_or_none
from liploc.training.splits import training_splits

StepCallback = Callable[[int, dict[str, float]], None]

VAL_METRICS = ("val_loss", "val_top1_image_to_lidar", "val_top1_lidar_to_image")
"""Columns of the validation results in ``epochs.csv``."""

RESUME_MUST_MATCH = ("model", "loss", "projection")
"""Config sections a resumed run may not change (the weights or the inputs would not fit)."""


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    step: int
    """Optimiser steps done in all (across resumes)."""
    epoch: int
    """Epochs completed."""
    stopped: str
    """``finished`` (all epochs or ``max_steps``) or ``interrupted`` (signal; resumable)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Latest train loss, validation loss and in-batch top-1, throughput."""


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the torch generator for optimiser step ``step`` on process ``rank``."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _init_worker(worker_id: int) -> None:
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


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Autocast to ``dtype`` on ``device``, or nothing for full precision."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@contextmanager
def _determinism(enabled: bool, device: torch.device) -> Iterator[None]:
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


# --- learning-rate schedule ------------------------------------------------------------------------
class LrSchedule:
    """Learning rate of every parameter group as a function of the step, plus plateau reductions.

    ``lr = base_lr * warmup(step) * cosine(step) * plateau_scale``: linear warm-up over
    ``warmup_steps``; with ``scheduler: cosine`` a half cosine to 0 at ``total_steps``; with
    ``plateau`` the scale drops by ``plateau_factor`` when the validation loss has not improved
    (relative 1e-4, as torch's ReduceLROnPlateau) for more than ``plateau_patience`` validations.
    Its state is three numbers, stored in the checkpoint JSON.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_steps = max(1, total_steps)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.plateau_scale = 1.0
        self.best: float | None = None
        self.bad_epochs = 0

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rates for the optimiser step after ``step`` steps."""
        f = self.plateau_scale
        warmup = self.cfg.warmup_steps
        if warmup and step < warmup:
            f *= (step + 1) / warmup
        if self.cfg.scheduler == "cosine":
            span = max(1, self.total_steps - warmup)
            progress = min(1.0, max(0.0, (step - warmup) / span))
            f *= 0.5 * (1.0 + math.cos(math.pi * progress))
        return f

    def apply(self, step: int) -> None:
        """Set the groups' learning rates for the step after ``step`` steps."""
        f = self.factor(step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f

    def validation_done(self, loss: float) -> bool:
        """Record a validation loss; True when the plateau rule reduced the learning rate."""
        if self.cfg.scheduler != "plateau" or not math.isfinite(loss):
            return False
        if self.best is None or loss < self.best * (1 - 1e-4):
            self.best, self.bad_epochs = loss, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.cfg.plateau_patience:
            self.plateau_scale *= self.cfg.plateau_factor
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])


# --- stopping on a signal --------------------------------------------------------------------------
class _StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current step and save (a second SIGINT aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        self._group: Any = None
        self._pending: tuple[Any, torch.Tensor] | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopRequest:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pending is not None:
            self._pending[0].wait()  # every process started it: none is left waiting
            self._pending = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, device: torch.device) -> bool:
        """Whether any process was asked to stop (all processes must stop at the same step).

        Under DDP the answer is one step late: each call starts an asynchronous MAX of the
        flags over a CPU (gloo) group and reads the one started at the previous call, which has
        long finished. So no step waits for the device or for the other processes, and all of
        them still stop after the same step.
        """
        if not distributed.is_distributed():
            return self.requested
        if self._group is None:
            # Collective, and every process calls agreed() at the same steps.
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        stop = False
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            stop = bool(flag.item() > 0)
        flag = torch.tensor([1.0 if self.requested else 0.0])
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        return stop


# --- logging -------------------------------------------------------------------------------------
class _RunLog:
    """Lines for ``train.log`` and, when given, the console (rank 0 only)."""

    def __init__(self, run: RunFolder, main: bool, console: Any | None) -> None:
        self.run, self.main, self.console = run, main, console

    def __call__(self, message: str) -> None:
        if not self.main:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.run.log.parent.mkdir(parents=True, exist_ok=True)
        append_text(self.run.log, f"{stamp} {message}\n")
        if self.console is not None:
            self.console.print(message, markup=False, highlight=False)


def _tensorboard_writer(run: RunFolder, log: _RunLog) -> Any | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log(
            "train.log is set to tensorboard but the tensorboard package is not installed "
            "(pip install tensorboard); writing CSV logs only"
        )
        return None
    return SummaryWriter(log_dir=str(run.tensorboard))


# --- checkpoints ----------------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _save_training_checkpoint(
    path: Path,
    config: Config,
    model: nn.Module,
    loss_fn: nn.Module,
    position: dict[str, Any],
    metrics: dict[str, float],
    optimizer: torch.optim.Optimizer | None = None,
    schedule: LrSchedule | None = None,
    scaler: torch.amp.GradScaler | None = None,
    extra: dict[str, Any] | None = None,
    snapshot: _Snapshot | None = None,
) -> None:
    """Weights (+ optimiser state when given) as safetensors; config, position, metrics as JSON.

    ``snapshot`` holds the CPU copies and fingerprint of this step's tensors, shared by the best
    and last saves of one step, so that each tensor is copied off the device and hashed once.
    """
    state: dict[str, Any] = {"model": _unwrap(model).state_dict(), "loss": loss_fn.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    tensors, skeleton = state_to_tensors(state)
    snapshot = (
        snapshot
        if snapshot is not None and snapshot.step == position["step"]
        else _Snapshot(position["step"])
    )
    tensors = snapshot.on_cpu(tensors)
    metadata: dict[str, Any] = {
        "config": config.model_dump(mode="json"),
        "step": position["step"],
        "position": position,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
        "model_fingerprint": snapshot.fingerprint(_unwrap(model), tensors),
        "state": skeleton,
        "torch_version": torch.__version__,
    }
    if schedule is not None:
        metadata["schedule"] = schedule.state_dict()
    if scaler is not None:
        metadata["scaler"] = scaler.state_dict()
    metadata.update(extra or {})
    save_checkpoint(path, tensors, metadata)


class _Snapshot:
    """CPU copies of one step's tensors and the model's fingerprint, made once per step."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.tensors: dict[str, torch.Tensor] = {}
        self._fingerprint: str | None = None

    def on_cpu(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for name, tensor in tensors.items():
            if name not in self.tensors:
                self.tensors[name] = tensor.detach().to("cpu")
        return {name: self.tensors[name] for name in tensors}

    def fingerprint(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> str:
        if self._fingerprint is None:
            from liploc.models.two_tower import state_fingerprint

            self._fingerprint = state_fingerprint(model.architecture(), strip_prefix(tensors, MODEL_PREFIX))
        return self._fingerprint


# --- validation -----------------------------------------------------------------------------------
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

    net = _unwrap(model)
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
            with _autocast(device, amp_dtype):
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


def build_optimizer(
    groups: list[dict[str, Any]], tc: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW over ``groups``: the fused kernel (one launch for all parameters) where torch has it
    for ``device``, else the multi-tensor one."""
    kwargs = {"lr": tc.lr_head, "weight_decay": tc.weight_decay}
    if device.type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError):
            pass  # dtype or device without a fused kernel
    return torch.optim.AdamW(groups, **kwargs)


def _match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimiser moments their parameter's memory layout (checkpoints store them
    contiguous). torch's fused CPU AdamW walks parameter, gradient and moments as flat memory:
    a channels-last parameter with contiguous moments gets wrong updates (measured: errors of
    0.6 after one step), and a resumed run would not match an uninterrupted one."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _needs_buffer_broadcast(model: nn.Module) -> bool:
    """Whether DDP must broadcast rank 0's buffers before each forward.

    Batch-norm running statistics need not be: a training forward uses the batch's statistics,
    :func:`validate` broadcasts rank 0's before evaluating, and only rank 0 saves. Any other
    buffer (unknown meaning) is kept in step, to be safe.
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


# --- the loop -------------------------------------------------------------------------------------
def _check_resume_config(saved: Config, config: Config, log: _RunLog) -> None:
    old, new = saved.model_dump(mode="json"), config.model_dump(mode="json")
    fixed = [s for s in RESUME_MUST_MATCH if old[s] != new[s]]
    fixed += [f"data.{k}" for k in ("image_size", "lidar_input") if old["data"][k] != new["data"][k]]
    if fixed:
        raise ConfigError(
            f"cannot resume with a changed {', '.join(fixed)}: the checkpoint was trained with "
            "another model, loss or input; start a new run (another --out) instead"
        )
    changed = [
        f"{section}.{key}"
        for section in ("data", "train", "eval")
        for key in sorted(set(old[section]) | set(new[section]))
        if old[section].get(key) != new[section].get(key)
    ]
    if changed:
        log(f"resuming with changed settings: {', '.join(changed)}")


def _lidar_channels(config: Config) -> int:
    if config.data.lidar_input == "camera_depth":
        return 3
    from liploc.lidar.range_image import lidar_input_channels

    return lidar_input_channels(config.projection)


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
    trainer: _Trainer | None = None
    lock = _lock_run_folder(Path(out_dir)) if info.is_main else None
    started = False
    try:
        device = resolve_device(config.train.device, info.local_rank)
        with _determinism(config.train.deterministic, device), _StopRequest() as stop:
            trainer = _Trainer(config, Path(out_dir), resume, progress, info, device, console)
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


class _Trainer:
    """State of one training run; :meth:`run` is the loop."""

    def __init__(
        self,
        config: Config,
        out_dir: Path,
        resume: bool,
        progress: bool,
        info: distributed.DistributedInfo,
        device: torch.device,
        console: Any | None,
    ) -> None:
        from liploc.models import create_model
        from liploc.training.losses import build_loss

        self.config, self.tc, self.info, self.device = config, config.train, info, device
        tc = self.tc
        self.run_folder = run = RunFolder(out_dir)
        self.console = console if info.is_main else None
        if progress and info.is_main and console is None:
            from rich.console import Console

            self.console = Console()
        self.progress = progress and info.is_main
        self.log = _RunLog(run, info.is_main, self.console)
        self._check(resume)
        self.amp_dtype = autocast_dtype(tc.precision, device)
        self.rank_batch = tc.batch_size // info.world_size

        # Data.
        self.splits = training_splits(config.data, tc.seed)
        self.data_listing = data_listing(config.data)
        if len(self.splits.train) < tc.batch_size * tc.grad_accum:
            gap = self.splits.left_out.get("val_gap", 0)
            raise DataError(
                out_dir,
                f"only {len(self.splits.train)} training pairs with a pose, fewer than one step of "
                f"batch_size {tc.batch_size} x grad_accum {tc.grad_accum}"
                + (
                    f" ({gap} frames lie within data.val_gap_m {config.data.val_gap_m:g} m of validation; "
                    "lower it, or name val sequences)"
                    if gap
                    else ""
                ),
            )
        cache_dir = preprocess_cache_dir(config.data) if config.data.cache else None
        # Workers send uint8 inputs; normalisation and dropout run on the device (model_inputs).
        train_set = PairDataset(self.splits.train, config, train=True, cache_dir=cache_dir, raw=True)
        val_set = PairDataset(self.splits.val, config, train=False, cache_dir=cache_dir, raw=True)
        self.train_sampler = EpochSampler(len(train_set), True, tc.seed, info.rank, info.world_size, True)
        self.num_workers, note = capped_num_workers(config.data.num_workers)
        if note:
            self.log(note)
        self.train_loader = self._loader(train_set, self.train_sampler, drop_last=True)
        self.val_loader = self._val_loader(val_set) if len(val_set) else None
        self.steps_per_epoch = len(self.train_sampler) // self.rank_batch // tc.grad_accum
        self.total_steps = tc.epochs * self.steps_per_epoch
        if tc.max_steps is not None:
            self.total_steps = min(self.total_steps, tc.max_steps)

        # Model, loss, optimiser: identical initial weights on every process.
        torch.manual_seed(tc.seed)
        self.model = create_model(config.model).to(device)
        if tc.sync_batchnorm:
            if not info.enabled:
                self.log("train.sync_batchnorm: one process, nothing to synchronise")
            elif device.type != "cuda":
                raise ConfigError(
                    "train.sync_batchnorm needs CUDA devices (torch's SyncBatchNorm has no CPU "
                    "implementation); set it to false for CPU runs"
                )
            else:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = build_loss(config.loss).to(device)
        groups = [
            *self.model.param_groups(tc.lr_head, tc.lr_image_encoder, tc.lr_lidar_encoder, tc.weight_decay),
            *self.loss_fn.param_groups(tc.lr_head),
        ]
        if tc.encoder_weight_decay is not None:
            for group in groups:
                if group.get("name") in ("image_encoder", "lidar_encoder"):
                    group["weight_decay"] = tc.encoder_weight_decay
        self.optimizer = build_optimizer(groups, tc, device)
        self.group_names = [g.get("name", f"group{i}") for i, g in enumerate(self.optimizer.param_groups)]
        self.schedule = LrSchedule(self.optimizer, tc, self.total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.position: dict[str, Any] = {
            "step": 0,
            "epoch": 0,
            "step_in_epoch": 0,
            "epoch_loss_sum": 0.0,
            "epoch_loss_count": 0,
        }
        self.best: dict[str, Any] = {
            "value": None,
            "step": None,
            "metric": tc.best_metric if self.val_loader is not None else "train_loss",
        }
        self.metrics: dict[str, float] = {}
        self.data_digest: str | None = None
        self.resumed_window_losses: list[float] = []
        self.snapshot = _Snapshot(-1)
        if resume:
            self._restore()
        # A run from before fingerprints gets one from here on.
        self.data_digest = self.data_digest or digest(self.data_listing)
        if tc.compile:
            # In place (nn.Module.compile): the state_dict keys, so checkpoints, stay the same.
            self.model.image_encoder.compile()
            self.model.lidar_encoder.compile()
        self.net: nn.Module = self.model
        if info.enabled:
            self.net = wrap_distributed(self.model, tc, device)
        self.pending_losses: list[torch.Tensor] = []
        """Step losses (device scalars, one per micro-batch) not yet read: read at log steps,
        before saves and at epoch ends, so that steps never wait for the device."""

        lr_columns = [f"lr_{n}" for n in self.group_names]
        step_columns = ["step", "epoch", "loss", *lr_columns, "temperature", "pairs_per_s", "elapsed_s"]
        self.step_log = CsvLog(run.metrics, step_columns)
        epoch_columns = ["epoch", "step", "train_loss", *VAL_METRICS, lr_columns[0], "elapsed_s"]
        self.epoch_log = CsvLog(run.epochs, epoch_columns)
        self.tb = None
        self._prepare_folder(resume)

    # --- set-up ---------------------------------------------------------------------------------
    def _check(self, resume: bool) -> None:
        run, tc, config = self.run_folder, self.tc, self.config
        if resume and not run.has_run():
            raise DataError(run.last_checkpoint, "cannot resume: no last checkpoint in this run folder")
        if not resume and run.has_run():
            raise ConfigError(
                f"{run.root}: run folder already holds a training run; pass --resume to continue it "
                "or choose another --out"
            )
        if tc.batch_size % self.info.world_size:
            raise ConfigError(
                f"train.batch_size ({tc.batch_size}) must be divisible by the number of processes "
                f"({self.info.world_size}); it is the global batch, split among them"
            )
        channels = _lidar_channels(config)
        if channels != config.model.lidar_in_chans:
            raise ConfigError(
                f"model.lidar_in_chans is {config.model.lidar_in_chans} but the LiDAR input has "
                f"{channels} channels (projection.channels {config.projection.channels})"
            )

    def _loader(self, dataset: PairDataset, sampler: EpochSampler, drop_last: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.rank_batch,
            sampler=sampler,
            num_workers=workers,
            drop_last=drop_last,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_init_worker,
            generator=torch.Generator().manual_seed(self.tc.seed),
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
        )

    def _val_loader(self, dataset: PairDataset) -> DataLoader:
        # Every validation frame once, whatever the number of processes (no padded duplicates).
        batches = ValidationBatches(
            len(dataset), self.tc.batch_size, self.tc.seed + 1, self.info.rank, self.info.world_size
        )
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=collate_or_none,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_init_worker,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )

    def _restore(self) -> None:
        path = self.run_folder.last_checkpoint
        tensors, meta, note = load_newest_checkpoint(path, device="cpu")
        if note is not None:
            self.log(f"warning: {note}")
        saved = config_from_dict(meta["config"], source=f"{path} (config)")
        _check_resume_config(saved, self.config, self.log)
        self.data_digest = meta.get("data_fingerprint")
        check_unchanged(self.run_folder.root, self.data_digest, self.config.data)
        if self.data_digest is None:
            self.log("note: this run's checkpoint has no data fingerprint; the data is not checked")
        saved_world = meta["position"].get("world_size", 1)
        if saved_world != self.info.world_size:
            self.log(
                f"note: the run was saved with {saved_world} processes and resumes with "
                f"{self.info.world_size}; the data order differs from an uninterrupted run"
            )
        state = tensors_to_state(tensors, meta["state"])
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        _match_state_layout(self.optimizer)
        self.schedule.load_state_dict(meta["schedule"])
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.position.update({k: meta["position"][k] for k in self.position})
        self.best.update(meta.get("best", {}))
        self.metrics = dict(meta.get("metrics", {}))
        # Losses of the steps since the last logged row: the first row after the resume averages
        # the whole interval, as an uninterrupted run's does.
        self.resumed_window_losses = [float(x) for x in meta.get("log_window", {}).get("losses", [])]
        self.log(f"resumed from {path} at step {self.position['step']} (epoch {self.position['epoch'] + 1})")

    def _prepare_folder(self, resume: bool) -> None:
        run, tc = self.run_folder, self.tc
        if self.info.is_main:
            run.root.mkdir(parents=True, exist_ok=True)
            save_config(self.config, run.config)
            if not resume or not (run.root / FINGERPRINT_FILE).is_file():
                write_listing(run.root / FINGERPRINT_FILE, self.data_listing)
            if resume:
                self.step_log.truncate_after(self.position["step"])
                self.epoch_log.truncate_after(self.position["step"])
            else:
                for path in (run.metrics, run.epochs, run.summary):
                    path.unlink(missing_ok=True)
            if tc.log == "tensorboard":
                self.tb = _tensorboard_writer(run, self.log)
        if not resume:
            self.log(
                f"run {self.config.name}: {len(self.splits.train)} training pairs, "
                f"{len(self.splits.val)} validation pairs"
            )
            for note in self.splits.notes:
                self.log(note)
            self.log(
                f"{self.info.world_size} process(es) on {self.device}, precision {self.amp_dtype or 'fp32'}, "
                f"batch {tc.batch_size} (x{tc.grad_accum} accumulation), {self.steps_per_epoch} steps per "
                f"epoch, {self.total_steps} steps in all"
            )

    # --- checkpoints ----------------------------------------------------------------------------
    def _save(self, kind: str) -> None:
        self._read_losses()  # the position holds the loss sums; never save after a NaN
        if not self.info.is_main:
            return
        position = {**self.position, "world_size": self.info.world_size}
        run = self.run_folder
        fingerprint = {"data_fingerprint": self.data_digest} if self.data_digest else {}
        if self.snapshot.step != position["step"]:
            self.snapshot = _Snapshot(position["step"])
        if kind == "last":
            _save_training_checkpoint(
                run.last_checkpoint,
                self.config,
                self.model,
                self.loss_fn,
                position,
                self.metrics,
                self.optimizer,
                self.schedule,
                self.scaler,
                {
                    "best": self.best,
                    "log_window": {"losses": list(getattr(self, "window", {}).get("losses", []))},
                    **fingerprint,
                },
                snapshot=self.snapshot,
            )
        else:
            _save_training_checkpoint(
                run.best_checkpoint,
                self.config,
                self.model,
                self.loss_fn,
                position,
                self.metrics,
                extra=fingerprint,
                snapshot=self.snapshot,
            )

    def _consider_best(self, results: dict[str, float], train_loss: float) -> None:
        """Save ``best`` when this epoch's value of the run's best metric beats the best so far."""
        metric = self.best["metric"]
        if metric == "val_top1":
            if not results:
                return
            value = 0.5 * (results["val_top1_image_to_lidar"] + results["val_top1_lidar_to_image"])
        else:
            value = results.get("val_loss") if metric == "val_loss" else train_loss
        if value is None or not math.isfinite(value):
            return
        best = self.best.get("value", self.best.get("loss"))  # "loss": runs saved before best_metric
        higher_is_better = metric == "val_top1"
        if best is None or (value > best if higher_is_better else value < best):
            self.best.update(value=value, step=self.position["step"])
            self.best.pop("loss", None)
            self._save("best")

    # --- the loop -------------------------------------------------------------------------------
    def run(self, stop: _StopRequest, on_step: StepCallback | None) -> TrainResult:
        """Train until ``total_steps`` or a stop request; write checkpoints, logs and the summary."""
        tc, position = self.tc, self.position
        bar = _ProgressBar(self.console, self.total_steps, position["step"]) if self.progress else None
        self.start_time = time.perf_counter()
        self.window: dict[str, Any] = {
            "start": self.start_time,
            "pairs": 0,
            "losses": self.resumed_window_losses,
        }
        stopped = "finished"
        self.net.train()
        batches: Iterator[dict[str, torch.Tensor]] | None = None
        try:
            # An epoch whose steps are all done but whose end (validation, checkpoint) is not, as
            # after a stop at its last step, still gets its end.
            while position["step"] < self.total_steps or position["step_in_epoch"] >= self.steps_per_epoch:
                epoch = position["epoch"]
                if batches is None:
                    # One iterator for the rest of the run: the workers prepare the next epoch's
                    # first batches while this one ends (see EpochSampler).
                    per_epoch = self.steps_per_epoch * tc.grad_accum * self.rank_batch
                    self.train_sampler.set_epoch(
                        epoch,
                        start=position["step_in_epoch"] * tc.grad_accum * self.rank_batch,
                        through=-(-self.total_steps // self.steps_per_epoch) - 1,
                        per_epoch=per_epoch,
                    )
                    batches = iter(self.train_loader)
                while (
                    position["step_in_epoch"] < self.steps_per_epoch and position["step"] < self.total_steps
                ):
                    row = self._step(batches, epoch)
                    if bar is not None:
                        bar.update(
                            position["step"],
                            row.get("loss_step"),
                            self.metrics.get("pairs_per_s"),
                            epoch + 1,
                            tc.epochs,
                        )
                    if on_step is not None:
                        on_step(position["step"], row)
                    if tc.checkpoint_every_steps and position["step"] % tc.checkpoint_every_steps == 0:
                        self._save("last")
                    if stop.agreed(self.device):
                        stopped = "interrupted"
                        break
                if stopped == "interrupted":
                    self._save("last")
                    self.log(f"stopped at step {position['step']}; continue with --resume")
                    break
                self._end_epoch(epoch)
        finally:
            if bar is not None:
                bar.close()
            if self.tb is not None:
                self.tb.close()
        return self._finish(stopped)

    def _step(self, batches: Iterator[dict[str, torch.Tensor]], epoch: int) -> dict[str, float]:
        """One optimiser step (``grad_accum`` micro-batches); returns its log row.

        Nothing here waits for the device: the loss stays a device scalar until a log step, a
        save or the epoch end reads it (:meth:`_read_losses`, which also checks it is finite).
        """
        tc, position, device = self.tc, self.position, self.device
        torch.manual_seed(step_seed(tc.seed, position["step"], self.info.rank))
        self.schedule.apply(position["step"])
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        for micro in range(tc.grad_accum):
            batch = next(batches)
            sync = micro == tc.grad_accum - 1 or not self.info.enabled
            with nullcontext() if sync else self.net.no_sync():  # type: ignore[operator]
                image, lidar = model_inputs(self.train_loader, batch, device)
                with _autocast(device, self.amp_dtype):
                    image_emb, lidar_emb = self.net(image, lidar)
                positions = loss_positions(self.loss_fn, batch, device)
                worlds = batch["world"].to(device, non_blocking=True) if positions is not None else None
                loss = self.loss_fn(image_emb.float(), lidar_emb.float(), positions, worlds)
                self.scaler.scale(loss / tc.grad_accum).backward()
            losses.append(loss.detach())
        if hasattr(self.loss_fn, "check_rows"):
            # Training batches are equal on every process by construction (drop_last, equal
            # shares): the first step's check under DDP is enough.
            self.loss_fn.check_rows = False
        if tc.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        position["step"] += 1
        position["step_in_epoch"] += 1
        self.pending_losses.append(torch.stack(losses))
        return self._log_step(epoch)

    def _read_losses(self) -> list[float]:
        """Read the pending step losses from the device (one synchronisation), in step order.

        Adds them to the epoch's sum and the log window, and raises when one is not finite (then
        nothing is saved: the last checkpoint stays the one before the divergence).
        """
        if not self.pending_losses:
            return []
        values = torch.stack(self.pending_losses).cpu().tolist()
        first_step = self.position["step"] - len(values) + 1
        self.pending_losses = []
        position, out = self.position, []
        for offset, micro_losses in enumerate(values):
            step_loss = 0.0
            for value in micro_losses:
                step_loss += value / self.tc.grad_accum
            if not math.isfinite(step_loss):
                raise LiplocError(
                    f"training loss is {step_loss} at step {first_step + offset}; lower the learning "
                    "rates or use train.precision fp32"
                )
            position["epoch_loss_sum"] += step_loss
            position["epoch_loss_count"] += 1
            self.window["losses"].append(step_loss)
            out.append(step_loss)
        self.metrics["loss"] = out[-1]
        return out

    def _log_step(self, epoch: int) -> dict[str, float]:
        step = self.position["step"]
        window = self.window
        window["pairs"] += self.tc.batch_size * self.tc.grad_accum
        row: dict[str, float] = {"step": step, "epoch": epoch + 1}
        for name, group in zip(self.group_names, self.optimizer.param_groups, strict=True):
            row[f"lr_{name}"] = float(group["lr"])
        if step % self.tc.log_every == 0 or step == self.total_steps:
            losses = self._read_losses()
            row["loss_step"] = losses[-1]
            if hasattr(self.loss_fn, "temperature"):
                row["temperature"] = float(self.loss_fn.temperature)
            now = time.perf_counter()
            row["pairs_per_s"] = window["pairs"] / max(now - window["start"], 1e-9)
            row["elapsed_s"] = now - self.start_time
            row["loss"] = sum(window["losses"]) / len(window["losses"])  # mean since the last row
            self.window = {"start": now, "pairs": 0, "losses": []}
            self.metrics["pairs_per_s"] = row["pairs_per_s"]
            if self.info.is_main:
                self.step_log.append(row)
                if self.tb is not None:
                    for key in ("loss", "pairs_per_s", "temperature", *[f"lr_{n}" for n in self.group_names]):
                        if key in row:
                            self.tb.add_scalar(f"train/{key}", row[key], step)
        return row

    def _end_epoch(self, epoch: int) -> None:
        """Validation, plateau schedule, best and last checkpoints, epoch log (also after a
        ``max_steps`` stop mid-epoch, then without a plateau step and keeping the position)."""
        tc, position = self.tc, self.position
        self._read_losses()
        complete = position["step_in_epoch"] >= self.steps_per_epoch
        train_loss = position["epoch_loss_sum"] / max(1, position["epoch_loss_count"])
        due = (epoch + 1) % tc.val_every_epochs == 0 or epoch + 1 == tc.epochs
        results: dict[str, float] = {}
        if self.val_loader is not None and (due or not complete):
            results = validate(self.net, self.loss_fn, self.val_loader, self.device, self.amp_dtype)
        self.metrics.update({"train_loss": train_loss, **results})
        if complete and results and self.schedule.validation_done(results["val_loss"]):
            self.log(f"validation loss did not improve: learning rates x{tc.plateau_factor}")
        self._consider_best(results, train_loss)
        if self.info.is_main:
            row = {"epoch": epoch + 1, "step": position["step"], "train_loss": train_loss, **results}
            row[f"lr_{self.group_names[0]}"] = self.optimizer.param_groups[0]["lr"]
            row["elapsed_s"] = time.perf_counter() - self.start_time
            self.epoch_log.append(row)
            if self.tb is not None:
                for key, value in {"train_loss": train_loss, **results}.items():
                    self.tb.add_scalar(f"epoch/{key}", value, position["step"])
        self.log(_epoch_line(epoch + 1, tc.epochs, position["step"], train_loss, results, complete))
        if complete:
            position.update(epoch=epoch + 1, step_in_epoch=0, epoch_loss_sum=0.0, epoch_loss_count=0)
        self._save("last")

    def _finish(self, stopped: str) -> TrainResult:
        run, best = self.run_folder, self.best
        result = TrainResult(
            run_dir=run.root,
            last_checkpoint=run.last_checkpoint,
            best_checkpoint=run.best_checkpoint if best["step"] is not None else None,
            step=self.position["step"],
            epoch=self.position["epoch"],
            stopped=stopped,
            metrics=dict(self.metrics),
        )
        if self.info.is_main:
            summary = {
                "name": self.config.name,
                "stopped": stopped,
                "step": result.step,
                "epochs_completed": result.epoch,
                "best": best,
                "metrics": self.metrics,
                "train_pairs": len(self.splits.train),
                "val_pairs": len(self.splits.val),
                "splits": self.splits.summary(self.config.data),
                "data_fingerprint": self.data_digest,
                "processes": self.info.world_size,
                "device": str(self.device),
                "seconds": time.perf_counter() - self.start_time,
                "last_checkpoint": str(run.last_checkpoint),
                "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
            }
            atomic_write_text(run.summary, json.dumps(summary, indent=1, default=str) + "\n")
            best_text = "none"
            if best["step"] is not None:
                value = best.get("value", best.get("loss"))
                best_text = f"{best['metric']} {value:.4f} at step {best['step']}"
            self.log(f"done: {result.step} steps ({stopped}); best {best_text}; run folder {run.root}")
        distributed.barrier()
        return result


def _epoch_line(
    epoch: int, epochs: int, step: int, train_loss: float, results: dict[str, float], complete: bool
) -> str:
    head = f"epoch {epoch}/{epochs}" + ("" if complete else " (partial)")
    text = f"{head} step {step}: train loss {train_loss:.4f}"
    if results:
        text += (
            f", val loss {results['val_loss']:.4f}, in-batch top-1 image->LiDAR "
            f"{results['val_top1_image_to_lidar']:.1%}, LiDAR->image {results['val_top1_lidar_to_image']:.1%}"
        )
    return text


class _ProgressBar:
    """rich progress bar of optimiser steps with the loss and pairs/s."""

    def __init__(self, console: Any, total: int, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} pairs/s"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.progress.add_task("train", total=total, completed=done, loss="-", rate="-")
        self.progress.start()

    def update(self, step: int, loss: float | None, rate: float | None, epoch: int, epochs: int) -> None:
        """Show ``step``; ``loss`` is only known at log steps (None: keep the last one shown)."""
        fields = {} if loss is None else {"loss": f"{loss:.4f}"}
        self.progress.update(
            self.task,
            completed=step,
            description=f"epoch {epoch}/{epochs}",
            rate="-" if rate is None else f"{rate:.1f}",
            **fields,
        )

    def close(self) -> None:
        self.progress.stop()


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
