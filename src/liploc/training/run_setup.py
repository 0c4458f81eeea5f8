"""Set-up of a training run, in named steps: console and log, checks, data, model and loss,
optimiser and schedule, position (or the resumed one), the DDP wrapper and the run folder.

:class:`RunSetup` holds the state of one run; :class:`liploc.training.loop.Trainer` adds the loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from liploc.config import Config, save_config
from liploc.errors import ConfigError, DataError
from liploc.runtime.device import autocast_dtype
from liploc.runtime.run_folder import RunFolder
from liploc.training import distributed
from liploc.training.checkpointing import Snapshot, read_resume_checkpoint
from liploc.training.data_fingerprint import FILENAME as FINGERPRINT_FILE
from liploc.training.data_fingerprint import digest, write_listing
from liploc.training.loaders import training_data
from liploc.training.run_log import RunLog, csv_logs, tensorboard_writer
from liploc.training.schedule import LrSchedule, build_optimizer, match_state_layout


def _lidar_channels(config: Config) -> int:
    if config.data.lidar_input == "camera_depth":
        return 3
    from liploc.lidar.range_image import lidar_input_channels

    return lidar_input_channels(config.projection)


class RunSetup:
    """State of one training run, set up by :meth:`__init__` step by step."""

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
        self.config, self.tc, self.info, self.device = config, config.train, info, device
        self.run_folder = RunFolder(out_dir)
        self._open_console(console, progress)
        self._check(resume)
        self.amp_dtype = autocast_dtype(self.tc.precision, device)
        self.rank_batch = self.tc.batch_size // info.world_size
        self._set_up_data(out_dir)
        # Model, loss, optimiser: identical initial weights on every process.
        self._set_up_model()
        self._set_up_optimizer()
        self._set_up_position()
        if resume:
            self._restore()
        # A run from before fingerprints gets one from here on.
        self.data_digest = self.data_digest or digest(self.data_listing)
        self._set_up_net()
        self.pending_depth: list[torch.Tensor] = []
        """Depth losses of the geometry bridge's steps, read with :attr:`pending_losses`."""
        self.pending_losses: list[torch.Tensor] = []
        """Step losses (device scalars, one per micro-batch) not yet read: read at log steps,
        before saves and at epoch ends, so that steps never wait for the device."""
        self.bridge = config.model.bridge if config.model.method == "bridge" else None
        """The geometry bridge's settings (depth loss), None for appearance runs."""
        self.step_log, self.epoch_log = csv_logs(self.run_folder, self.group_names, self.bridge is not None)
        self.tb = None
        self._prepare_folder(resume)

    # --- set-up ---------------------------------------------------------------------------------
    def _open_console(self, console: Any | None, progress: bool) -> None:
        """Console, progress bar and ``train.log`` lines on rank 0 (a console for the bar when
        none is given)."""
        self.console = console if self.info.is_main else None
        if progress and self.info.is_main and console is None:
            from rich.console import Console

            self.console = Console()
        self.progress = progress and self.info.is_main
        self.log = RunLog(self.run_folder, self.info.is_main, self.console)

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

    def _set_up_data(self, out_dir: Path) -> None:
        """Splits and loaders; steps per epoch and in all."""
        tc = self.tc
        data = training_data(self.config, self.info, self.device, self.log, out_dir)
        self.splits, self.data_listing = data.splits, data.listing
        self.train_sampler, self.train_loader = data.train_sampler, data.train_loader
        self.val_loader = data.val_loader
        self.steps_per_epoch = len(self.train_sampler) // self.rank_batch // tc.grad_accum
        self.total_steps = tc.epochs * self.steps_per_epoch
        if tc.max_steps is not None:
            self.total_steps = min(self.total_steps, tc.max_steps)

    def _set_up_model(self) -> None:
        """The model (from the seed: the same on every process) and the loss on the device."""
        from liploc.models import create_model
        from liploc.training.losses import build_loss

        tc, device = self.tc, self.device
        torch.manual_seed(tc.seed)
        self.model = create_model(self.config.model).to(device)
        if tc.sync_batchnorm:
            if not self.info.enabled:
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
        self.loss_fn = build_loss(self.config.loss).to(device)

    def _set_up_optimizer(self) -> None:
        """AdamW over the per-module groups, the learning-rate schedule and the fp16 scaler."""
        tc = self.tc
        groups = [
            *self.model.param_groups(tc.lr_head, tc.lr_image_encoder, tc.lr_lidar_encoder, tc.weight_decay),
            *self.loss_fn.param_groups(tc.lr_head),
        ]
        if tc.encoder_weight_decay is not None:
            for group in groups:
                if group.get("name") in ("image_encoder", "lidar_encoder"):
                    group["weight_decay"] = tc.encoder_weight_decay
        self.optimizer = build_optimizer(groups, tc, self.device)
        self.group_names = [g.get("name", f"group{i}") for i, g in enumerate(self.optimizer.param_groups)]
        self.schedule = LrSchedule(self.optimizer, tc, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def _set_up_position(self) -> None:
        """The position in training, the best checkpoint so far and the metrics of a new run."""
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
            "metric": self.tc.best_metric if self.val_loader is not None else "train_loss",
        }
        self.metrics: dict[str, float] = {}
        self.data_digest: str | None = None
        self.resumed_window_losses: list[float] = []
        self.resumed_window_depth: list[float] = []
        self.snapshot = Snapshot(-1)

    def _restore(self) -> None:
        """Weights, optimiser, schedule, position and logs' state from the last checkpoint."""
        state, meta = read_resume_checkpoint(self.run_folder, self.config, self.info.world_size, self.log)
        self.data_digest = meta.get("data_fingerprint")
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        match_state_layout(self.optimizer)
        self.schedule.load_state_dict(meta["schedule"])
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.position.update({k: meta["position"][k] for k in self.position})
        self.best.update(meta.get("best", {}))
        self.metrics = dict(meta.get("metrics", {}))
        # Losses of the steps since the last logged row: the first row after the resume averages
        # the whole interval, as an uninterrupted run's does.
        self.resumed_window_losses = [float(x) for x in meta.get("log_window", {}).get("losses", [])]
        self.resumed_window_depth = [float(x) for x in meta.get("log_window", {}).get("depth_losses", [])]
        path = self.run_folder.last_checkpoint
        self.log(f"resumed from {path} at step {self.position['step']} (epoch {self.position['epoch'] + 1})")

    def _set_up_net(self) -> None:
        """What the steps call: the model, compiled in place when asked, under DDP when several
        processes take part."""
        if self.tc.compile:
            # In place (nn.Module.compile): the state_dict keys, so checkpoints, stay the same.
            self.model.image_encoder.compile()
            if self.model.lidar_encoder is not None:  # a bridge's bev_only model has none
                self.model.lidar_encoder.compile()
        self.net: nn.Module = self.model
        if self.info.enabled:
            self.net = distributed.wrap_distributed(self.model, self.tc, self.device)

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
                self.tb = tensorboard_writer(run, self.log)
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
