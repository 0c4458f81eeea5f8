"""``liploc train``: train the two towers into a run folder (the loop: :mod:`liploc.training.train`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from liploc.commands._common import INTERRUPTED, console, reported_errors
from liploc.commands.options import EXISTING, DataRoots, Overrides, examples

EPILOG = examples(
    "liploc train configs/kitti_resnet50.yaml --data-root /data/kitti/dataset",
    "liploc train runs/kitti_resnet50 --resume --set train.epochs=60",
    "torchrun --nproc_per_node=4 -m liploc train configs/kitti_resnet50.yaml --data-root /data/kitti",
)

Config = Annotated[
    Path,
    typer.Argument(
        metavar="CONFIG", help="Config YAML (configs/*.yaml), or a run folder to resume.", **EXISTING
    ),
]
Out = Annotated[Path | None, typer.Option("--out", help="Run folder (default: runs/<config name>).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run folder from its last checkpoint.")]
ShowProgress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")]
AllowMissing = Annotated[
    bool,
    typer.Option(
        "--allow-missing",
        help="Go on without named sequences that have no images, scans or poses (counted in the log).",
    ),
]


def train(
    config: Config,
    data_root: DataRoots = None,
    out: Out = None,
    overrides: Overrides = None,
    resume: Resume = False,
    progress: ShowProgress = True,
    allow_missing: AllowMissing = False,
) -> None:
    """Train the two towers; many GPUs/nodes: torchrun --nproc_per_node=N -m liploc train ..."""
    from liploc.commands.preflight import check_training_folder, training_run

    with reported_errors(writing=out):
        extra = ["data.allow_missing=true"] if allow_missing else []
        settings = [*(overrides or []), *extra]
        # The config, its --set keys and the run folder (free, and holding a run exactly when
        # --resume) are checked before torch loads: a mistake is refused at once.
        check_training_folder(training_run(config, data_root, settings, out).out, resume)
        from liploc.training.train import configure_run
        from liploc.training.train import train as run_training

        cfg, run_dir = configure_run(config, data_root or [], settings, out)
        result = run_training(cfg, run_dir, resume=resume, progress=progress, console=console)
    if result.stopped == "interrupted":  # the loop saved a checkpoint; --resume continues
        raise typer.Exit(code=INTERRUPTED)
