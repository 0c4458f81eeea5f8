"""``liploc map build``: a self-contained LiDAR map folder (the work:
:func:`liploc.localization.localize.build_map`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from liploc.commands._common import console, reported_errors
from liploc.commands.options import EXISTING, DataRoot, Device, Layout, examples

HELP = "Build LiDAR maps (embeddings + poses + index) for localization."
"""What ``liploc map --help`` says of the group."""
BUILD_EPILOG = examples(
    "liploc map build runs/kitti_resnet50 --data-root /data/kitti/dataset --sequence 8 --out maps/08",
    "liploc map build runs/kitti_resnet50 --data-root /data/kitti/dataset --sequence 8 --out maps/08 --force",
)

Run = Annotated[Path, typer.Argument(metavar="RUN", help="Run folder or checkpoint file.", **EXISTING)]
Sequences = Annotated[
    list[str], typer.Option(help="Sequence(s) whose scans make the map (repeatable; 8 means 08).")
]
Out = Annotated[Path, typer.Option(help="Map folder to write.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing map at --out.")]
Onnx = Annotated[
    bool,
    typer.Option(
        "--onnx/--no-onnx",
        help="Keep an ONNX export of the camera tower in the map: `liploc localize` then starts "
        "without torch (a fraction of the time).",
    ),
]


def build(
    run: Run,
    data_root: DataRoot,
    sequence: Sequences,
    out: Out,
    layout: Layout = "auto",
    device: Device = "auto",
    force: Force = False,
    onnx: Onnx = True,
) -> None:
    """Embed the LiDAR scans of sequences into a self-contained map (embeddings, poses, index, model)."""
    from liploc.commands.preflight import check_map_output, dataset_sequences, require_checkpoint

    with reported_errors(writing=out):
        # The output folder, the run's checkpoint and the sequences are checked before torch loads.
        check_map_output(out, force)
        require_checkpoint(run)
        dataset_sequences(data_root, layout, sequence)
        from liploc.localization.localize import build_map

        build_map(
            run,
            data_root,
            sequence,
            out,
            layout=layout,
            device=device,
            console=console,
            force=force,
            onnx=onnx,
        )
