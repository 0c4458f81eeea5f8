"""Checks of argument values and the options several commands share.

Arguments are checked here, when typer parses them and before a command imports torch and its
library (seconds), so that a mistyped value is refused at once, as a usage error (exit 2) without
a traceback.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Literal

import typer

from liploc.help_format import examples as examples
from liploc.localization.map_folder import MapFolder

ProtocolName = Literal["same-sequence", "cross-drive", "revisit"]  # = evaluation.evaluate.PROTOCOLS
LAYOUT_HELP = "Dataset layout: auto (detect), kitti, semantickitti, kitti360 or kitti_raw."
EXISTING = {"exists": True, "resolve_path": False}
EXISTING_DIR = {"exists": True, "file_okay": False}
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_BLOCKS = re.compile(r"^\d+x\d+$", re.IGNORECASE)


def check_device(value: str) -> str:
    if not _DEVICE.match(value):
        raise typer.BadParameter(f"'{value}' is not a device; use auto, cpu, cuda or cuda:N")
    return value


def check_layout(value: str) -> str:
    if value != "auto":
        from liploc.datasets.registry import available_layouts

        if value not in available_layouts():
            raise typer.BadParameter(
                f"'{value}' is not a layout; use auto or {', '.join(available_layouts())}"
            )
    return value


def check_thresholds(values: list[float] | None) -> list[float] | None:
    for value in values or []:
        if not math.isfinite(value) or value <= 0:
            raise typer.BadParameter(f"{value:g} m: a distance threshold must be above 0 m")
    return values


def check_positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise typer.BadParameter(f"{value:g}: must be above 0")
    return value


def check_blocks(value: str) -> str:
    if not _BLOCKS.match(value):
        raise typer.BadParameter(f"{value!r}: expected two numbers like 6x4")
    return value


def check_map_folder(value: Path) -> Path:
    if not MapFolder(value).is_map():
        raise typer.BadParameter(
            f"{value} is not a map folder (no manifest.json); make one with `liploc map build`"
        )
    return value


# --- options of several commands --------------------------------------------------------------
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", callback=check_device)]
Layout = Annotated[str, typer.Option(help=LAYOUT_HELP, callback=check_layout)]
DataRoot = Annotated[Path, typer.Option("--data-root", help="Dataset folder.", **EXISTING_DIR)]
MapArgument = Annotated[
    Path,
    typer.Argument(
        metavar="MAP", help="Map folder from `liploc map build`.", callback=check_map_folder, **EXISTING_DIR
    ),
]
OnnxDir = Annotated[Path | None, typer.Option("--onnx", help="ONNX export folder (default MAP/model/onnx).")]
DataRoots = Annotated[
    list[str] | None,
    typer.Option(
        "--data-root",
        metavar="DIR|LAYOUT=DIR",
        help="Dataset folder for every dataset entry without a root; LAYOUT=DIR for the entries "
        "of one layout (repeatable, for combined configs).",
    ),
]
"""A config's dataset folders (``liploc train``, ``liploc cache warm``)."""
Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set", metavar="KEY=VALUE", help="Override a setting, e.g. train.batch_size=16 (repeatable)."
    ),
]
"""Overrides of a config's settings (``liploc train``, ``liploc cache warm``)."""
