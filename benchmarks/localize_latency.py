"""Latency of localizing one camera image with the tiny model: resident Localizer and cold start.

Workload: a map of full-size synthetic KITTI frames (``liploc synth``, 1241 x 376 images), the
tiny model (configs/tiny.yaml, untrained: latency does not depend on the weights). Measured in
one run:

- ``localize``: p50 / p99 of ``Localizer.localize([image])`` (decode, resize, normalise, forward,
  search), image file and already-decoded array;
- ``forward``: p50 / p99 of the camera tower's forward alone on a model-ready (1, 3, H, W) tensor;
- ``overhead``: localize minus forward (goal: at most 5 ms for an array query);
- ``cold start``: wall and CPU seconds of ``liploc localize MAP IMAGE`` in a new process (goal:
  at most 3 s), next to ``python -c "import torch"`` and ``import timm`` in new processes (the
  floor liploc cannot go below).

The machine may be shared with other jobs: wall times are noisy (the load average is printed);
CPU seconds are less so.

    python benchmarks/localize_latency.py [--repeats 200]

Last line: {"localize_p50_ms": ..., "localize_p99_ms": ..., "forward_p50_ms": ..., "overhead_p50_ms": ...,
"cold_start_s": ..., ...}
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from liploc.config import load_config
from liploc.datasets import load_image, open_dataset
from liploc.models import create_model
from liploc.retrieval.embedding import embed_frames
from liploc.retrieval.lidar_map import LidarMap
from liploc.retrieval.localize import MODEL_DIR, Localizer
from liploc.synth import SynthOptions, generate_dataset
from liploc.training.losses import build_loss
from liploc.training.train import _save_training_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LIPLOC = Path(sys.executable).with_name("liploc")


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def repeat(fn, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def new_process(command: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``command`` in a new process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def build_tiny_map(root: Path, out: Path) -> Path:
    config = load_config(CONFIGS / "tiny.yaml")
    torch.manual_seed(0)
    model = create_model(config.model).eval()
    reader = open_dataset(root, "auto")
    frames = reader.frames(reader.sequences()[0])
    emb = embed_frames(model, frames, config, "lidar", device=torch.device("cpu"), num_workers=0)
    LidarMap.build(
        emb,
        np.stack([f.pose for f in frames]),
        [(f.sequence, f.index) for f in frames],
        model.fingerprint(),
        {},
    ).save(out)
    (out / MODEL_DIR).mkdir()
    position = {"step": 0, "epoch": 0, "step_in_epoch": 0, "epoch_loss_sum": 0.0, "epoch_loss_count": 0}
    _save_training_checkpoint(
        out / MODEL_DIR / "model.safetensors", config, model, build_loss(config.loss), position, {}
    )
    return frames[len(frames) // 2].image_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--frames", type=int, default=12, help="synthetic frames in the map")
    parser.add_argument("--cold-starts", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start (shared machine: noisy)")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        generate_dataset(
            root, SynthOptions(town_seed=1, drives=1, frames=args.frames, size="kitti"), reuse=False
        )
        map_dir = Path(tmp) / "map"
        image = build_tiny_map(root, map_dir)

        loc = Localizer.open(map_dir, device="cpu")
        decoded = load_image(image)
        x = loc.embedder.transform.on_device(  # type: ignore[union-attr]
            torch.from_numpy(loc.preprocess(decoded))[None], None, torch.device("cpu")
        ).contiguous(memory_format=torch.channels_last)

        def forward() -> None:
            with torch.inference_mode():
                loc.model.encode_image(x)  # type: ignore[operator]

        for _ in range(10):  # warm-up: allocator, oneDNN primitives
            loc.localize([image], k=5)
            forward()
        # Interleaved so that both see the same machine load.
        t_file, t_array, t_forward = [], [], []
        for _ in range(args.repeats):
            t_file += repeat(lambda: loc.localize([image], k=5), 1)
            t_array += repeat(lambda: loc.localize([decoded], k=5), 1)
            t_forward += repeat(forward, 1)
        file_p50, file_p99 = percentiles(t_file)
        array_p50, array_p99 = percentiles(t_array)
        fwd_p50, fwd_p99 = percentiles(t_forward)

        torch_wall, torch_cpu = new_process([sys.executable, "-c", "import torch"])
        timm_wall, timm_cpu = new_process([sys.executable, "-c", "import timm"])
        colds = [
            new_process([str(LIPLOC), "localize", str(map_dir), str(image), "-k", "5"])
            for _ in range(args.cold_starts)
        ]
    cold_wall = float(np.median([c[0] for c in colds]))
    cold_cpu = float(np.median([c[1] for c in colds]))

    print(f"localize, image file:     p50 {file_p50:7.2f} ms  p99 {file_p99:7.2f} ms")
    print(f"localize, decoded array:  p50 {array_p50:7.2f} ms  p99 {array_p99:7.2f} ms")
    print(f"camera tower forward:     p50 {fwd_p50:7.2f} ms  p99 {fwd_p99:7.2f} ms")
    print(
        f"overhead beyond forward (p50): {array_p50 - fwd_p50:.2f} ms for an array (goal <= 5 ms), "
        f"{file_p50 - fwd_p50:.2f} ms for a file (PNG decode of "
        f"{decoded.shape[1]}x{decoded.shape[0]} included)"
    )
    print(
        f"cold start of `liploc localize` (median of {args.cold_starts}): {cold_wall:.2f} s wall, "
        f"{cold_cpu:.2f} s CPU "
        f"(goal <= 3 s); floor: `import torch` {torch_wall:.2f} s wall / {torch_cpu:.2f} s CPU, "
        f"`import timm` {timm_wall:.2f} s wall / {timm_cpu:.2f} s CPU"
    )
    print(
        json.dumps(
            {
                "localize_p50_ms": round(array_p50, 3),
                "localize_p99_ms": round(array_p99, 3),
                "forward_p50_ms": round(fwd_p50, 3),
                "forward_p99_ms": round(fwd_p99, 3),
                "overhead_p50_ms": round(array_p50 - fwd_p50, 3),
                "localize_file_p50_ms": round(file_p50, 3),
                "localize_file_p99_ms": round(file_p99, 3),
                "overhead_file_p50_ms": round(file_p50 - fwd_p50, 3),
                "cold_start_s": round(cold_wall, 3),
                "cold_start_cpu_s": round(cold_cpu, 3),
                "import_torch_s": round(torch_wall, 3),
                "import_timm_s": round(timm_wall, 3),
                "load_average": round(os.getloadavg()[0], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
