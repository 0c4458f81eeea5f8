"""Speed of ``liploc synth``: frames per second, image and scan rendered and written.

Workload: a 6 x 4 block town (the default), 2 drives at full KITTI size (1241 x 376 images,
64 x 2048 scans) and 2 drives at ``--size small`` (310 x 94, 64 x 1024), rendered by one thread per
core. Target: at least 3 full-size frames per second on a 2-core machine.

Reported per size: frames per second over the rendering and writing (town building excluded,
it is done once per run), the CPU seconds each frame costs (independent of other processes
loading the machine), and the rate that CPU cost gives when every core is free. Last line, one
JSON object: ``frames_per_s`` and ``size`` of the full-size run, then the other figures.

    python benchmarks/synth.py [--frames 16] [--small-frames 150] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from liploc.synth import SynthOptions, generate_dataset
from liploc.synth.generate import default_workers


def measure(size: str, frames: int, workers: int) -> dict[str, float]:
    """Generate 2 drives of ``frames`` frames at ``size``; rate, CPU cost per frame."""
    options = SynthOptions(town_seed=1, drives=2, frames=frames, size=size)
    with tempfile.TemporaryDirectory() as tmp:
        cpu = time.process_time()
        summary = generate_dataset(Path(tmp) / "synth", options, workers=workers, reuse=False)
        cpu = time.process_time() - cpu
    cpu_per_frame = cpu / summary.frames_total
    return {
        "frames": summary.frames_total,
        "frames_per_s": summary.frames_per_s,
        "cpu_s_per_frame": cpu_per_frame,
        "free_cores_frames_per_s": workers / cpu_per_frame,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16, help="full-size frames per drive")
    parser.add_argument("--small-frames", type=int, default=150, help="small frames per drive")
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()

    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} cores, {args.workers} render threads, load average {load:.1f} at start")
    results = {}
    for size, frames in (("kitti", args.frames), ("small", args.small_frames)):
        r = measure(size, frames, args.workers)
        results[size] = r
        print(
            f"{size:>5}: {r['frames']} frames, {r['frames_per_s']:.1f} frames/s, "
            f"{r['cpu_s_per_frame'] * 1000:.0f} ms CPU per frame "
            f"({r['free_cores_frames_per_s']:.1f} frames/s with {args.workers} free cores)"
        )
    full = results["kitti"]
    print(
        f"target: >= 3 full-size frames/s -> {'met' if full['frames_per_s'] >= 3 else 'NOT met'} in this run"
    )
    print(
        json.dumps(
            {
                "frames_per_s": round(full["frames_per_s"], 2),
                "size": "kitti",
                "cpu_s_per_frame": round(full["cpu_s_per_frame"], 3),
                "small_frames_per_s": round(results["small"]["frames_per_s"], 2),
                "small_cpu_s_per_frame": round(results["small"]["cpu_s_per_frame"], 4),
                "workers": args.workers,
                "load_average": round(load, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
