"""The ``liploc`` command line: thin wrappers that parse, call the library, and print.

Each command imports its library module lazily so that ``liploc info`` starts without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from liploc.errors import LiplocError

app = typer.Typer(
    name="liploc",
    help="Global visual localization in LiDAR maps (LIP-Loc: LiDAR-image pretraining).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
map_app = typer.Typer(
    help="Build LiDAR maps (embeddings + poses + index) for localization.", no_args_is_help=True
)
app.add_typer(map_app, name="map")

console = Console()
err_console = Console(stderr=True)


def _fail(err: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code=1)


# --- info (datasets) -------------------------------------------------------------------------
@app.command()
def info(
    data_root: Annotated[Path, typer.Argument(help="Dataset folder (KITTI, SemanticKITTI, KITTI-360, raw).")],
    layout: Annotated[str, typer.Option(help="Layout name, or auto to detect it.")] = "auto",
    check_files: Annotated[
        bool, typer.Option("--check-files/--no-check-files", help="Check every scan's size and image header.")
    ] = True,
) -> None:
    """Describe a dataset folder: layout, sequences, frames, calibration and every problem found."""
    from liploc.info import describe_dataset

    try:
        describe_dataset(data_root, layout=layout, console=console, check_files=check_files)
    except LiplocError as err:
        _fail(err)


def main() -> None:
    """Entry point for ``python -m liploc``."""
    app()
