"""The ``liploc`` command line: thin wrappers that parse, call the library, and print.

Each command imports its library module lazily so that ``liploc info`` starts without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from liploc.errors import ConfigError, LiplocError

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


# --- synth (synthetic KITTI-format drives) -----------------------------------------------------
@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Output folder (KITTI odometry layout).")],
    town_seed: Annotated[int, typer.Option(help="Seed of the town and its drives.")] = 0,
    drives: Annotated[int, typer.Option(help="Number of drives (sequences 00, 01, ...).")] = 4,
    frames: Annotated[int, typer.Option(help="Frames per drive (0 with --trajectory: all its poses).")] = 200,
    size: Annotated[
        str, typer.Option(help="kitti: 1241x376 images, 64x2048 scans; small: 310x94, 64x1024.")
    ] = "kitti",
    held_out: Annotated[int, typer.Option(help="Drives on held-out streets no training drive uses.")] = 0,
    pairs: Annotated[
        str, typer.Option(help="Drives in pairs over the same streets: none, same-direction, reverse, mixed.")
    ] = "mixed",
    spacing: Annotated[float, typer.Option(help="Metres driven between frames.")] = 1.0,
    blocks: Annotated[str, typer.Option(help="Town size in blocks, XxY.")] = "6x4",
    trajectory: Annotated[
        Path | None, typer.Option(help="KITTI poses file to drive along; the town is built around it.")
    ] = None,
    trajectory_calib: Annotated[
        Path | None, typer.Option(help="calib.txt of the trajectory (default: beside it).")
    ] = None,
    pose_frame: Annotated[
        str, typer.Option(help="town: one frame for all sequences; first: KITTI style.")
    ] = "town",
    preview: Annotated[
        bool, typer.Option("--preview", help="Save preview.png: scan on image, range image.")
    ] = False,
    stats: Annotated[
        Path | None, typer.Option("--stats", help="Real dataset folder to compare scan statistics with.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Regenerate even if OUT holds the same output.")
    ] = False,
    workers: Annotated[int | None, typer.Option(help="Render threads (default: one per core).")] = None,
) -> None:
    """Synthetic drives through procedural towns, written like KITTI odometry (image_2, velodyne, poses)."""
    from liploc.synth.command import make_options, parse_blocks, run_synth

    try:
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
    except LiplocError as err:
        _fail(err)


# --- train -------------------------------------------------------------------------------------
@app.command("train")
def train_command(
    config: Annotated[Path, typer.Argument(help="Config YAML (configs/*.yaml), or a run folder to resume.")],
    data_root: Annotated[
        list[str] | None,
        typer.Option(
            "--data-root",
            metavar="DIR|LAYOUT=DIR",
            help="Dataset folder for every dataset entry without a root; LAYOUT=DIR for the entries "
            "of one layout (repeatable, for combined configs).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run folder (default: runs/<config name>).")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="KEY=VALUE", help="Override a setting, e.g. train.batch_size=16 (repeatable)."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run folder from its last checkpoint.")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")] = True,
) -> None:
    """Train the two towers; many GPUs/nodes: torchrun --nproc_per_node=N -m liploc train ..."""
    from liploc.training.train import configure_run, train

    try:
        cfg, run_dir = configure_run(config, data_root or [], overrides or [], out)
        result = train(cfg, run_dir, resume=resume, progress=progress, console=console)
    except LiplocError as err:
        _fail(err)
    if result.stopped == "interrupted":
        raise typer.Exit(code=130)


# --- evaluate, map, localize -------------------------------------------------------------------
@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder (its best checkpoint) or a checkpoint file.")],
    data_root: Annotated[Path, typer.Option("--data-root", help="Dataset folder.")],
    sequence: Annotated[str, typer.Option(help="Query sequence (and database, except cross-drive).")],
    protocol: Annotated[str, typer.Option(help="same-sequence | cross-drive | revisit")] = "same-sequence",
    map_sequence: Annotated[
        str | None, typer.Option(help="Database sequence of the cross-drive protocol.")
    ] = None,
    threshold: Annotated[
        list[float] | None, typer.Option(help="Distance threshold in metres (repeatable; first is main).")
    ] = None,
    revisit_window: Annotated[float | None, typer.Option(help="Revisit protocol: seconds left out.")] = None,
    layout: Annotated[str, typer.Option(help="Dataset layout, or auto.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN/eval/SEQ-PROTOCOL).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
) -> None:
    """Recall@1/5/10 and @1% of camera queries against LiDAR scans; writes JSON and an HTML report."""
    from liploc.retrieval.evaluate import evaluate as run_evaluation

    try:
        run_evaluation(
            run,
            data_root,
            sequence,
            protocol=protocol,
            map_sequence=map_sequence,
            thresholds_m=threshold,
            revisit_window_s=revisit_window,
            layout=layout,
            out_dir=out,
            device=device,
            console=console,
        )
    except LiplocError as err:
        _fail(err)


@map_app.command("build")
def map_build(
    run: Annotated[Path, typer.Argument(help="Run folder or checkpoint file.")],
    data_root: Annotated[Path, typer.Option("--data-root", help="Dataset folder.")],
    sequence: Annotated[list[str], typer.Option(help="Sequence(s) whose scans make the map (repeatable).")],
    out: Annotated[Path, typer.Option(help="Map folder to write.")],
    layout: Annotated[str, typer.Option(help="Dataset layout, or auto.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
) -> None:
    """Embed the LiDAR scans of sequences into a self-contained map (embeddings, poses, index, model)."""
    from liploc.retrieval.localize import build_map

    try:
        build_map(run, data_root, sequence, out, layout=layout, device=device, console=console)
    except LiplocError as err:
        _fail(err)


@app.command()
def localize(
    map_dir: Annotated[Path, typer.Argument(help="Map folder from `liploc map build`.")],
    images: Annotated[list[Path], typer.Argument(help="Camera image files to localize.")],
    k: Annotated[int, typer.Option("-k", "--top-k", help="Poses to return per image.")] = 5,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Embed queries with this model instead of the map's own copy.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
    backend: Annotated[
        str, typer.Option(help="torch, or onnx: onnxruntime on an ONNX export (no torch).")
    ] = "torch",
    onnx_dir: Annotated[
        Path | None, typer.Option("--onnx", help="ONNX export folder (default MAP/model/onnx).")
    ] = None,
) -> None:
    """Top-k map poses (x, y, yaw, score) for each camera image."""
    import json

    from rich.table import Table

    try:
        if backend == "onnx":
            if checkpoint is not None:
                raise ConfigError("--checkpoint is for the torch backend; give --onnx DIR for onnx")
            from liploc.interop.onnx_localizer import OnnxLocalizer

            results = OnnxLocalizer.open(map_dir, onnx_dir).localize(images, k)
        elif backend == "torch":
            from liploc.retrieval.localize import Localizer

            results = Localizer.open(map_dir, checkpoint, device).localize(images, k)
        else:
            raise ConfigError(f"unknown backend '{backend}' (torch or onnx)")
    except LiplocError as err:
        _fail(err)
        return
    if as_json:
        payload = [
            {
                "image": str(img),
                "matches": [
                    {
                        "rank": m.rank,
                        "score": m.score,
                        "sequence": m.sequence,
                        "frame": m.frame_index,
                        "x": float(m.xy[0]),
                        "y": float(m.xy[1]),
                        "yaw_rad": m.yaw,
                        "pose": m.pose.tolist(),
                    }
                    for m in matches
                ],
            }
            for img, matches in zip(images, results, strict=True)
        ]
        typer.echo(json.dumps(payload, indent=2))
        return
    for img, matches in zip(images, results, strict=True):
        table = Table(title=str(img))
        for col in ("rank", "score", "sequence", "frame", "x (m)", "y (m)", "yaw (deg)"):
            table.add_column(col, justify="right")
        for m in matches:
            table.add_row(
                str(m.rank),
                f"{m.score:.3f}",
                m.sequence,
                str(m.frame_index),
                f"{m.xy[0]:.1f}",
                f"{m.xy[1]:.1f}",
                f"{m.yaw * 57.29577951308232:.0f}",
            )
        console.print(table)


# --- export, serve -----------------------------------------------------------------------------
@app.command("export")
def export_command(
    run: Annotated[Path, typer.Argument(help="Run folder (its best checkpoint) or a checkpoint file.")],
    out: Annotated[Path, typer.Option("--out", help="Export folder to write (replaced atomically).")],
    format: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
) -> None:
    """Both towers as ONNX graphs (dynamic batch) with a JSON of their preprocessing."""
    if format != "onnx":
        _fail(ConfigError(f"unknown export format '{format}' (onnx)"))
    from liploc.interop.onnx_export import PARITY_TOLERANCE, export_onnx

    try:
        result = export_onnx(run, out)
    except LiplocError as err:
        _fail(err)
        return
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in result.max_abs_diff.items())
    console.print(f"ONNX export of model {result.fingerprint[:12]} written to {result.folder}")
    console.print(f"largest difference to torch: {diffs} (tolerance {PARITY_TOLERANCE:g})")


@app.command()
def serve(
    map_dir: Annotated[Path, typer.Argument(help="Map folder from `liploc map build`.")],
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ... (torch backend).")] = "auto",
    backend: Annotated[str, typer.Option(help="torch, or onnx (onnxruntime, no torch).")] = "torch",
    onnx_dir: Annotated[
        Path | None, typer.Option("--onnx", help="ONNX export folder (default MAP/model/onnx).")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Embed queries with this model (must be the map's).")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="The map's dataset, for range images on the page.")
    ] = None,
    layout: Annotated[str, typer.Option(help="Dataset layout of --data-root, or auto.")] = "auto",
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body in MiB.")] = 20.0,
    max_batch: Annotated[int, typer.Option(help="Most images per forward pass.")] = 16,
    max_wait_ms: Annotated[float, typer.Option(help="Longest wait to fill a batch.")] = 3.0,
    max_k: Annotated[int, typer.Option(help="Largest k a request may ask for.")] = 100,
    max_images_per_request: Annotated[int, typer.Option(help="Most images per /localize/batch.")] = 32,
) -> None:
    """HTTP localization service and map page: POST /localize, /localize/batch; GET /, /map, /docs."""
    from pydantic import ValidationError

    from liploc.serving.engine import MapService
    from liploc.serving.server import serve as run_server
    from liploc.serving.settings import ServeSettings

    try:
        try:
            settings = ServeSettings(
                host=host,
                port=port,
                max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                max_batch=max_batch,
                max_wait_ms=max_wait_ms,
                max_k=max_k,
                max_images_per_request=max_images_per_request,
            )
        except ValidationError as err:
            raise ConfigError(
                f"serve settings: {err.errors()[0]['loc'][0]}: {err.errors()[0]['msg']}"
            ) from None
        service = MapService.open(
            map_dir,
            backend=backend,  # type: ignore[arg-type]
            device=device,
            checkpoint=checkpoint,
            onnx_dir=onnx_dir,
            data_root=data_root,
            layout=layout,
        )
        run_server(service, settings, console)
    except LiplocError as err:
        _fail(err)


# --- demo ---------------------------------------------------------------------------------------
@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Demo folder (data, run, eval, metrics.json).")] = Path(
        "runs/demo"
    ),
    town_seed: Annotated[int, typer.Option(help="Seed of the synthetic town.")] = 7,
    drives: Annotated[int, typer.Option(help="Drives (2 of them on held-out streets).")] = 30,
    frames: Annotated[int, typer.Option(help="Frames per drive.")] = 120,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 25,
    config: Annotated[Path | None, typer.Option(help="Training config (default configs/tiny.yaml).")] = None,
) -> None:
    """Synthetic town -> train the tiny model on CPU -> evaluate on held-out streets -> report."""
    from liploc.demo import DemoOptions, run_demo

    try:
        extra = {"config": config} if config is not None else {}
        options = DemoOptions(town_seed=town_seed, drives=drives, frames=frames, epochs=epochs, **extra)
        run_demo(out, options, console=console)
    except LiplocError as err:
        _fail(err)


def main() -> None:
    """Entry point for ``python -m liploc``."""
    app()


if __name__ == "__main__":
    main()
