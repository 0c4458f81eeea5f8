"""``liploc synth``: synthetic KITTI-format drives (the work and its printing:
:mod:`liploc.synth.command`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from liploc.commands._common import console, reported_errors
from liploc.commands.options import EXISTING, EXISTING_DIR, check_blocks, check_positive, examples

EPILOG = examples(
    "liploc synth --out data/town --size small --drives 6 --frames 150 --held-out 2",
    "liploc synth --out data/along08 --trajectory kitti/poses/08.txt --frames 0",
    notes="An interrupted run keeps its rendered frames: run the same command again to resume.",
)

Out = Annotated[Path, typer.Option("--out", help="Output folder (KITTI odometry layout).")]
TownSeed = Annotated[int, typer.Option(help="Seed of the town and its drives.")]
Drives = Annotated[int, typer.Option(help="Number of drives (sequences 00, 01, ...).", min=1)]
Frames = Annotated[int, typer.Option(help="Frames per drive (0 with --trajectory: all its poses).", min=0)]
Size = Annotated[
    Literal["kitti", "small"],
    typer.Option(help="kitti: 1241x376 images, 64x2048 scans; small: 310x94, 64x1024."),
]
HeldOut = Annotated[int, typer.Option(help="Drives on held-out streets no training drive uses.", min=0)]
Pairs = Annotated[
    Literal["none", "same-direction", "reverse", "mixed"],
    typer.Option(
        metavar="PAIRS", help="Drives in pairs over the same streets: none, same-direction, reverse or mixed."
    ),
]
Spacing = Annotated[float, typer.Option(help="Metres driven between frames.", callback=check_positive)]
Blocks = Annotated[str, typer.Option(help="Town size in blocks, XxY.", callback=check_blocks)]
Trajectory = Annotated[
    Path | None,
    typer.Option(help="KITTI poses file to drive along; the town is built around it.", **EXISTING),
]
TrajectoryCalib = Annotated[
    Path | None, typer.Option(help="calib.txt of the trajectory (default: beside it).", **EXISTING)
]
PoseFrame = Annotated[
    Literal["town", "first"],
    typer.Option(
        help="town: one frame for all sequences; first: each sequence starts at the identity (KITTI)."
    ),
]
Preview = Annotated[bool, typer.Option("--preview", help="Save preview.png: scan on image, range image.")]
Stats = Annotated[
    Path | None,
    typer.Option("--stats", help="Real dataset folder to compare scan statistics with.", **EXISTING_DIR),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force", help="Regenerate from scratch even if OUT holds the same output or a part of it."
    ),
]
Workers = Annotated[
    int | None, typer.Option(help="Render threads (default: one per core, at most 8).", min=1)
]


def synth(
    out: Out,
    town_seed: TownSeed = 0,
    drives: Drives = 4,
    frames: Frames = 200,
    size: Size = "kitti",
    held_out: HeldOut = 0,
    pairs: Pairs = "mixed",
    spacing: Spacing = 1.0,
    blocks: Blocks = "6x4",
    trajectory: Trajectory = None,
    trajectory_calib: TrajectoryCalib = None,
    pose_frame: PoseFrame = "town",
    preview: Preview = False,
    stats: Stats = None,
    force: Force = False,
    workers: Workers = None,
) -> None:
    """Synthetic drives through procedural towns, written like KITTI odometry (image_2, velodyne, poses)."""
    from liploc.synth.command import make_options, parse_blocks, run_synth

    with reported_errors(writing=out, interrupted=lambda: _resume_hint(out)):
        options = make_options(
            town_seed=town_seed,
            drives=drives,
            frames=frames,
            size=size,
            held_out_drives=held_out,
            pairs=pairs,
            frame_spacing_m=spacing,
            blocks=parse_blocks(blocks),
            trajectory=trajectory,
            trajectory_calib=trajectory_calib,
            pose_frame=pose_frame,
        )
        run_synth(out, options, console, workers=workers, force=force, preview=preview, real_root=stats)


def _resume_hint(out: Path) -> str:
    from liploc.synth.generate import resume_hint

    return resume_hint(out)
