"""Embedding throughput of ``liploc evaluate`` / ``map build``: frames per second, image and LiDAR.

Workload: full-size synthetic KITTI frames (``liploc synth``: 1241 x 376 PNG images, 64 x 2048
scans), the tiny model (configs/tiny.yaml), both towers embedded as evaluation does. Measured side
by side in one run:

- ``baseline``: the code path before issue 11 (copied below): float32 samples normalised in the
  main process, no loader workers, no pinned memory, PNGs decoded by Pillow and scans checked for
  non-finite values row by row.
- ``cold``: :func:`liploc.localization.embedding.embed_frame_sets` as evaluation calls it (images
  and scans through one loader of ``--workers`` workers, uint8 through shared memory,
  normalisation on the device, the main process leaving the workers their cores) and an empty
  preprocessing cache.
- ``warm``: the same with the cache filled by the cold pass (decoding and projection skipped).

Goal: cold at least 1.8x the baseline with 2 workers. The machine may be shared with other jobs:
the figures are noisy (the load average at the start is printed).

    python benchmarks/embed_throughput.py [--frames 96] [--workers 2]

Last line: {"baseline_frames_per_s": ..., "cold_frames_per_s": ..., "warm_frames_per_s": ...,
"speedup_cold": ..., "speedup_warm": ..., ...}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch.utils.data import DataLoader

from liploc.config import Config, load_config
from liploc.datasets import Frame, open_dataset
from liploc.datasets import scan as scan_module
from liploc.errors import DataError
from liploc.localization.embedding import embed_frame_sets
from liploc.models import TwoTowerModel, create_model
from liploc.runtime.frame_dataset import ImageDataset, LidarDataset
from liploc.synth import SynthOptions, generate_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@torch.no_grad()
def baseline_embed(
    model: TwoTowerModel,
    frames: Sequence[Frame],
    config: Config,
    modality: str,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """``embed_frames`` as it was before issue 11 (the copy of today's path measured against)."""
    model.eval()
    dataset_cls = ImageDataset if modality == "image" else LidarDataset
    loader = DataLoader(dataset_cls(frames, config), batch_size=batch_size, shuffle=False, num_workers=0)
    encode = model.encode_image if modality == "image" else model.encode_lidar
    out = []
    for batch in loader:
        emb = encode(batch[modality].to(device))
        out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


def read_scan_before(path: str | Path) -> scan_module.LoadedScan:
    """``read_scan`` as it was before issue 11: the finite check row by row on every scan."""
    path = Path(path)
    scan_module.check_scan_size(path)
    try:
        raw = np.fromfile(path, dtype="<f4")
    except OSError as err:
        raise DataError(path, f"cannot read scan file ({err.strerror or err})") from None
    points = raw.reshape(-1, 4)
    finite = np.isfinite(points).all(axis=1)
    n_dropped = int(len(points) - np.count_nonzero(finite))
    if n_dropped:
        points = points[finite]
    return scan_module.LoadedScan(path=path, points=np.ascontiguousarray(points), n_dropped=n_dropped)


@contextlib.contextmanager
def decoders_before_issue_11() -> Iterator[None]:
    """Every PNG through Pillow and the old scan check, as the baseline's code had them."""
    with (
        mock.patch.object(scan_module, "_decode_rgb8_png", lambda data: None),
        mock.patch.object(scan_module, "read_scan", read_scan_before),
    ):
        yield


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn) -> tuple[float, float, object]:  # type: ignore[no-untyped-def]
    """(wall seconds, CPU seconds, result) of ``fn()``."""
    cpu, start = cpu_seconds(), time.perf_counter()
    value = fn()
    return time.perf_counter() - start, cpu_seconds() - cpu, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=96, help="full-size synthetic frames")
    parser.add_argument("--workers", type=int, default=2, help="loader workers of the new path")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both paths run there)")
    args = parser.parse_args()

    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start (shared machine: noisy)")
    config = load_config(CONFIGS / "tiny.yaml")
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = create_model(config.model).eval().to(device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        generate_dataset(
            root, SynthOptions(town_seed=1, drives=1, frames=args.frames, size="kitti"), reuse=False
        )
        reader = open_dataset(root, "auto")
        frames = reader.frames(reader.sequences()[0])
        n = len(frames)
        print(
            f"{n} frames of {reader.sequences()[0]} at full KITTI size, tiny model, batch {args.batch_size}"
        )

        def baseline() -> list[np.ndarray]:
            with decoders_before_issue_11():
                return [
                    baseline_embed(model, frames, config, m, args.batch_size, device)
                    for m in ("image", "lidar")
                ]

        def new(cache: Path) -> list[np.ndarray]:
            # As `liploc evaluate` does: the queries' images and the map's scans in one pass.
            return embed_frame_sets(
                model,
                [(frames, "image"), (frames, "lidar")],
                config,
                device=device,
                batch_size=args.batch_size,
                num_workers=args.workers,
                cache_dir=cache,
            )

        cache = Path(tmp) / "cache"
        t_base, cpu_base, ref = timed(baseline)
        t_cold, cpu_cold, cold = timed(lambda: new(cache))
        t_warm, cpu_warm, warm = timed(lambda: new(cache))
        for a, b, c in zip(ref, cold, warm, strict=True):  # type: ignore[call-overload]
            # CUDA: the new path runs under autocast (bf16), the baseline in fp32.
            atol = 1e-5 if device.type == "cpu" else 5e-2
            assert np.allclose(a, b, atol=atol) and np.allclose(a, c, atol=atol), "paths disagree"
    results = {
        "baseline_frames_per_s": round(n / t_base, 2),
        "cold_frames_per_s": round(n / t_cold, 2),
        "warm_frames_per_s": round(n / t_warm, 2),
    }
    results["speedup_cold"] = round(results["cold_frames_per_s"] / results["baseline_frames_per_s"], 2)
    results["speedup_warm"] = round(results["warm_frames_per_s"] / results["baseline_frames_per_s"], 2)
    # CPU seconds per frame (all processes): what the rates would be with every core free.
    cpu_ms = {"baseline": 1000 * cpu_base / n, "cold": 1000 * cpu_cold / n, "warm": 1000 * cpu_warm / n}
    for name, value in cpu_ms.items():
        results[f"{name}_cpu_ms_per_frame"] = round(value, 1)
    print(
        f"baseline (before issue 11, no workers, no cache): {results['baseline_frames_per_s']:7.2f} frames/s"
    )
    print(
        f"new, {args.workers} workers, cold cache:            {results['cold_frames_per_s']:7.2f} frames/s "
        f"({results['speedup_cold']:.2f}x; goal 1.8x)"
    )
    print(
        f"new, {args.workers} workers, warm cache:            {results['warm_frames_per_s']:7.2f} frames/s "
        f"({results['speedup_warm']:.2f}x)"
    )
    print(
        json.dumps(
            {
                **results,
                "frames": n,
                "workers": args.workers,
                "device": str(device),
                "cores": os.cpu_count(),
                "load_average": round(os.getloadavg()[0], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
