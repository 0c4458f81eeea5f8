"""The ``liploc`` command line: thin wrappers that parse, call the library, and print.

Each command imports its library module lazily so that ``liploc info`` starts without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
cache_app = typer.Typer(
    help="The shared preprocessing cache: fill it, see its size, clear it.", no_args_is_help=True
)
app.add_typer(cache_app, name="cache")

console = Console()
err_console = Console(stderr=True)


def _fail(err: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code=1)


def _fail_if_disk_full(err: OSError, target: Path | None) -> None:
    """A full disk (or quota, or file-size limit) is an error line naming what could not be
    written; any other OSError is a bug and keeps its traceback."""
    from liploc.atomic import disk_full_error, is_space_error

    if not is_space_error(err):
        raise err
    _fail(disk_full_error(err.filename or target or Path.cwd(), err))


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
    except OSError as err:
        _fail_if_disk_full(err, out)


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
    allow_missing: Annotated[
        bool,
        typer.Option(
            "--allow-missing",
            help="Go on without named sequences that have no images, scans or poses (counted in the log).",
        ),
    ] = False,
) -> None:
    """Train the two towers; many GPUs/nodes: torchrun --nproc_per_node=N -m liploc train ..."""
    from liploc.training.train import configure_run, train

    try:
        extra = ["data.allow_missing=true"] if allow_missing else []
        cfg, run_dir = configure_run(config, data_root or [], [*(overrides or []), *extra], out)
        result = train(cfg, run_dir, resume=resume, progress=progress, console=console)
    except LiplocError as err:
        _fail(err)
    except OSError as err:
        _fail_if_disk_full(err, out)
    if result.stopped == "interrupted":
        raise typer.Exit(code=130)


# --- evaluate, map, localize -------------------------------------------------------------------
@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder (its best checkpoint) or a checkpoint file.")],
    data_root: Annotated[Path, typer.Option("--data-root", help="Dataset folder.")],
    sequence: Annotated[
        str | None,
        typer.Option(
            help="Query sequence (and database, except cross-drive); a frame range like 00[3000:] "
            "works too. Without it: the preset's (or the config's) test sequences."
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Protocol of the literature: lip-loc, kitti-b or kitti-a (one table, all test sequences)."
        ),
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option(help="same-sequence | cross-drive | revisit (default: the run's eval.protocol)"),
    ] = None,
    map_sequence: Annotated[
        str | None, typer.Option(help="Database sequence of the cross-drive protocol (same world frame).")
    ] = None,
    threshold: Annotated[
        list[float] | None, typer.Option(help="Distance threshold in metres (repeatable; first is main).")
    ] = None,
    revisit_window: Annotated[float | None, typer.Option(help="Revisit protocol: seconds left out.")] = None,
    exclude_self: Annotated[
        bool | None,
        typer.Option(
            "--exclude-self/--keep-self", help="Same-sequence: remove the query's own scan from the database."
        ),
    ] = None,
    allow_training_data: Annotated[
        bool,
        typer.Option(
            "--allow-training-data", help="Evaluate even on sequences the run trained or validated on."
        ),
    ] = False,
    layout: Annotated[str, typer.Option(help="Dataset layout, or auto.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN/eval/SEQ-PROTOCOL).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
) -> None:
    """Recall@K and @1% of camera queries against LiDAR scans; writes JSON and an HTML report."""
    try:
        if sequence is None:
            from liploc.errors import ConfigError
            from liploc.retrieval.protocols import evaluate_protocol

            options = {"protocol": protocol, "map_sequence": map_sequence, "threshold": threshold}
            options.update({"revisit_window": revisit_window, "exclude_self": exclude_self})
            given = [f"--{k.replace('_', '-')}" for k, v in options.items() if v is not None]
            if given:
                what = f"the preset {preset}" if preset else "the config's test split"
                raise ConfigError(
                    f"{', '.join(given)}: fixed by {what}; give --sequence to set them yourself"
                )
            evaluate_protocol(
                run,
                data_root,
                preset,
                layout=layout,
                out_dir=out,
                device=device,
                allow_training_data=allow_training_data,
                console=console,
            )
            return
        if preset is not None:
            from liploc.errors import ConfigError

            raise ConfigError("give --preset (all its test sequences) or --sequence, not both")
        from liploc.retrieval.evaluate import evaluate as run_evaluation

        run_evaluation(
            run,
            data_root,
            sequence,
            protocol=protocol,
            map_sequence=map_sequence,
            thresholds_m=threshold,
            revisit_window_s=revisit_window,
            exclude_self=exclude_self,
            allow_training_data=allow_training_data,
            layout=layout,
            out_dir=out,
            device=device,
            console=console,
        )
    except LiplocError as err:
        _fail(err)
    except OSError as err:
        _fail_if_disk_full(err, out)


@map_app.command("build")
def map_build(
    run: Annotated[Path, typer.Argument(help="Run folder or checkpoint file.")],
    data_root: Annotated[Path, typer.Option("--data-root", help="Dataset folder.")],
    sequence: Annotated[list[str], typer.Option(help="Sequence(s) whose scans make the map (repeatable).")],
    out: Annotated[Path, typer.Option(help="Map folder to write.")],
    layout: Annotated[str, typer.Option(help="Dataset layout, or auto.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing map at --out.")] = False,
) -> None:
    """Embed the LiDAR scans of sequences into a self-contained map (embeddings, poses, index, model)."""
    from liploc.retrieval.localize import build_map

    try:
        build_map(run, data_root, sequence, out, layout=layout, device=device, console=console, force=force)
    except LiplocError as err:
        _fail(err)
    except OSError as err:
        _fail_if_disk_full(err, out)


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
) -> None:
    """Top-k map poses (x, y, yaw, score) for each camera image."""
    import json

    from rich.table import Table

    from liploc.retrieval.localize import Localizer

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


# --- cache -------------------------------------------------------------------------------------
CacheDirOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Cache folder (default: data.cache_dir, else $LIPLOC_CACHE_DIR or ~/.cache/liploc/preprocess).",
    ),
]


@cache_app.command("warm")
def cache_warm(
    config: Annotated[Path, typer.Argument(help="Config YAML whose data (every split) to preprocess.")],
    data_root: Annotated[
        list[str] | None,
        typer.Option("--data-root", metavar="DIR|LAYOUT=DIR", help="Dataset folder (as for train)."),
    ] = None,
    cache_dir: CacheDirOption = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override a setting (repeatable).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: one per core).")] = None,
) -> None:
    """Preprocess every frame of a config's datasets into the shared cache, with all cores."""
    from liploc.training.preprocess_cache import cache_usage, human_bytes, warm_cache
    from liploc.training.train import configure_run

    try:
        cfg, _ = configure_run(config, data_root or [], overrides or [])
        with _progress() as progress:
            result = warm_cache(cfg, cache_dir or cfg.data.cache_dir, workers, progress)
        usage = cache_usage(result.folder.parent)
    except LiplocError as err:
        _fail(err)
    console.print(
        f"cache {result.folder}: {result.made} entries made, {result.present} already there "
        f"({result.frames} frames; cache now {usage.entries} entries, {human_bytes(usage.bytes)})"
    )


