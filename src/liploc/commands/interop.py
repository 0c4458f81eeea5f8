"""``liploc import lip-loc`` and ``liploc export``: models in and out of liploc (the work:
:mod:`liploc.interop.lip_loc` and :mod:`liploc.interop.onnx_export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from liploc.commands._common import console, fail, reported_errors
from liploc.errors import ConfigError

IMPORT_HELP = "Import models trained by other code as liploc runs."
"""What ``liploc import --help`` says of the group."""

Checkpoint = Annotated[
    Path, typer.Argument(help="The authors' checkpoint (.pth: torch.save of the state_dict).")
]
RunOut = Annotated[Path, typer.Option("--out", help="Run folder to create.")]
Backbone = Annotated[
    str | None,
    typer.Option(help="timm name of the encoders (resnet50, vit_small_patch16_224, ...); default: inferred."),
]
V1Norm = Annotated[
    bool,
    typer.Option(
        "--v1norm",
        help="The checkpoint is of the authors' CLIPModelV1Norm (L2-normalised embeddings, cosine "
        "retrieval); default CLIPModelV1 (raw dot product). The tensors cannot tell them apart.",
    ),
]


def import_lip_loc(
    checkpoint: Checkpoint, out: RunOut, backbone: Backbone = None, v1norm: V1Norm = False
) -> None:
    """The LIP-Loc authors' checkpoint as a liploc run (paper-exact settings) for evaluate, map, localize."""
    from liploc.interop.lip_loc import import_lip_loc as run_import

    with reported_errors(writing=out):
        result = run_import(checkpoint, out, backbone=backbone, normalized=v1norm)
    how = "inferred from the tensors" if result.backbone_inferred else "as given"
    fc = f", encoder fc -> {result.encoder_fc_dim}" if result.encoder_fc_dim else ""
    console.print(
        f"imported {checkpoint}: camera {result.image_backbone}, LiDAR {result.lidar_backbone} ({how}){fc}, "
        f"{result.embed_dim}-d {'unit-norm (cosine)' if v1norm else 'raw dot-product'} embeddings, "
        f"{result.num_tensors} tensors"
    )
    console.print(f"wrote {result.checkpoint} and {result.run_dir / 'config.yaml'}")


ExportRun = Annotated[Path, typer.Argument(help="Run folder (its best checkpoint) or a checkpoint file.")]
ExportOut = Annotated[Path, typer.Option("--out", help="Export folder to write (replaced atomically).")]
ExportFormat = Annotated[str, typer.Option("--format", help="Export format: onnx.")]


def export(run: ExportRun, out: ExportOut, format: ExportFormat = "onnx") -> None:
    """Both towers as ONNX graphs (dynamic batch) with a JSON of their preprocessing."""
    if format != "onnx":
        fail(ConfigError(f"unknown export format '{format}' (onnx)"))
    from liploc.interop.onnx_export import PARITY_TOLERANCE, export_onnx

    with reported_errors(writing=out):
        result = export_onnx(run, out)
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in result.max_abs_diff.items())
    console.print(f"ONNX export of model {result.fingerprint[:12]} written to {result.folder}")
    console.print(f"largest difference to torch: {diffs} (tolerance {PARITY_TOLERANCE:g})")
