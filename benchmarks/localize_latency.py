"""Latency of localizing one camera image with the tiny model: resident Localizer and cold start.

Workload: a map of full-size synthetic KITTI frames (``liploc synth``, 1241 x 376 images), the
tiny model (configs/tiny.yaml, untrained: latency does not depend on the weights). Measured in
one run:

- ``localize``: p50 / p99 of ``Localizer.localize([image])`` (decode, resize, normalise, forward,
  search), image file and already-decoded array;
- ``forward``: p50 / p99 of the camera tower's forward alone on a model-ready (1, 3, H, W) tensor;
- ``overhead``: localize minus forward (goal: at most 5 ms for an array query), in wall time
  (p50) and in CPU time per call (robust to other jobs on the machine);
- ``cold start``: wall and CPU seconds of ``liploc localize MAP IMAGE`` in a new process (goal:
  at most 3 s): on the map's ONNX export (what ``map build`` writes and ``--backend auto`` takes),
  and with ``--backend torch``, next to ``python -c "import torch"`` and ``import timm`` in new
  processes (the floor of the torch backend).

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
from liploc.localization.localize import Localizer, build_map
from liploc.models import create_model
from liploc.synth import SynthOptions, generate_dataset
from liploc.training.checkpointing import save_training_checkpoint
from liploc.training.losses import build_loss

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
    """A map of the drive's scans made as `liploc map build` makes it (with the camera tower's
    ONNX export, which `liploc localize` uses) from an untrained tiny model; returns a query."""
    config = load_config(CONFIGS / "tiny.yaml")
    torch.manual_seed(0)
    model = create_model(config.model).eval()
    checkpoint = out.parent / "tiny.safetensors"
    position = {"step": 0, "epoch": 0, "step_in_epoch": 0, "epoch_loss_sum": 0.0, "epoch_loss_count": 0}
    save_training_checkpoint(checkpoint, config, model, build_loss(config.loss), position, {})
    sequence = open_dataset(root, "auto").sequences()[0]
    build_map(checkpoint, root, [sequence], out, device="cpu")
    frames = open_dataset(root, "auto").frames(sequence)
    return frames[len(frames) // 2].image_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--frames", type=int, default=12, help="synthetic frames in the map")
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the cold start runs on cpu)")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start (shared machine: noisy)")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        generate_dataset(
            root, SynthOptions(town_seed=1, drives=1, frames=args.frames, size="kitti"), reuse=False
        )
        map_dir = Path(tmp) / "map"
        image = build_tiny_map(root, map_dir)

        loc = Localizer.open(map_dir, device=str(device))
        decoded = load_image(image)
        x = loc.embedder.transform.on_device(  # type: ignore[union-attr]
            torch.from_numpy(loc.preprocess(decoded))[None], None, device
        ).contiguous(memory_format=torch.channels_last)

        def forward() -> None:
            with torch.inference_mode():
                out = loc.model.encode_image(x)  # type: ignore[operator]
            if device.type == "cuda":
                out.cpu()  # what localize waits for: the embedding on the host

        # Interleaved so that all three see the same machine load; once with torch's default
        # intra-op threads and once with one (on a busy machine, threads waiting for a core can
        # cost more than a one-image forward of the tiny model).
        timings: dict[int, dict[str, tuple[float, float]]] = {}
        default_threads = torch.get_num_threads()
        for threads in sorted({default_threads, 1}, reverse=True):
            torch.set_num_threads(threads)
            for _ in range(10):  # warm-up: allocator, oneDNN primitives
                loc.localize([image], k=5)
                forward()
            t_file, t_array, t_forward = [], [], []
            for _ in range(args.repeats):
                t_file += repeat(lambda: loc.localize([image], k=5), 1)
                t_array += repeat(lambda: loc.localize([decoded], k=5), 1)
                t_forward += repeat(forward, 1)
            timings[threads] = {
                "file": percentiles(t_file),
                "array": percentiles(t_array),
                "forward": percentiles(t_forward),
            }
        # CPU time per call (one thread): what the latency is on a machine nobody else loads.
        cpu_ms = {}
        for name, fn in (("array", lambda: loc.localize([decoded], k=5)), ("forward", forward)):
            start = time.process_time()
            for _ in range(args.repeats):
                fn()
            cpu_ms[name] = (time.process_time() - start) / args.repeats * 1000
        torch.set_num_threads(default_threads)

        torch_wall, torch_cpu = new_process([sys.executable, "-c", "import torch"])
        timm_wall, timm_cpu = new_process([sys.executable, "-c", "import timm"])
        colds = [
            new_process([str(LIPLOC), "localize", str(map_dir), str(image), "-k", "5"])
            for _ in range(args.cold_starts)
        ]
        colds_torch = [
            new_process([str(LIPLOC), "localize", str(map_dir), str(image), "-k", "5", "--backend", "torch"])
            for _ in range(args.cold_starts)
        ]
    cold_wall = float(np.median([c[0] for c in colds])) if colds else float("nan")
    cold_cpu = float(np.median([c[1] for c in colds])) if colds else float("nan")
    torch_wall_cold = float(np.median([c[0] for c in colds_torch])) if colds else float("nan")
    best_threads = min(timings, key=lambda n: timings[n]["array"][0])
    best = timings[best_threads]

    print(
        f"CPU time per call (1 thread): localize {cpu_ms['array']:.2f} ms, "
        f"forward {cpu_ms['forward']:.2f} ms, "
        f"overhead {cpu_ms['array'] - cpu_ms['forward']:.2f} ms (goal <= 5 ms)"
    )
    for threads, t in timings.items():
        print(f"{threads} thread(s):")
        print(f"  localize, image file:     p50 {t['file'][0]:7.2f} ms  p99 {t['file'][1]:7.2f} ms")
        print(f"  localize, decoded array:  p50 {t['array'][0]:7.2f} ms  p99 {t['array'][1]:7.2f} ms")
        print(f"  camera tower forward:     p50 {t['forward'][0]:7.2f} ms  p99 {t['forward'][1]:7.2f} ms")
        print(
            f"  overhead beyond forward (p50): {t['array'][0] - t['forward'][0]:.2f} ms for an array "
            f"(goal <= 5 ms), {t['file'][0] - t['forward'][0]:.2f} ms for a file (PNG decode of "
            f"{decoded.shape[1]}x{decoded.shape[0]} included)"
        )
    print(
        f"cold start of `liploc localize` (median of {args.cold_starts}; the map's ONNX export, "
        f"--backend auto): {cold_wall:.2f} s wall, {cold_cpu:.2f} s CPU (goal <= 3 s); with "
        f"--backend torch {torch_wall_cold:.2f} s, whose floor is `import torch` {torch_wall:.2f} s "
        f"wall / {torch_cpu:.2f} s CPU and `import timm` {timm_wall:.2f} s wall / {timm_cpu:.2f} s CPU"
    )
    print(
        json.dumps(
            {
                "localize_p50_ms": round(best["array"][0], 3),
                "localize_p99_ms": round(best["array"][1], 3),
                "forward_p50_ms": round(best["forward"][0], 3),
                "forward_p99_ms": round(best["forward"][1], 3),
                "overhead_p50_ms": round(best["array"][0] - best["forward"][0], 3),
                "localize_file_p50_ms": round(best["file"][0], 3),
                "overhead_file_p50_ms": round(best["file"][0] - best["forward"][0], 3),
                "threads": best_threads,
                "localize_cpu_ms": round(cpu_ms["array"], 3),
                "forward_cpu_ms": round(cpu_ms["forward"], 3),
                "overhead_cpu_ms": round(cpu_ms["array"] - cpu_ms["forward"], 3),
                "by_threads": {
                    str(n): {k: [round(v, 3) for v in pair] for k, pair in t.items()}
                    for n, t in timings.items()
                },
                "cold_start_s": round(cold_wall, 3) if colds else None,
                "cold_start_cpu_s": round(cold_cpu, 3) if colds else None,
                "cold_start_torch_backend_s": round(torch_wall_cold, 3) if colds else None,
                "import_torch_s": round(torch_wall, 3),
                "import_timm_s": round(timm_wall, 3),
                "device": str(device),
                "load_average": round(os.getloadavg()[0], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
