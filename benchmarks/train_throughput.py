"""Training throughput (pairs/s) of the tiny and the ResNet-50 configurations, four ways.

For each config, side by side in one run:

- ``model_only``: the training step's own model work and nothing else: the Trainer's network,
  loss, optimiser, gradient scaler and autocast (both towers forward and backward, the configured
  loss, the optimiser step) on one batch of inputs already normalised on the device. It is part
  of every ``train_step``, so it bounds it: a ``model_only`` below ``train_step`` is noise.
- ``train_step``: the real ``liploc train`` step (:class:`liploc.training.loop.Trainer`: uint8
  inputs normalised and dropped out on the device, channels-last, fused AdamW, per-step seeding,
  losses read at log steps) fed batches already on the device.
- ``full``: the same loop fed by its DataLoader (``--workers`` persistent workers) from a warm
  preprocessing cache: what a user's epoch costs after the first. The drive is short (a few
  batches per epoch), so epoch ends weigh more than in a real run: the loop's one iterator for
  the whole run keeps the workers busy across them; ``full_iterator_per_epoch`` is the same with
  a new iterator per epoch (the code before), for comparison.
- ``loader_per_worker``: the loader alone with one worker, pairs/s it can feed.

The first three are measured interleaved, in ``--rounds`` rounds of ``--steps`` steps each (the
order reversed every other round), so that a machine that slows down or speeds up during the run
(a shared CPU, a GPU's clocks) weighs on all three alike; each is reported as the median of its
rounds with the spread (lowest, highest), and the ratios ``train_step / model_only`` and ``full /
model_only`` (goal: at least 0.9 for both configs) as the median of the per-round ratios with
theirs. Measured one after the other (before), two runs a minute apart gave 0.65 and 0.90, and
model-only, measured first and cold, came out below the train step it is part of. ResNet-50 at
224 x 224 takes seconds per pair on a small CPU: few, small steps there. CUDA too when present.
The load average at the start is printed.

    python benchmarks/train_throughput.py [--steps N] [--rounds R] [--workers W] [--configs tiny,resnet50]

Last line: {"tiny_pairs_per_s": ..., "resnet50_pairs_per_s": ..., "tiny": {...}, "resnet50": {...}, ...}
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from liploc.config import Config, DatasetSplit, load_config
from liploc.datasets import open_dataset
from liploc.synth import SynthOptions, generate_dataset
from liploc.training import distributed
from liploc.training.determinism import determinism
from liploc.training.loop import Trainer
from liploc.training.validation import autocast, loss_positions, model_inputs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


@dataclass
class Spread:
    """Per-round values of one measure: their median, lowest and highest."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def as_dict(self) -> dict[str, object]:
        return {
            "median": round(self.median, 3),
            "low": round(min(self.values), 3),
            "high": round(max(self.values), 3),
            "rounds": [round(v, 3) for v in self.values],
        }

    def __str__(self) -> str:
        return f"{self.median:.2f} ({min(self.values):.2f}-{max(self.values):.2f})"


