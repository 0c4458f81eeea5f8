"""``liploc map build``: a self-contained LiDAR map folder (the work:
:func:`liploc.localization.localize.build_map`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from liploc.commands._common import console, reported_errors
from liploc.commands.options import EXISTING, DataRoot, Device, Layout, examples

HELP = "Build LiDAR maps (embeddings + poses + index) for localization."
"""What ``liploc map --help`` says of the group."""
BUILD_EPILOG = examples(
    "liploc map build runs/kitti_resnet50 --data-root /data/kitti/dataset --sequence 8 --out maps/08",
    "liploc map build runs/kitti_resnet50 --data-root /data/kitti/dataset --sequence 8 --out maps/08 --force",
    "liploc map build runs/k360 --data-root /data/kitti360 --sequence 0 --sequence 2 --out maps/city "
    "--index ivf-pq",
    "torchrun --nproc_per_node=4 -m liploc map build runs/k360 --data-root /data/kitti360 --sequence 0 "
    "--out maps/city",
)
ADD_EPILOG = examples(
    "liploc map add maps/city --data-root /data/kitti360 --sequence 3",
)

Run = Annotated[Path, typer.Argument(metavar="RUN", help="Run folder or checkpoint file.", **EXISTING)]
Sequences = Annotated[
    list[str], typer.Option(help="Sequence(s) whose scans make the map (repeatable; 8 means 08).")
]
Out = Annotated[Path, typer.Option(help="Map folder to write.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing map at --out.")]
Index = Annotated[
    Literal["auto", "flat", "flat-fp16", "hnsw", "ivf-pq"],
    typer.Option(
        "--index",
        help="Search index: flat (exact), flat-fp16 (half the memory), hnsw, ivf-pq (about 40 bytes a "
        "scan; its shortlist re-scored exactly), auto (by map size and --max-memory).",
    ),
]
MaxMemory = Annotated[
    float | None,
    typer.Option("--max-memory", help="MiB the index may keep in memory (auto chooses within it)."),
]
BatchSize = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=1,
        help="Scans per forward pass (under torchrun each process embeds whole batches).",
    ),
]
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
    index: Index = "auto",
    max_memory: MaxMemory = None,
    batch_size: BatchSize = 64,
) -> None:
    """Embed the LiDAR scans of sequences into a self-contained map (embeddings, poses, index, model).

    Under ``torchrun`` every process embeds its share of the scans and the first writes the map."""
    from liploc.commands.preflight import check_map_output, dataset_sequences, require_checkpoint

    with reported_errors(writing=out):
        # The output folder, the run's checkpoint and the sequences are checked before torch loads.
        check_map_output(out, force)
        require_checkpoint(run)
        dataset_sequences(data_root, layout, sequence)
        from liploc.localization.localize import build_map
        from liploc.runtime.process_group import process_group_from_env

        with process_group_from_env():  # one process, or a rank of torchrun's job
            build_map(
                run,
                data_root,
                sequence,
                out,
                layout=layout,
                device=device,
                batch_size=batch_size,
                console=console,
                force=force,
                onnx=onnx,
                index_kind=index,
                max_memory=None if max_memory is None else int(max_memory * 2**20),
            )


MapDir = Annotated[Path, typer.Argument(metavar="MAP", help="Map folder to grow.", **EXISTING)]


def add(
    map_dir: MapDir,
    data_root: DataRoot,
    sequence: Sequences,
    layout: Layout = "auto",
    device: Device = "auto",
) -> None:
    """Append the scans of more drives to a map, atomically (readers see it before or after).

    Drives of another world frame than the map's, or already in it, are refused; the map's own model
    embeds them with its preprocessing and precision."""
    from liploc.commands.preflight import dataset_sequences

    with reported_errors(writing=map_dir):
        dataset_sequences(data_root, layout, sequence)
        from liploc.localization.map_growth import add_to_map

        grown = add_to_map(map_dir, data_root, sequence, layout=layout, device=device, console=console)
        console.print(f"map {map_dir}: {len(grown)} scans")