def _progress() -> Any:  # a rich Progress, imported lazily
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _cache_folder(cache_dir: Path | None) -> Path:
    from liploc.training.preprocess_cache import default_cache_dir

    return cache_dir if cache_dir is not None else default_cache_dir()


@cache_app.command("info")
def cache_info(cache_dir: CacheDirOption = None) -> None:
    """Entries and size of the preprocessing cache, per preprocessing setting."""
    from liploc.training.preprocess_cache import cache_usage, human_bytes

    usage = cache_usage(_cache_folder(cache_dir))
    console.print(f"{usage.folder}: {usage.entries} entries, {human_bytes(usage.bytes)}")
    for key, (n, size) in usage.per_settings.items():
        console.print(f"  settings {key}: {n} entries, {human_bytes(size)}")


@cache_app.command("clear")
def cache_clear(cache_dir: CacheDirOption = None) -> None:
    """Remove every entry of the preprocessing cache (it is rebuilt as needed)."""
    from liploc.training.preprocess_cache import clear_cache, human_bytes

    usage = clear_cache(_cache_folder(cache_dir))
    console.print(f"cleared {usage.folder}: freed {human_bytes(usage.bytes)} ({usage.entries} entries)")


def main() -> None:
    """Entry point for ``python -m liploc``."""
    app()


if __name__ == "__main__":
    main()
