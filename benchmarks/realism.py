"""How KITTI-like ``liploc synth`` frames are: image and scan statistics beside a real KITTI drive.

Real: the 24 frames of ``shared/data/kitti-raw-posed`` (KITTI raw 2011_09_26_drive_0013, an urban
drive on a sunny day; ``shared`` beside the repository, as the tests find it). Synthetic: a town
rendered by ``generate_dataset`` at full KITTI size (1241 x 376 images, 64 x 2048 scans), by
default towns 0, 1 and 2, each with 4 drives x 4 frames 7 m apart (the real frames are 7 m apart
too), each drive with its own light. Towns differ much (some streets are all trees, some all
facades), so one town is not a fair sample.

Statistics (``liploc.synth.realism``), per frame then averaged: brightness, RMS contrast and
Hasler-Suesstrunk colourfulness of the image; gradient energy, edge density and the slope of the
radially averaged power spectrum at one equal size (620 x 188) for both; the valid share of the
paper's range-image crop, the mean and 90th percentile range there, and the mean intensity of the
scan. One table: real, synthetic, ratio synthetic / real, and whether the ratio is within 20 %.
Also the synthesis speed of that run: frames per second (rendered and written, towns excluded) and
CPU seconds per frame (towns included; less dependent on other processes on the machine).

Last line, one JSON object: ``images_within_20pct`` (all image statistics), ``frames_per_s``, then
every statistic's real and synthetic value and ratio.

    python benchmarks/realism.py [--towns 0 1 2] [--drives 4] [--frames 4] [--spacing 7] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from liploc.synth import SynthOptions, generate_dataset
from liploc.synth.generate import default_workers
from liploc.synth.realism import IMAGE_STATISTICS, SCAN_STATISTICS, dataset_statistics

REAL_DRIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kitti-raw-posed"
TOLERANCE = 0.2


def synth_run(args: argparse.Namespace, out: Path) -> dict[str, float]:
    """Render the synthetic drives of every town into ``out/town<seed>``; speed of the rendering."""
    frames = 0
    render_s = 0.0
    cpu = time.process_time()
    for seed in args.towns:
        options = SynthOptions(
            town_seed=seed,
            drives=args.drives,
            frames=args.frames,
            frame_spacing_m=args.spacing,
            size="kitti",
            pairs="none",
        )
        summary = generate_dataset(out / f"town{seed}", options, workers=args.workers, reuse=False)
        frames += summary.frames_total
        render_s += summary.frames_total / summary.frames_per_s
    cpu = time.process_time() - cpu
    return {"frames": frames, "frames_per_s": frames / render_s, "cpu_s_per_frame": cpu / frames}


def synth_statistics(out: Path, towns: list[int]) -> dict[str, float]:
    """Mean statistics over the frames of all towns (each town weighs by its frames)."""
    per_town = [dataset_statistics(out / f"town{seed}") for seed in towns]
    total = sum(t["frames"] for t in per_town)
    keys = [k for k in per_town[0] if k != "frames"]
    mean = {k: sum(t[k] * t["frames"] for t in per_town) / total for k in keys}
    return {**mean, "frames": float(total)}


def compare(real: dict[str, float], synth: dict[str, float]) -> dict[str, dict[str, float | bool]]:
    rows: dict[str, dict[str, float | bool]] = {}
    for key in (*IMAGE_STATISTICS, *SCAN_STATISTICS):
        ratio = synth[key] / real[key] if real[key] else float("nan")
        rows[key] = {
            "real": round(real[key], 4),
            "synth": round(synth[key], 4),
            "ratio": round(ratio, 3),
            "within_20pct": bool(abs(ratio - 1.0) <= TOLERANCE),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=REAL_DRIVE, help="real KITTI folder (any layout)")
    parser.add_argument("--towns", type=int, nargs="+", default=[0, 1, 2], help="town seeds")
    parser.add_argument("--drives", type=int, default=4, help="drives per town")
    parser.add_argument("--frames", type=int, default=4, help="frames per drive")
    parser.add_argument("--spacing", type=float, default=7.0, help="metres between frames")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument(
        "--keep", type=Path, default=None, help="write the synthetic drives here and keep them"
    )
    args = parser.parse_args()
    if not args.real.is_dir():
        raise SystemExit(f"real KITTI frames not found at {args.real} (see shared/data/README.md)")

    console = Console()
    load = os.getloadavg()[0]
    console.print(f"{os.cpu_count()} cores, {args.workers} render threads, load average {load:.1f} at start")
    real = dataset_statistics(args.real)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "synth"
        speed = synth_run(args, out)
        synth = synth_statistics(out, args.towns)
    rows = compare(real, synth)

    table = Table(
        title=f"{real['frames']:.0f} real frames ({args.real.name}) vs {synth['frames']:.0f} synthetic"
    )
    for name in ("statistic", "real", "synth", "ratio", "within 20 %"):
        table.add_column(name, justify="left" if name == "statistic" else "right")
    for key, row in rows.items():
        table.add_row(
            key,
            f"{row['real']:.4g}",
            f"{row['synth']:.4g}",
            f"{row['ratio']:.2f}",
            "yes" if row["within_20pct"] else "NO",
        )
    console.print(table)
    images_ok = all(rows[k]["within_20pct"] for k in IMAGE_STATISTICS)
    console.print(
        f"synth: {speed['frames']:.0f} full-size frames, {speed['frames_per_s']:.2f} frames/s, "
        f"{speed['cpu_s_per_frame']:.2f} CPU s per frame; image statistics within 20 %: "
        f"{'all' if images_ok else 'NOT all'}"
    )
    print(
        json.dumps(
            {
                "images_within_20pct": images_ok,
                "frames_per_s": round(speed["frames_per_s"], 2),
                "cpu_s_per_frame": round(speed["cpu_s_per_frame"], 3),
                "synth_frames": int(synth["frames"]),
                "real_frames": int(real["frames"]),
                "workers": args.workers,
                "load_average": round(load, 2),
                "statistics": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
