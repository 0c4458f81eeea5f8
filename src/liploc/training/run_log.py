"""What a training run reports: ``train.log`` and console lines, the CSV logs (``metrics.csv`` per
logged step, ``epochs.csv`` per epoch), TensorBoard scalars and the progress bar (rank 0 only)."""

from __future__ import annotations

import time
from typing import Any

from liploc.atomic import append_text
from liploc.runtime.run_folder import CsvLog, RunFolder

VAL_METRICS = ("val_loss", "val_top1_image_to_lidar", "val_top1_lidar_to_image")
"""Columns of the validation results in ``epochs.csv``."""


class RunLog:
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


BRIDGE_VAL_METRICS = ("val_depth_loss", "val_abs_rel", "val_rmse", "val_delta1")
"""Further validation columns of geometry-bridge runs: the depth loss and the depth's AbsRel,
RMSE (metres) and delta < 1.25 against the held-out scans."""


def csv_logs(run: RunFolder, group_names: list[str], bridge: bool = False) -> tuple[CsvLog, CsvLog]:
    """The step log (``metrics.csv``) and the epoch log (``epochs.csv``) of ``run``, with a
    learning-rate column per parameter group (the epoch log: the first group's); a geometry-bridge
    run (``bridge``) also logs its depth loss and validation depth metrics."""
    lr_columns = [f"lr_{n}" for n in group_names]
    depth = ["depth_loss"] if bridge else []
    step_columns = ["step", "epoch", "loss", *depth, *lr_columns, "temperature", "pairs_per_s", "elapsed_s"]
    val = [*VAL_METRICS, *(BRIDGE_VAL_METRICS if bridge else ())]
    epoch_columns = ["epoch", "step", "train_loss", *val, lr_columns[0], "elapsed_s"]
    return CsvLog(run.metrics, step_columns), CsvLog(run.epochs, epoch_columns)


def tensorboard_writer(run: RunFolder, log: RunLog) -> Any | None:
    """A TensorBoard writer into the run's folder, or None (with a note) without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log(
            "train.log is set to tensorboard but the tensorboard package is not installed "
            "(pip install tensorboard); writing CSV logs only"
        )
        return None
    return SummaryWriter(log_dir=str(run.tensorboard))


def epoch_line(
    epoch: int, epochs: int, step: int, train_loss: float, results: dict[str, float], complete: bool
) -> str:
    """The log line of an epoch's end: train loss and, when validated, the validation results."""
    head = f"epoch {epoch}/{epochs}" + ("" if complete else " (partial)")
    text = f"{head} step {step}: train loss {train_loss:.4f}"
    if results:
        text += (
            f", val loss {results['val_loss']:.4f}, in-batch top-1 image->LiDAR "
            f"{results['val_top1_image_to_lidar']:.1%}, LiDAR->image {results['val_top1_lidar_to_image']:.1%}"
        )
    if "val_abs_rel" in results:
        text += f", depth AbsRel {results['val_abs_rel']:.3f} RMSE {results['val_rmse']:.2f} m"
    return text


class ProgressBar:
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
