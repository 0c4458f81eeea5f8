"""``liploc import lip-loc`` and ``liploc export``: models in and out of liploc (the work:
:mod:`liploc.interop.lip_loc` and :mod:`liploc.interop.onnx_export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from liploc.commands._common import console, reported_errors
from liploc.commands.options import EXISTING, examples

IMPORT_HELP = "Import models trained by other code as liploc runs."
"""What ``liploc import --help`` says of the group."""
IMPORT_EPILOG = examples(
    "liploc import lip-loc best.pth --out runs/lip-loc",
    "liploc import lip-loc best_v1norm.pth --out runs/lip-loc-norm --v1norm",
    "liploc evaluate runs/lip-loc --data-root /data/kitti/dataset --sequence 8",
)
EXPORT_EPILOG = examples(
    "liploc export runs/kitti_resnet50 --out exports/kitti_resnet50",
    "liploc export runs/kitti_resnet50 --out exports/kitti_resnet50 --force",
)

Checkpoint = Annotated[
    Path,
    typer.Argument(
        metavar="CHECKPOINT", help="The authors' checkpoint (.pth: torch.save of the state_dict).", **EXISTING
    ),
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
    from liploc.commands.preflight import check_import_output

    with reported_errors(writing=out):
        check_import_output(out)  # before torch loads
        from liploc.interop.lip_loc import import_lip_loc as run_import

        result = run_import(checkpoint, out, backbone=backbone, normalized=v1norm)
    how = "inferred from the tensors" if result.backbone_inferred else "as given"
    fc = f", encoder fc -> {result.encoder_fc_dim}" if result.encoder_fc_dim else ""
    console.print(
        f"imported {checkpoint}: camera {result.image_backbone}, LiDAR {result.lidar_backbone} ({how}){fc}, "
        f"{result.embed_dim}-d {'unit-norm (cosine)' if v1norm else 'raw dot-product'} embeddings, "
        f"{result.num_tensors} tensors"
    )
    console.print(f"wrote {result.checkpoint} and {result.run_dir / 'config.yaml'}")


ExportRun = Annotated[
    Path,
    typer.Argument(metavar="RUN", help="Run folder (its best checkpoint) or a checkpoint file.", **EXISTING),
]
ExportOut = Annotated[Path, typer.Option("--out", help="Export folder to write.")]
ExportFormat = Annotated[
    Literal["onnx"], typer.Option("--format", metavar="FORMAT", help="Export format: onnx.")
]
ExportForce = Annotated[
    bool,
    typer.Option("--force", help="Replace an earlier export at --out (atomically: old or new, never half)."),
]


def export(run: ExportRun, out: ExportOut, format: ExportFormat = "onnx", force: ExportForce = False) -> None:
    """Both towers as ONNX graphs (dynamic batch) with a JSON of their preprocessing."""
    from liploc.commands.preflight import check_export_output, require_checkpoint

    with reported_errors(writing=out):
        check_export_output(out, force)  # before torch loads
        require_checkpoint(run)
        from liploc.interop.onnx_export import PARITY_TOLERANCE, export_onnx

        result = export_onnx(run, out)
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in result.max_abs_diff.items())
    console.print(f"ONNX export of model {result.fingerprint[:12]} written to {result.folder}")
    console.print(f"largest difference to torch: {diffs} (tolerance {PARITY_TOLERANCE:g})")
