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
    seq_len: Annotated[
        int | None,
        typer.Option(
            "--seq-len",
            min=1,
            help="Also localize each query with the last L images of its drive (sequence matching).",
        ),
    ] = None,
    odometry: Annotated[
        bool,
        typer.Option(
            "--odometry",
            help="Sequence matching knows the distance travelled between images (from the poses, noisy).",
        ),
    ] = False,
    odometry_noise: Annotated[
        float | None,
        typer.Option("--odometry-noise", min=0.0, help="Relative noise of the odometry (default 0.1)."),
    ] = None,
) -> None:
    """Recall@1/5/10 and @1% of camera queries against LiDAR scans; writes JSON and an HTML report."""
    from liploc.retrieval.evaluate import evaluate as run_evaluation
    from liploc.retrieval.sequences import SequenceSettings

    if (odometry or odometry_noise is not None) and seq_len is None:
        _fail(ConfigError("--odometry and --odometry-noise need --seq-len (sequence matching)"))
    settings = None
    if seq_len is not None:
        extra = {"odometry_noise": odometry_noise} if odometry_noise is not None else {}
        settings = SequenceSettings(seq_len=seq_len, **extra)
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
            sequence_settings=settings,
            odometry=odometry,
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
    sequence: Annotated[
        bool,
        typer.Option(
            "--sequence",
            help="The images are consecutive, in driving order: localize the last one by sequence matching.",
        ),
    ] = False,
    travelled: Annotated[
        str | None,
        typer.Option(
            "--travelled",
            help="With --sequence: metres driven between consecutive images, comma-separated (odometry).",
        ),
    ] = None,
) -> None:
    """Top-k map poses (x, y, yaw, score) for each camera image (or for the last one, --sequence)."""
    import json

    from rich.table import Table

    from liploc.retrieval.localize import Localizer

    if travelled is not None and not sequence:
        _fail(ConfigError("--travelled needs --sequence"))
    if sequence:
        _localize_sequence(map_dir, images, k, checkpoint, as_json, device, travelled)
        return
    try:
        results = Localizer.open(map_dir, checkpoint, device).localize(images, k)
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


def _localize_sequence(
    map_dir: Path,
    images: list[Path],
    k: int,
    checkpoint: Path | None,
    as_json: bool,
    device: str,
    travelled: str | None,
) -> None:
    import json

    from rich.table import Table

    from liploc.retrieval.localize import Localizer

    try:
        distances = None
        if travelled is not None:
            try:
                distances = [float(v) for v in travelled.split(",") if v.strip()]
            except ValueError:
                msg = f"--travelled: expected comma-separated metres, got '{travelled}'"
                raise ConfigError(msg) from None
        result = Localizer.open(map_dir, checkpoint, device).localize_sequence(
            images, k, travelled_m=distances
        )
    except LiplocError as err:
        _fail(err)
        return

    def place(m) -> dict:
        return {
            "sequence": m.sequence,
            "frame": m.frame_index,
            "x": float(m.xy[0]),
            "y": float(m.xy[1]),
            "yaw_rad": m.yaw,
            "pose": m.pose.tolist(),
        }

    if as_json:
        payload = {
            "image": str(images[-1]),
            "images": [str(p) for p in images],
            "travelled_m": distances,
            "matches": [{"rank": m.rank, "score": m.score, **place(m)} for m in result.matches],
            "path": [
                {"image": str(img), **({"similarity": m.score, **place(m)} if m is not None else {})}
                for img, m in zip(images, result.path, strict=True)
            ],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    table = Table(title=f"{images[-1]} (sequence of {len(images)} images)")
    for col in ("rank", "score (z)", "sequence", "frame", "x (m)", "y (m)", "yaw (deg)"):
        table.add_column(col, justify="right")
    for m in result.matches:
        table.add_row(
            str(m.rank),
            f"{m.score:.2f}",
            m.sequence,
            str(m.frame_index),
            f"{m.xy[0]:.1f}",
            f"{m.xy[1]:.1f}",
            f"{m.yaw * 57.29577951308232:.0f}",
        )
    console.print(table)
    path = Table(title="best path (oldest image first)")
    for col in ("image", "sequence", "frame", "x (m)", "y (m)", "cosine"):
        path.add_column(col, justify="right")
    for img, m in zip(images, result.path, strict=True):
        if m is None:
            path.add_row(str(img), "off map", "", "", "", "")
        else:
            path.add_row(
                str(img), m.sequence, str(m.frame_index), f"{m.xy[0]:.1f}", f"{m.xy[1]:.1f}", f"{m.score:.3f}"
            )
    console.print(path)


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
    sequence_window: Annotated[
        float,
        typer.Option(
            "--sequence-window",
            min=0.0,
            help="Metres of driving for sequence matching (0: single images only).",
        ),
    ] = 20.0,
) -> None:
    """Synthetic town -> train the tiny model on CPU -> evaluate on held-out streets -> report."""
    from liploc.demo import DemoOptions, run_demo

    try:
        extra = {"config": config} if config is not None else {}
        options = DemoOptions(
            town_seed=town_seed,
            drives=drives,
            frames=frames,
            epochs=epochs,
            sequence_window_m=sequence_window,
            **extra,
        )
        run_demo(out, options, console=console)
    except LiplocError as err:
        _fail(err)


def main() -> None:
    """Entry point for ``python -m liploc``."""
    app()


if __name__ == "__main__":
    main()
