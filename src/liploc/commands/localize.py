"""``liploc localize``: top-k map poses of camera images, or of the last of a sequence.

The images are checked from their headers before any model loads; the backend is chosen by
:func:`liploc.localization.backend.choose_backend`; the results print themselves
(:mod:`liploc.localization.results`), as tables or as the JSON ``liploc serve`` answers with.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from liploc.commands._common import console, err_console, fail, reported_errors
from liploc.commands.options import EXISTING, Device, MapArgument, OnnxDir, examples
from liploc.console import print_line, print_table
from liploc.errors import ConfigError

EPILOG = examples(
    "liploc localize maps/08 frame_000123.png",
    "liploc localize maps/08 drive/image_2/ --json -k 1",
    "liploc localize maps/08 'drive/image_2/0001*.png'",
    "liploc localize maps/08 f0.png f1.png f2.png f3.png --sequence --travelled 1.1,0.9,1.0",
)

Images = Annotated[
    list[str],
    typer.Argument(
        metavar="IMAGE...",
        help="Camera images: files, folders (their images) or quoted globs, localized in sorted order.",
    ),
]
TopK = Annotated[int, typer.Option("-k", "--top-k", help="Poses to return per image.", min=1)]
Checkpoint = Annotated[
    Path | None, typer.Option(help="Embed queries with this model instead of the map's own copy.", **EXISTING)
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
BackendOption = Annotated[
    Literal["auto", "torch", "onnx"],
    typer.Option(
        metavar="BACKEND",
        help="onnx: onnxruntime on an ONNX export (no torch); torch; auto: onnx with --onnx DIR, "
        "or on the CPU when the map holds an export (map build makes one) and neither --checkpoint, "
        "--sequence nor a CUDA --device asks for torch, else torch.",
    ),
]
SequenceFlag = Annotated[
    bool,
    typer.Option(
        "--sequence",
        help="The images are consecutive, in driving order: localize the last one by sequence matching.",
    ),
]
Travelled = Annotated[
    str | None,
    typer.Option(
        "--travelled",
        help="With --sequence: metres driven between consecutive images, comma-separated (odometry).",
    ),
]


def localize(
    map_dir: MapArgument,
    images: Images,
    k: TopK = 5,
    checkpoint: Checkpoint = None,
    as_json: AsJson = False,
    device: Device = "auto",
    backend: BackendOption = "auto",
    onnx_dir: OnnxDir = None,
    sequence: SequenceFlag = False,
    travelled: Travelled = None,
) -> None:
    """Top-k map poses (x, y, yaw, score) for each camera image (or for the last one, --sequence)."""
    from liploc.localization.backend import choose_backend, open_localizer
    from liploc.localization.results import LocalizedImage, LocalizedSequence

    if travelled is not None and not sequence:
        fail(ConfigError("--travelled needs --sequence"))
    with reported_errors():
        paths = _checked_images(images)
        distances = _parse_travelled(travelled, len(paths)) if travelled is not None else None
        if backend == "auto":
            backend = choose_backend(map_dir, onnx_dir, checkpoint, device, sequence)
        localizer = open_localizer(
            map_dir, backend, checkpoint=checkpoint, device=device, onnx_dir=onnx_dir, sequence=sequence
        )
        if sequence:
            found = localizer.localize_sequence(paths, k, travelled_m=distances)
            result = LocalizedSequence([str(p) for p in paths], found.matches, found.path, distances)
            payload: Any = result.to_json()
            tables = list(result.tables())
        else:
            matches = localizer.localize(paths, k)
            results = [LocalizedImage(str(p), m) for p, m in zip(paths, matches, strict=True)]
            payload = [r.to_json() for r in results]
            tables = [r.table() for r in results]
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
    else:
        for table in tables:
            print_table(console, table)
        print_line(console, f"[dim]{_answered_by(backend, map_dir, onnx_dir, localizer)}[/]")


def _answered_by(backend: str, map_dir: Path, onnx_dir: Path | None, localizer: Any) -> str:
    """Which network embedded the images: the backends agree within 1e-4 (an export is refused
    beyond), not bit for bit."""
    if backend == "onnx":
        from liploc.localization.map_folder import MapFolder

        return f"embedded by onnxruntime from {onnx_dir or MapFolder(map_dir).onnx_dir}"
    return f"embedded by torch on {localizer.device}"


def _checked_images(images: list[str]) -> list[Path]:
    """The query files, each checked from its header (a wrong image is refused before the model
    loads); warnings about an image that works but may localize badly go to stderr."""
    from liploc.localization.query_images import check_query_image, expand_query_paths

    checked = [check_query_image(path) for path in expand_query_paths(images)]
    for query in checked:
        if query.warning:
            print_line(err_console, f"[yellow]warning:[/] {query.warning}")
    return [query.path for query in checked]


def _parse_travelled(text: str, images: int) -> list[float]:
    """The metres of ``--travelled``, checked against the number of images before a model loads
    (the Localizer's own checks, with its words)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--travelled: expected comma-separated metres, got '{text}'") from None
    if len(values) != images - 1:
        raise ConfigError(
            f"{images} images need {images - 1} travelled distance{'s' if images != 2 else ''} "
            f"(one between each pair of consecutive images), got {len(values)}"
        )
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ConfigError(f"--travelled: distances must be finite and >= 0 metres, got {text}")
    return values
