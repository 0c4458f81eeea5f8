"""Training throughput (pairs/s) of the tiny and the ResNet-50 configurations, four ways.

For each config, side by side in one run:

- ``model_only``: full optimiser steps (both towers forward and backward, the configured loss,
  AdamW, autocast) on random tensors already on the device: the model's ceiling, the figure
  this benchmark reported before issue 11.
- ``train_step``: the real ``liploc train`` step (:class:`liploc.training.loop.Trainer`: uint8
  inputs normalised and dropped out on the device, channels-last, fused AdamW, per-step seeding,
  losses read at log steps) fed batches already on the device.
- ``full``: the same loop fed by its DataLoader (``--workers`` persistent workers) from a warm
  preprocessing cache: what a user's epoch costs after the first. The drive is short (a few
  batches per epoch), so epoch ends weigh more than in a real run: the loop's one iterator for
  the whole run keeps the workers busy across them; ``full_iterator_per_epoch`` is the same with
  a new iterator per epoch (the code before), for comparison.
- ``loader_per_worker``: the loader alone with one worker, pairs/s it can feed.

Plus ``full / model_only`` (goal: at least 0.9 for both configs). ResNet-50 at 224 x 224 takes
seconds per pair on a small CPU: few, small steps there. CUDA too when present. The machine may
be shared with other jobs: the figures are noisy (the load average at the start is printed).

    python benchmarks/train_throughput.py [--steps N] [--workers W]

Last line: {"tiny_pairs_per_s": ..., "resnet50_pairs_per_s": ..., "tiny": {...}, "resnet50": {...}, ...}
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from liploc.config import Config, DatasetSplit, load_config
from liploc.datasets import open_dataset
from liploc.models import create_model
from liploc.runtime.device import autocast_dtype
from liploc.synth import SynthOptions, generate_dataset
from liploc.training import distributed
from liploc.training.determinism import determinism
from liploc.training.loop import Trainer
from liploc.training.losses import build_loss

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def pairs_per_second(
    config: Config, device: torch.device, batch_size: int, steps: int, warmup: int = 2
) -> float:
    """Pairs per second of ``steps`` timed optimiser steps (after ``warmup`` untimed ones)."""
    tc = config.train
    torch.manual_seed(0)
    model = create_model(config.model.model_copy(update={"pretrained": False})).to(device).train()
    loss_fn = build_loss(config.loss).to(device)
    groups = model.param_groups(tc.lr_head, tc.lr_image_encoder, tc.lr_lidar_encoder, tc.weight_decay)
    optimizer = torch.optim.AdamW([*groups, *loss_fn.param_groups(tc.lr_head)])
    dtype = autocast_dtype(tc.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    h, w = config.data.image_size
    image = torch.randn(batch_size, 3, h, w, device=device)
    lidar = torch.randn(batch_size, config.model.lidar_in_chans, h, w, device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            image_emb, lidar_emb = model(image, lidar)
        loss = loss_fn(image_emb.float(), lidar_emb.float())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch_size * steps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_config(config: Config, data_root: Path, sequence: str, work: Path, device: torch.device) -> Config:
    """``config`` pointed at the synthetic drive, run folder bits in ``work``, no validation."""
    return config.model_copy(
        update={
            "data": config.data.model_copy(
                update={
                    "datasets": [DatasetSplit(layout="auto", root=data_root, train=[sequence])],
                    "val_fraction": 0.0,
                    "cache": True,
                    "cache_dir": work / "cache",
                }
            ),
            "model": config.model.model_copy(update={"pretrained": False}),
            "train": config.train.model_copy(update={"log_every": 10**6, "device": str(device)}),
        }
    )


def epochs_of(loader: DataLoader, sampler) -> Iterator[dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    """Batches of epoch 0, 1, 2, ..., a new loader iterator per epoch (before issue 11: the
    device waits at every epoch start until a worker has built a whole batch)."""
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        yield from loader


def spanning_epochs(loader: DataLoader, sampler, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    """Batches of epoch 0, 1, 2, ... as the training loop draws them: one iterator for the run."""
    per_epoch = len(sampler) // batch_size * batch_size
    sampler.set_epoch(0, through=10**6, per_epoch=per_epoch)
    yield from loader


def pipeline_rates(
    config: Config, device: torch.device, batch_size: int, steps: int, warmup: int, workers: int, work: Path
) -> dict[str, float]:
    """pairs/s of the real train step on device-resident batches, of the full loop from a warm
    cache, and of the loader alone with one worker (each over ``steps`` batches, several epochs
    of the small synthetic drive, so that the loaders' prefetch buffers do not flatter them)."""
    config = config.model_copy(deep=True)
    config.train.batch_size = batch_size
    config.data.num_workers = workers
    rates: dict[str, float] = {}
    with determinism(config.train.deterministic, device):
        trainer = Trainer(
            config, work / "run", False, False, distributed.DistributedInfo(), device, console=None
        )
        trainer.start_time = time.perf_counter()
        trainer.window = {"start": trainer.start_time, "pairs": 0, "losses": []}
        trainer.net.train()
        # Warm the cache: one epoch of preprocessing, kept as device-resident batches.
        trainer.train_sampler.set_epoch(0)
        resident = [{k: v.to(device) for k, v in b.items()} for b in trainer.train_loader]

        def timed_steps(source: Iterator[dict[str, torch.Tensor]], n: int) -> float:
            _sync(device)
            start = time.perf_counter()
            for _ in range(n):
                trainer._step(source, 0)
            trainer._read_losses()  # the loop reads losses at log steps: include one read
            _sync(device)
            return time.perf_counter() - start

        cycle = itertools.cycle(resident)
        timed_steps(cycle, warmup)
        rates["train_step"] = batch_size * steps / timed_steps(cycle, steps)

        batches = spanning_epochs(trainer.train_loader, trainer.train_sampler, batch_size)
        timed_steps(batches, warmup)
        rates["full"] = batch_size * steps / timed_steps(batches, steps)
        del batches  # ends that iterator before the next one starts on the same workers

        batches = epochs_of(trainer.train_loader, trainer.train_sampler)
        timed_steps(batches, warmup)
        rates["full_iterator_per_epoch"] = batch_size * steps / timed_steps(batches, steps)

        del batches
        one = DataLoader(
            trainer.train_loader.dataset,
            batch_size=batch_size,
            sampler=trainer.train_sampler,
            num_workers=1,
            drop_last=True,
            persistent_workers=True,
            prefetch_factor=4,
        )
        start = time.perf_counter()  # worker start-up included: a conservative rate
        count = sum(1 for _ in itertools.islice(epochs_of(one, trainer.train_sampler), steps))
        rates["loader_per_worker"] = batch_size * count / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps of the tiny config")
    parser.add_argument("--resnet50-steps", type=int, default=1, help="timed steps of ResNet-50 (batch 4)")
    parser.add_argument("--frames", type=int, default=40, help="frames of the small synthetic drive")
    parser.add_argument("--workers", type=int, default=2, help="loader workers of the full pipeline")
    parser.add_argument(
        "--device",
        choices=("all", "cpu", "cuda"),
        default="all",
        help="cpu, cuda, or all (cpu, and cuda where torch sees a device)",
    )
    parser.add_argument("--cuda-workers", type=int, default=min(12, os.cpu_count() or 1))
    parser.add_argument("--cuda-steps", type=int, default=30, help="timed steps of each CUDA config")
    parser.add_argument(
        "--speed",
        action="store_true",
        help="CUDA rows also with train.deterministic=false (cuDNN benchmark), the speed-run setting",
    )
    args = parser.parse_args()

    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start (shared machine: noisy)")
    tiny = load_config(CONFIGS / "tiny.yaml")
    resnet50 = load_config(CONFIGS / "kitti_resnet50.yaml")
    results: dict[str, object] = {}

    runs: list[tuple[str, str, Config, int, int, int, int]] = []
    if args.device in ("all", "cpu"):
        runs += [
            ("cpu", "tiny", tiny, tiny.train.batch_size, args.steps, 2, args.workers),
            ("cpu", "resnet50", resnet50, 4, args.resnet50_steps, 1, args.workers),
        ]
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.device == "cuda" or (args.device == "all" and torch.cuda.is_available()):
        speed = resnet50.model_copy(deep=True)
        speed.train.deterministic = False
        tiny_speed = tiny.model_copy(deep=True)
        tiny_speed.train.deterministic = False
        runs += [
            ("cuda", "tiny", tiny, tiny.train.batch_size, 5 * args.cuda_steps, 5, args.cuda_workers),
            ("cuda", "resnet50", resnet50, 128, args.cuda_steps, 5, args.cuda_workers),
        ]
        if args.speed:
            # The tiny model is launch-bound on a GPU: deterministic mode weighs most there.
            runs.append(
                (
                    "cuda",
                    "tiny_speed",
                    tiny_speed,
                    tiny.train.batch_size,
                    5 * args.cuda_steps,
                    5,
                    args.cuda_workers,
                )
            )
            runs.append(("cuda", "resnet50_speed", speed, 128, args.cuda_steps, 5, args.cuda_workers))
    with tempfile.TemporaryDirectory() as tmp:
        # Steps run over several epochs of this drive (as training does), so it can stay small.
        root = Path(tmp) / "synth"
        frames = max(args.frames, 2 * max(run[3] for run in runs))  # at least two batches per epoch
        generate_dataset(root, SynthOptions(town_seed=1, drives=1, frames=frames, size="small"), reuse=False)
        sequence = open_dataset(root, "auto").sequences()[0]
        for device_type, label, base, batch, steps, warmup, workers in runs:
            device = torch.device(device_type)
            work = Path(tempfile.mkdtemp(dir=tmp))
            config = bench_config(base, root, sequence, work, device)
            model_only = pairs_per_second(config, device, batch, steps, warmup)
            rates = pipeline_rates(config, device, batch, steps, warmup, workers, work)
            entry = {"model_only": round(model_only, 2), **{k: round(v, 2) for k, v in rates.items()}}
            entry["full_over_model_only"] = round(rates["full"] / model_only, 3)
            entry["train_step_over_model_only"] = round(rates["train_step"] / model_only, 3)
            entry["batch"] = batch
            entry["workers"] = workers
            entry["deterministic"] = base.train.deterministic
            results[f"{device_type}_{label}"] = entry
            print(
                f"{device_type} {label:14s} batch {batch:3d}: model-only {model_only:8.2f}, train step "
                f"{rates['train_step']:8.2f}, full pipeline ({workers} workers, warm cache) "
                f"{rates['full']:8.2f} pairs/s = {entry['full_over_model_only']:.2f} of model-only "
                f"(goal 0.9; {rates['full_iterator_per_epoch']:.2f} with an iterator per epoch); "
                f"loader alone {rates['loader_per_worker']:.1f} pairs/s per worker",
                flush=True,
            )
    first = {
        label: results.get(f"cuda_{label}", results.get(f"cpu_{label}")) for label in ("tiny", "resnet50")
    }
    print(
        json.dumps(
            {
                "tiny_pairs_per_s": first["tiny"]["model_only"],  # type: ignore[index]
                "resnet50_pairs_per_s": first["resnet50"]["model_only"],  # type: ignore[index]
                "tiny_full_over_model_only": first["tiny"]["full_over_model_only"],  # type: ignore[index]
                "resnet50_full_over_model_only": first["resnet50"]["full_over_model_only"],  # type: ignore[index]
                "device": torch.cuda.get_device_name()
                if "cuda_tiny" in results
                else f"cpu ({torch.get_num_threads()} threads)",
                "load_average": round(os.getloadavg()[0], 1),
                **results,
            }
        )
    )


if __name__ == "__main__":
    main()
