"""Which LiDAR input localizes best: the paper's range image or the scan as a camera-plane depth image.

One synthetic town with held-out streets (the demo's town); the tiny config trained twice with the
same budget (same town, drives, epochs, seed), once per LiDAR input (``data.lidar_input``):

- ``range``: the spherical range image of the whole scan (LIP-Loc);
- ``camera_depth``: the scan projected into the camera as a sparse depth image (the input of the
  later cross-modal methods).

Each model is evaluated on the held-out pair of drives:

- same-sequence with the query's own scan removed from the database (``revisit`` protocol with a
  0 s window: only the scan taken with the image leaves), so a hit is a neighbouring scan;
- cross-drive: map from one held-out drive, queries from its partner;

at 10 and 20 m, single image and sequence matching over a window of driving (odometry with 10%
noise). Prints the table and, as the last line, one JSON object. The input that is better on
cross-drive R@1 at 10 m (single and sequence) by at least ``--margin`` is named ``clearly_better``.

    python benchmarks/lidar_inputs.py [--out runs/lidar_inputs] [--epochs 25] [--quick]

``--quick`` is a reduced run (fewer, shorter drives and epochs) that checks the pipeline in
minutes; its figures are not the study's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from liploc.config import DatasetSplit, load_config
from liploc.evaluation.evaluate import EvaluationSettings, evaluate
from liploc.synth import SynthOptions, generate_dataset
from liploc.training.train import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
INPUTS = ("range", "camera_depth")


def run_study(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Train and evaluate one model per LiDAR input; return the figures."""
    out = Path(args.out)
    synth = SynthOptions(
        town_seed=args.town_seed,
        drives=args.drives,
        held_out_drives=2,
        frames=args.frames,
        frame_spacing_m=args.spacing,
        size="small",
        blocks=(8, 4),
        pairs="same-direction",
    )
    town = generate_dataset(out / "data", synth)
    test_seq, partner = town.pairs(role="test")[0]
    seq_len = max(1, round(args.window / args.spacing))
    figures: dict[str, Any] = {}
    for lidar_input in INPUTS:
        config = load_config(CONFIG, [f"data.lidar_input={lidar_input}"])
        config.name = f"lidar-{lidar_input}"
        config.data.datasets = [DatasetSplit(layout="kitti", root=town.root, train=town.train_sequences())]
        config.train.epochs = args.epochs
        config.train.seed = args.seed
        run_dir = out / f"run-{lidar_input}"
        resume = (run_dir / "checkpoints" / "last.safetensors").is_file()
        started = time.perf_counter()
        result = train(config, run_dir, resume=resume, progress=False)
        seconds = time.perf_counter() - started
        protocols = {
            "same-sequence (own scan removed)": dict(
                sequence=test_seq, protocol="revisit", revisit_window_s=0.0
            ),
            "cross-drive": dict(sequence=partner, protocol="cross-drive", map_sequence=test_seq),
        }
        per: dict[str, Any] = {"train_steps": result.step, "train_seconds": seconds}
        for name, kwargs in protocols.items():
            ev = evaluate(
                run_dir,
                town.root,
                EvaluationSettings(
                    out_dir=out / "eval" / lidar_input / name.split(" ")[0],
                    num_examples=0,
                    thresholds_m=[20.0, 10.0],
                    seq_len=seq_len,
                    odometry=True,
                    **kwargs,  # type: ignore[arg-type]
                ),
            )
            assert ev.sequence_result is not None
            per[name] = {
                f"{how}_{thr:g}m": {
                    "recall_at_1": res.at(thr).recall[1],
                    "recall_at_5": res.at(thr).recall[5],
                    "chance_at_1": res.at(thr).chance[1],
                    "queries": res.at(thr).num_counted,
                }
                for how, res in (("single", ev.result), ("sequence", ev.sequence_result))
                for thr in (10.0, 20.0)
            }
        figures[lidar_input] = per
        console.print(f"{lidar_input}: {result.step} steps in {seconds / 60:.1f} min")
    return {"figures": figures, "seq_len": seq_len, "window_m": args.window, "town": town}


def print_table(console: Console, figures: dict[str, Any], seq_len: int) -> None:
    """One row per input, protocol and threshold: R@1 single and sequence, R@5 single."""
    table = Table(title=f"LiDAR input study (held-out streets; sequence = {seq_len} images, odometry)")
    for col in ("input", "protocol", "thr", "R@1", f"R@1 seq{seq_len}", "R@5", "chance R@1"):
        table.add_column(col, justify="right" if col not in ("input", "protocol") else "left")
    for lidar_input, per in figures.items():
        for protocol, cells in per.items():
            if not isinstance(cells, dict):
                continue
            for thr in (10, 20):
                s, q = cells[f"single_{thr}m"], cells[f"sequence_{thr}m"]
                table.add_row(
                    lidar_input,
                    protocol,
                    f"{thr} m",
                    f"{s['recall_at_1']:.3f}",
                    f"{q['recall_at_1']:.3f}",
                    f"{s['recall_at_5']:.3f}",
                    f"{s['chance_at_1']:.3f}",
                )
    console.print(table)


def verdict(figures: dict[str, Any], margin: float) -> str | None:
    """The input better by ``margin`` on cross-drive R@1 at 10 m, single and sequence; else None."""
    cells = {i: figures[i]["cross-drive"] for i in INPUTS}
    diffs = [
        cells["camera_depth"][key]["recall_at_1"] - cells["range"][key]["recall_at_1"]
        for key in ("single_10m", "sequence_10m")
    ]
    if all(d >= margin for d in diffs):
        return "camera_depth"
    if all(d <= -margin for d in diffs):
        return "range"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/lidar_inputs")
    parser.add_argument("--town-seed", type=int, default=7)
    parser.add_argument("--drives", type=int, default=30)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--spacing", type=float, default=3.0, help="metres between frames")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=float, default=20.0, help="sequence window, metres driven")
    parser.add_argument("--margin", type=float, default=0.05, help="R@1 gap that counts as clearly better")
    parser.add_argument("--quick", action="store_true", help="reduced run: 8 drives x 40 frames, 2 epochs")
    args = parser.parse_args()
    if args.quick:
        args.drives, args.frames, args.epochs = 8, 40, 2
        if args.out == "runs/lidar_inputs":
            args.out = "runs/lidar_inputs_quick"
    torch.set_num_threads(max(1, torch.get_num_threads()))
    console = Console()
    started = time.perf_counter()
    study = run_study(args, console)
    print_table(console, study["figures"], study["seq_len"])
    better = verdict(study["figures"], args.margin)
    console.print(
        f"clearly better (cross-drive R@1 at 10 m, single and sequence, by >= {args.margin:.2f}): "
        f"{better or 'neither'}"
    )
    payload = {
        "benchmark": "lidar_inputs",
        "quick": args.quick,
        "drives": args.drives,
        "frames": args.frames,
        "epochs": args.epochs,
        "seq_len": study["seq_len"],
        "window_m": args.window,
        "figures": study["figures"],
        "clearly_better": better,
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