def pipeline_rates(
    config: Config,
    device: torch.device,
    batch_size: int,
    steps: int,
    warmup: int,
    workers: int,
    work: Path,
    rounds: int,
) -> dict[str, Spread | float]:
    """pairs/s of the model alone, of the real train step on device-resident batches and of the
    full loop from a warm cache, interleaved in ``rounds`` rounds of ``steps`` steps; then of the
    full loop with an iterator per epoch and of the loader alone with one worker (once each)."""
    config = config.model_copy(deep=True)
    config.train.batch_size = batch_size
    config.data.num_workers = workers
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

        # The model's part of a step: the same network, loss, optimiser, scaler and autocast, on
        # inputs made once (normalised, channels-last as the step makes them).
        image, lidar = model_inputs(trainer.train_loader, resident[0], device)
        positions = loss_positions(trainer.loss_fn, resident[0], device)
        worlds = resident[0]["world"].to(device) if positions is not None else None

        def model_step(_: Iterator[dict[str, torch.Tensor]], __: int) -> None:
            trainer.optimizer.zero_grad(set_to_none=True)
            with autocast(device, trainer.amp_dtype):
                image_emb, lidar_emb = trainer.net(image, lidar)
            loss = trainer.loss_fn(image_emb.float(), lidar_emb.float(), positions, worlds)
            trainer.scaler.scale(loss).backward()
            trainer.scaler.step(trainer.optimizer)
            trainer.scaler.update()

        def timed_steps(step, source: Iterator[dict[str, torch.Tensor]], n: int) -> float:  # type: ignore[no-untyped-def]
            _sync(device)
            start = time.perf_counter()
            for _ in range(n):
                step(source, 0)
            trainer._read_losses()  # the loop reads losses at log steps: include one read
            _sync(device)
            return time.perf_counter() - start

        cycle = itertools.cycle(resident)
        batches = spanning_epochs(trainer.train_loader, trainer.train_sampler, batch_size)
        measures = {
            "model_only": (model_step, cycle),
            "train_step": (trainer._step, cycle),
            "full": (trainer._step, batches),
        }
        for step, source in measures.values():
            timed_steps(step, source, warmup)
        samples: dict[str, list[float]] = {name: [] for name in measures}
        for r in range(rounds):
            order = list(measures.items())
            for name, (step, source) in order if r % 2 == 0 else reversed(order):
                samples[name].append(batch_size * steps / timed_steps(step, source, steps))
        del batches  # ends that iterator before the next one starts on the same workers
        rates: dict[str, Spread | float] = {name: Spread(v) for name, v in samples.items()}
        for name in ("train_step", "full"):
            ratios = [a / b for a, b in zip(samples[name], samples["model_only"], strict=True)]
            rates[f"{name}_over_model_only"] = Spread(ratios)

        batches = epochs_of(trainer.train_loader, trainer.train_sampler)
        timed_steps(trainer._step, batches, warmup)
        rates["full_iterator_per_epoch"] = batch_size * steps / timed_steps(trainer._step, batches, steps)

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
    parser.add_argument("--steps", type=int, default=10, help="timed steps of the tiny config, per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each measure")
    parser.add_argument("--configs", default="tiny,resnet50", help="comma-separated: tiny, resnet50")
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
    wanted = set(args.configs.split(","))
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
    runs = [run for run in runs if run[1].split("_")[0] in wanted]  # tiny_speed is a tiny row
    if not runs:
        parser.error(f"--configs {args.configs}: nothing to run (tiny, resnet50)")
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
            rates = pipeline_rates(config, device, batch, steps, warmup, workers, work, args.rounds)
            entry: dict[str, object] = {
                k: v.as_dict() if isinstance(v, Spread) else round(v, 2) for k, v in rates.items()
            }
            entry.update(batch=batch, workers=workers, deterministic=base.train.deterministic)
            results[f"{device_type}_{label}"] = entry
            print(
                f"{device_type} {label:14s} batch {batch:3d}, median (low-high) of {args.rounds} rounds: "
                f"model-only {rates['model_only']}, train step {rates['train_step']}, full pipeline "
                f"({workers} workers, warm cache) {rates['full']} pairs/s; of model-only: train step "
                f"{rates['train_step_over_model_only']}, full {rates['full_over_model_only']} (goal 0.9); "
                f"{rates['full_iterator_per_epoch']:.2f} pairs/s with an iterator per epoch; "
                f"loader alone {rates['loader_per_worker']:.1f} pairs/s per worker",
                flush=True,
            )
    first = {
        label: results.get(f"cuda_{label}", results.get(f"cpu_{label}")) for label in ("tiny", "resnet50")
    }
    headline = {}
    for label, entry in first.items():
        if entry is not None:
            headline[f"{label}_pairs_per_s"] = entry["model_only"]["median"]  # type: ignore[index]
            headline[f"{label}_full_over_model_only"] = entry["full_over_model_only"]["median"]  # type: ignore[index]
    print(
        json.dumps(
            {
                **headline,
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
