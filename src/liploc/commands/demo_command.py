"""``liploc demo``: the command's options; the pipeline is :func:`liploc.commands.demo.run_demo`.

Apart from :mod:`liploc.commands.demo` because that module defines its options as a pydantic
model and imports training and evaluation: the CLI would load them (and torch) on every start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from liploc.commands._common import INTERRUPTED, console, reported_errors
from liploc.commands.options import EXISTING, examples

EPILOG = examples(
    "liploc demo",
    "liploc demo --out runs/demo2 --town-seed 8 --epochs 10 --bridge-epochs 3",
    "liploc demo --no-bridge",
)

Out = Annotated[Path, typer.Option(help="Demo folder (data, run, eval, metrics.json).")]
TownSeed = Annotated[int, typer.Option(help="Seed of the synthetic town.")]
Drives = Annotated[int, typer.Option(help="Drives (2 of them on held-out streets).", min=3)]
Frames = Annotated[int, typer.Option(help="Frames per drive.", min=2)]
Epochs = Annotated[int, typer.Option(help="Training epochs.", min=1)]
Config = Annotated[Path | None, typer.Option(help="Training config (default configs/tiny.yaml).", **EXISTING)]
Bridge = Annotated[
    bool, typer.Option("--bridge/--no-bridge", help="Also train and evaluate the geometry bridge.")
]
BridgeConfig = Annotated[
    Path | None, typer.Option(help="The bridge's config (default configs/tiny_bridge.yaml).", **EXISTING)
]
BridgeEpochs = Annotated[int, typer.Option(help="The bridge's training epochs.", min=1)]
Threads = Annotated[
    int, typer.Option(help="CPU threads of torch, the same on every machine so that results repeat.", min=1)
]
SequenceWindows = Annotated[
    list[float] | None,
    typer.Option(
        "--sequence-window",
        min=0.0,
        help="Metres of driving for sequence matching, a row each; repeat for more "
        "(default 20 and 60; 0: single images only).",
    ),
]


def demo(
    out: Out = Path("runs/demo"),
    town_seed: TownSeed = 7,
    drives: Drives = 30,
    frames: Frames = 120,
    epochs: Epochs = 25,
    config: Config = None,
    bridge: Bridge = True,
    bridge_config: BridgeConfig = None,
    bridge_epochs: BridgeEpochs = 6,
    threads: Threads = 2,
    sequence_window: SequenceWindows = None,
) -> None:
    """Synthetic town -> train the tiny models on CPU -> evaluate on held-out streets -> report."""
    from liploc.commands.demo import DemoOptions, run_demo

    with reported_errors(writing=out):
        given: dict[str, Any] = dict(town_seed=town_seed, drives=drives, frames=frames, epochs=epochs)
        given.update(bridge_epochs=bridge_epochs, torch_threads=threads)
        if config is not None:
            given["config"] = config
        if not bridge:
            given["bridge_config"] = None
        elif bridge_config is not None:
            given["bridge_config"] = bridge_config
        if sequence_window is not None:
            given["sequence_windows_m"] = tuple(sequence_window)
        result = run_demo(out, DemoOptions(**given), console=console)
    if result.interrupted:
        raise typer.Exit(code=INTERRUPTED)
