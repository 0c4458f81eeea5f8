"""Training checkpoints: what a save holds (weights, optimiser, schedule, position, metrics), the
per-step snapshot shared by the best and last saves, and the checks before a resume.

A checkpoint only needs the weights, the optimiser and schedule states, and the position (epoch
and step within it): everything random is a function of the seed and the position
(see :mod:`liploc.training.determinism`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from liploc.config import Config, config_from_dict
from liploc.errors import ConfigError
from liploc.runtime.checkpoint import (
    load_newest_checkpoint,
    save_checkpoint,
    state_to_tensors,
    strip_prefix,
    tensors_to_state,
)
from liploc.runtime.run_folder import MODEL_PREFIX, RunFolder
from liploc.training.data_fingerprint import check_unchanged
from liploc.training.distributed import unwrap

if TYPE_CHECKING:
    from liploc.training.run_log import RunLog
    from liploc.training.schedule import LrSchedule

RESUME_MUST_MATCH = ("model", "loss", "projection")
"""Config sections a resumed run may not change (the weights or the inputs would not fit)."""


def save_training_checkpoint(
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
    snapshot: Snapshot | None = None,
) -> None:
    """Weights (+ optimiser state when given) as safetensors; config, position, metrics as JSON.

    ``snapshot`` holds the CPU copies and fingerprint of this step's tensors, shared by the best
    and last saves of one step, so that each tensor is copied off the device and hashed once.
    """
    state: dict[str, Any] = {"model": unwrap(model).state_dict(), "loss": loss_fn.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    tensors, skeleton = state_to_tensors(state)
    snapshot = (
        snapshot if snapshot is not None and snapshot.step == position["step"] else Snapshot(position["step"])
    )
    tensors = snapshot.on_cpu(tensors)
    metadata: dict[str, Any] = {
        "config": config.model_dump(mode="json"),
        "step": position["step"],
        "position": position,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
        "model_fingerprint": snapshot.fingerprint(unwrap(model), tensors),
        "state": skeleton,
        "torch_version": torch.__version__,
    }
    if schedule is not None:
        metadata["schedule"] = schedule.state_dict()
    if scaler is not None:
        metadata["scaler"] = scaler.state_dict()
    metadata.update(extra or {})
    save_checkpoint(path, tensors, metadata)


class Snapshot:
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


def check_resume_config(saved: Config, config: Config, log: RunLog) -> None:
    """Refuse a resume whose model, loss or input differ from the checkpoint's; log the other
    changed settings."""
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


def read_resume_checkpoint(
    run: RunFolder, config: Config, world_size: int, log: RunLog
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state (nested, as saved) and metadata of the run's last checkpoint (the one before it
    when it is damaged), after checking that ``config`` and the data still fit it."""
    path = run.last_checkpoint
    tensors, meta, note = load_newest_checkpoint(path, device="cpu")
    if note is not None:
        log(f"warning: {note}")
    saved = config_from_dict(meta["config"], source=f"{path} (config)")
    check_resume_config(saved, config, log)
    data_digest = meta.get("data_fingerprint")
    check_unchanged(run.root, data_digest, config.data)
    if data_digest is None:
        log("note: this run's checkpoint has no data fingerprint; the data is not checked")
    saved_world = meta["position"].get("world_size", 1)
    if saved_world != world_size:
        log(
            f"note: the run was saved with {saved_world} processes and resumes with "
            f"{world_size}; the data order differs from an uninterrupted run"
        )
    return tensors_to_state(tensors, meta["state"]), meta
