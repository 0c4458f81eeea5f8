"""The training loop: epochs of optimiser steps, validation at epoch ends, checkpoints, logs and
the summary (:class:`Trainer`; its state is set up by :class:`~liploc.training.run_setup.RunSetup`).

Nothing in a step waits for the device: losses stay device scalars until a log step, a save or
the epoch end reads them. Every process runs the same steps; only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from liploc.atomic import atomic_write_text
from liploc.errors import LiplocError
from liploc.models.input_normalization import normalization_record
from liploc.training import distributed
from liploc.training.checkpointing import Snapshot, save_training_checkpoint
from liploc.training.determinism import step_seed
from liploc.training.losses import bridge_depth_loss
from liploc.training.run_log import ProgressBar, epoch_line
from liploc.training.run_setup import RunSetup
from liploc.training.stop_request import StopRequest
from liploc.training.validation import autocast, loss_positions, model_extras, model_inputs, validate

StepCallback = Callable[[int, dict[str, float]], None]


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


class Trainer(RunSetup):
    """One training run; :meth:`run` is the loop."""

    # --- the loop -------------------------------------------------------------------------------
    def run(self, stop: StopRequest, on_step: StepCallback | None) -> TrainResult:
        """Train until ``total_steps`` or a stop request; write checkpoints, logs and the summary."""
        tc, position = self.tc, self.position
        bar = ProgressBar(self.console, self.total_steps, position["step"]) if self.progress else None
        self.start_time = time.perf_counter()
        self.window: dict[str, Any] = {
            "start": self.start_time,
            "pairs": 0,
            "losses": self.resumed_window_losses,
            "depth_losses": self.resumed_window_depth,
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
        losses, depth_losses = [], []
        for micro in range(tc.grad_accum):
            batch = next(batches)
            sync = micro == tc.grad_accum - 1 or not self.info.enabled
            with nullcontext() if sync else self.net.no_sync():  # type: ignore[operator]
                image, lidar = model_inputs(self.train_loader, batch, device)
                with autocast(device, self.amp_dtype):
                    out = self.net(image, lidar, **model_extras(self.train_loader, batch, device))
                image_emb, lidar_emb = out[0], out[1]
                positions = loss_positions(self.loss_fn, batch, device)
                worlds = batch["world"].to(device, non_blocking=True) if positions is not None else None
                loss = self.loss_fn(image_emb.float(), lidar_emb.float(), positions, worlds)
                logged = loss.detach()
                if self.bridge is not None:
                    # The geometry bridge: depth supervised by the scan, beside the contrastive loss.
                    target = batch["depth"].to(device, non_blocking=True)
                    depth_loss = bridge_depth_loss(out[2], target, self.bridge)
                    loss = loss + self.bridge.depth_weight * depth_loss
                    # Logged over the global batch, as the contrastive loss is (the same on every
                    # process); each process's gradient is its share, which DDP averages.
                    depth_losses.append(distributed.all_reduce_mean(depth_loss.detach()))
                    logged = logged + self.bridge.depth_weight * depth_losses[-1]
                self.scaler.scale(loss / tc.grad_accum).backward()
            losses.append(logged)
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
        if depth_losses:
            self.pending_depth.append(torch.stack(depth_losses))
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
        if self.pending_depth:
            for micro_depth in torch.stack(self.pending_depth).cpu().tolist():
                self.window["depth_losses"].append(sum(micro_depth) / len(micro_depth))
            self.pending_depth = []
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
            if window["depth_losses"]:
                row["depth_loss"] = sum(window["depth_losses"]) / len(window["depth_losses"])
            self.window = {"start": now, "pairs": 0, "losses": [], "depth_losses": []}
            self.metrics["pairs_per_s"] = row["pairs_per_s"]
            if self.info.is_main:
                self.step_log.append(row)
                if self.tb is not None:
                    names = (
                        "loss",
                        "depth_loss",
                        "pairs_per_s",
                        "temperature",
                        *[f"lr_{n}" for n in self.group_names],
                    )
                    for key in names:
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
        self.log(epoch_line(epoch + 1, tc.epochs, position["step"], train_loss, results, complete))
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
                "input_normalization": normalization_record(self.config.data, self.config.model),
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

    # --- checkpoints ----------------------------------------------------------------------------
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

    def _save(self, kind: str) -> None:
        self._read_losses()  # the position holds the loss sums; never save after a NaN
        if not self.info.is_main:
            return
        position = {**self.position, "world_size": self.info.world_size}
        run = self.run_folder
        fingerprint = {"data_fingerprint": self.data_digest} if self.data_digest else {}
        if self.snapshot.step != position["step"]:
            self.snapshot = Snapshot(position["step"])
        if kind == "last":
            save_training_checkpoint(
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
                    "log_window": {
                        "losses": list(getattr(self, "window", {}).get("losses", [])),
                        **(
                            {"depth_losses": list(self.window.get("depth_losses", []))}
                            if self.bridge is not None and hasattr(self, "window")
                            else {}
                        ),
                    },
                    **fingerprint,
                },
                snapshot=self.snapshot,
            )
        else:
            save_training_checkpoint(
                run.best_checkpoint,
                self.config,
                self.model,
                self.loss_fn,
                position,
                self.metrics,
                extra=fingerprint,
                snapshot=self.snapshot,
            )
