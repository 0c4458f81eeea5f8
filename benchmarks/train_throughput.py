"""Training throughput (pairs/s) of the tiny and the ResNet-50 configurations.

Times full optimiser steps (both towers forward and backward, the configured loss, AdamW with the
per-module learning rates, the configured autocast) on random input tensors of each config's
input size, so the figure is the model's speed without data loading. CPU always; CUDA too when
present (then the headline figures are CUDA's).

    python benchmarks/train_throughput.py [--steps N]

Last line: {"tiny_pairs_per_s": ..., "resnet50_pairs_per_s": ..., "device": ..., ...}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from liploc.config import Config, load_config
from liploc.models import create_model
from liploc.training.losses import build_loss
from liploc.training.train import autocast_dtype

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps of the tiny config")
    args = parser.parse_args()

    tiny = load_config(CONFIGS / "tiny.yaml")
    resnet50 = load_config(CONFIGS / "kitti_resnet50.yaml")
    results: dict[str, float | str] = {}

    cpu = torch.device("cpu")
    cpu_name = f"cpu ({torch.get_num_threads()} threads)"
    # ResNet-50 at 224 x 224 takes seconds per pair on a small CPU: fewer, smaller steps.
    cpu_runs = [("tiny", tiny, tiny.train.batch_size, args.steps, 2), ("resnet50", resnet50, 8, 2, 1)]
    for label, config, batch, steps, warmup in cpu_runs:
        rate = pairs_per_second(config, cpu, batch, steps, warmup)
        results[f"cpu_{label}_pairs_per_s"] = round(rate, 2)
        print(f"{cpu_name}: {label:8s} batch {batch:3d}: {rate:8.2f} pairs/s", flush=True)
    # Tiny models run many small ops; on a machine other processes keep busy, one thread can be
    # much faster than several (each op waits for every thread to get a core).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rate = pairs_per_second(tiny, cpu, tiny.train.batch_size, args.steps)
    torch.set_num_threads(threads)
    results["cpu_1thread_tiny_pairs_per_s"] = round(rate, 2)
    print(f"cpu (1 thread): tiny     batch {tiny.train.batch_size:3d}: {rate:8.2f} pairs/s", flush=True)

    device_name = cpu_name
    headline = {k: results[f"cpu_{k}_pairs_per_s"] for k in ("tiny", "resnet50")}
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        device_name = f"cuda ({torch.cuda.get_device_name(gpu)})"
        for label, config, steps in [("tiny", tiny, 50), ("resnet50", resnet50, 20)]:
            batch = config.train.batch_size
            rate = pairs_per_second(config, gpu, batch, steps, warmup=3)
            results[f"cuda_{label}_pairs_per_s"] = round(rate, 2)
            headline[label] = round(rate, 2)
            print(f"{device_name}: {label:8s} batch {batch:3d}: {rate:8.2f} pairs/s", flush=True)

    epoch_pairs = 20000  # about one KITTI training epoch (00-07 and 11-21 at full rate: ~23k pairs)
    print(
        f"ResNet-50 on {device_name}: one epoch of ~{epoch_pairs} pairs takes about "
        f"{epoch_pairs / headline['resnet50'] / 3600:.1f} h of model time; the tiny config trains "
        f"1000 pairs in {1000 / headline['tiny']:.1f} s",
        flush=True,
    )
    print(
        json.dumps(
            {
                "tiny_pairs_per_s": headline["tiny"],
                "resnet50_pairs_per_s": headline["resnet50"],
                "device": device_name,
                **results,
            }
        )
    )


if __name__ == "__main__":
    main()
