"""The ``liploc`` command line: thin wrappers that parse, call the library, and print.

Each command imports its library module lazily so that ``liploc info`` starts without torch.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape
from rich.table import Table

from liploc import __version__
from liploc.console import make_console, new_table, print_line, print_table
from liploc.errors import ConfigError, LiplocError
from liploc.help_format import install_help_types

install_help_types()

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
import_app = typer.Typer(help="Import models trained by other code as liploc runs.", no_args_is_help=True)
app.add_typer(import_app, name="import")

console = make_console()
err_console = make_console(stderr=True)

# Arguments are checked here, before a command imports torch and its library (seconds), so that a
# mistyped value is refused at once, as a usage error (exit 2) without a traceback.
ProtocolName = Literal["same-sequence", "cross-drive", "revisit"]  # = retrieval.evaluate.PROTOCOLS
LAYOUT_HELP = "Dataset layout: auto (detect), kitti, semantickitti, kitti360 or kitti_raw."
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_BLOCKS = re.compile(r"^\d+x\d+$", re.IGNORECASE)
EXISTING = {"exists": True, "resolve_path": False}
EXISTING_DIR = {"exists": True, "file_okay": False}
INTERRUPTED = 130


def _fail(err: Exception) -> None:
    print_line(err_console, f"[bold red]error:[/] {escape(str(err))}")
    raise typer.Exit(code=1)


def _fail_if_disk_full(err: OSError, target: Path | None) -> None:
    """A full disk (or quota, or file-size limit) is an error line naming what could not be
    written; any other OSError is a bug and keeps its traceback."""
    from liploc.atomic import disk_full_error, is_space_error

    if not is_space_error(err):
        raise err
    _fail(disk_full_error(err.filename or target or Path.cwd(), err))


def _interrupted(what: str) -> None:
    print_line(err_console, f"interrupted: {what}")
    raise typer.Exit(code=INTERRUPTED)


def _check_device(value: str) -> str:
    if not _DEVICE.match(value):
        raise typer.BadParameter(f"'{value}' is not a device; use auto, cpu, cuda or cuda:N")
    return value


def _check_layout(value: str) -> str:
    if value != "auto":
        from liploc.datasets.registry import available_layouts

        if value not in available_layouts():
            raise typer.BadParameter(
                f"'{value}' is not a layout; use auto or {', '.join(available_layouts())}"
            )
    return value


def _check_thresholds(values: list[float] | None) -> list[float] | None:
    for value in values or []:
        if not math.isfinite(value) or value <= 0:
            raise typer.BadParameter(f"{value:g} m: a distance threshold must be above 0 m")
    return values


def _check_positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise typer.BadParameter(f"{value:g}: must be above 0")
    return value


def _check_blocks(value: str) -> str:
    if not _BLOCKS.match(value):
        raise typer.BadParameter(f"{value!r}: expected two numbers like 6x4")
    return value


def _check_map_folder(value: Path) -> Path:
    if not (value / "manifest.json").is_file():
        raise typer.BadParameter(
            f"{value} is not a map folder (no manifest.json); make one with `liploc map build`"
        )
    return value


def _version(value: bool) -> None:
    if value:
        typer.echo(f"liploc {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Global visual localization in LiDAR maps (LIP-Loc: LiDAR-image pretraining)."""


# --- info (datasets) -------------------------------------------------------------------------
@app.command(
    epilog="[bold]Examples[/]\n\n"
    "  liploc info /data/kitti/dataset\n\n"
    "  liploc info /data/kitti_raw --layout kitti_raw --no-check-files\n\n"
    "Exit status: 0 when the folder reads cleanly, 1 when a problem or no sequence is found."
)
def info(
    data_root: Annotated[
        Path,
        typer.Argument(
            metavar="DATA_ROOT", help="Dataset folder (KITTI, SemanticKITTI, KITTI-360, raw).", **EXISTING_DIR
        ),
    ],
    layout: Annotated[str, typer.Option(help=LAYOUT_HELP, callback=_check_layout)] = "auto",
    check_files: Annotated[
        bool, typer.Option("--check-files/--no-check-files", help="Check every scan's size and image header.")
    ] = True,
) -> None:
    """Describe a dataset folder: layout, sequences, frames, calibration and every problem found."""
    from liploc.commands.info import describe_dataset

    try:
        summary = describe_dataset(data_root, layout=layout, console=console, check_files=check_files)
    except LiplocError as err:
        _fail(err)
        return
    # A script (or CI) can tell a clean dataset from one with problems by the exit status.
    if summary.problems or not summary.sequences:
        raise typer.Exit(code=1)


# --- synth (synthetic KITTI-format drives) -----------------------------------------------------
@app.command(
    epilog="[bold]Examples[/]\n\n"
    "  liploc synth --out data/town --size small --drives 6 --frames 150 --held-out 2\n\n"
    "  liploc synth --out data/along08 --trajectory kitti/poses/08.txt --frames 0\n\n"
    "An interrupted run keeps its rendered frames: run the same command again to resume."
)
def synth(
    out: Annotated[Path, typer.Option("--out", help="Output folder (KITTI odometry layout).")],
    town_seed: Annotated[int, typer.Option(help="Seed of the town and its drives.")] = 0,
    drives: Annotated[int, typer.Option(help="Number of drives (sequences 00, 01, ...).", min=1)] = 4,
    frames: Annotated[
        int, typer.Option(help="Frames per drive (0 with --trajectory: all its poses).", min=0)
    ] = 200,
    size: Annotated[
        Literal["kitti", "small"],
        typer.Option(
            help="kitti: 1241x376 images, 64x2048 scans; small: 310x94, 64x1024.",
        ),
    ] = "kitti",
    held_out: Annotated[
        int, typer.Option(help="Drives on held-out streets no training drive uses.", min=0)
    ] = 0,
    pairs: Annotated[
        Literal["none", "same-direction", "reverse", "mixed"],
        typer.Option(
            metavar="PAIRS",
            help="Drives in pairs over the same streets: none, same-direction, reverse or mixed.",
        ),
    ] = "mixed",
    spacing: Annotated[
        float, typer.Option(help="Metres driven between frames.", callback=_check_positive)
    ] = 1.0,
    blocks: Annotated[str, typer.Option(help="Town size in blocks, XxY.", callback=_check_blocks)] = "6x4",
    trajectory: Annotated[
        Path | None,
        typer.Option(help="KITTI poses file to drive along; the town is built around it.", **EXISTING),
    ] = None,
    trajectory_calib: Annotated[
        Path | None, typer.Option(help="calib.txt of the trajectory (default: beside it).", **EXISTING)
    ] = None,
    pose_frame: Annotated[
        Literal["town", "first"],
        typer.Option(
            help="town: one frame for all sequences; first: each sequence starts at the identity (KITTI).",
        ),
    ] = "town",
    preview: Annotated[
        bool, typer.Option("--preview", help="Save preview.png: scan on image, range image.")
    ] = False,
    stats: Annotated[
        Path | None,
        typer.Option("--stats", help="Real dataset folder to compare scan statistics with.", **EXISTING_DIR),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Regenerate from scratch even if OUT holds the same output or a part of it."
        ),
    ] = False,
    workers: Annotated[
        int | None, typer.Option(help="Render threads (default: one per core, at most 8).", min=1)
    ] = None,
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
    except KeyboardInterrupt:
        from liploc.synth.generate import resume_hint

        _interrupted(resume_hint(out))


# --- train -------------------------------------------------------------------------------------
@app.command(
    "train",
    epilog="[bold]Examples[/]\n\n"
    "  liploc train configs/kitti_resnet50.yaml --data-root /data/kitti/dataset\n\n"
    "  liploc train runs/kitti_resnet50 --resume --set train.epochs=60\n\n"
    "  torchrun --nproc_per_node=4 -m liploc train configs/kitti_resnet50.yaml --data-root /data/kitti",
)
def train_command(
    config: Annotated[
        Path,
        typer.Argument(
            metavar="CONFIG", help="Config YAML (configs/*.yaml), or a run folder to resume.", **EXISTING
        ),
    ],
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
@app.command(
    epilog="[bold]Examples[/]\n\n"
    "  liploc evaluate runs/kitti_resnet50 --data-root /data/kitti/dataset --sequence 8\n\n"
    "  liploc evaluate runs/demo/run --data-root runs/demo/data --sequence 28 "
    "--protocol cross-drive --map-sequence 29 --json > metrics.json"
)
def evaluate(
    run: Annotated[
        Path,
        typer.Argument(
            metavar="RUN", help="Run folder (its best checkpoint) or a checkpoint file.", **EXISTING
        ),
    ],
    data_root: Annotated[Path, typer.Option("--data-root", help="Dataset folder.", **EXISTING_DIR)],
    sequence: Annotated[
        str | None,
        typer.Option(
            help="Query sequence (and database, except cross-drive); 8 means 08, 13 a drive_0013; a "
            "frame range like 00[3000:] works too. Without it: the preset's (or the config's) test "
            "sequences."
        ),
    ] = None,
    preset: Annotated[
        Literal["lip-loc", "kitti-b", "kitti-a"] | None,
        typer.Option(
            metavar="PRESET",
            help="Protocol of the literature: lip-loc, kitti-b or kitti-a (one table, all test sequences).",
        ),
    ] = None,
    protocol: Annotated[
        ProtocolName | None,
        typer.Option(
            metavar="PROTOCOL",
            help="same-sequence (the paper's), cross-drive (map from --map-sequence) or revisit "
            "(scans near the query in time left out) (default: the run's eval.protocol).",
        ),
    ] = None,
    map_sequence: Annotated[
        str | None, typer.Option(help="Database sequence of the cross-drive protocol (same world frame).")
    ] = None,
    threshold: Annotated[
        list[float] | None,
        typer.Option(
            help="Distance threshold in metres, above 0 (repeatable; first is the headline) "
            "(default: the run's eval.thresholds_m, 20 and 10 m in the shipped configs).",
            callback=_check_thresholds,
        ),
    ] = None,
    revisit_window: Annotated[
        float | None,
        typer.Option(
            help="Revisit protocol: scans within this many seconds of the query are left out "
            "(default: the run's eval.revisit_window_s, 30 s).",
            min=0,
        ),
    ] = None,
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
    layout: Annotated[str, typer.Option(help=LAYOUT_HELP, callback=_check_layout)] = "auto",
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN/eval/SEQ-PROTOCOL).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", callback=_check_device)] = "auto",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the metrics as JSON on stdout (messages go to stderr).")
    ] = False,
    also_reference_metric: Annotated[
        bool,
        typer.Option(
            "--also-reference-metric",
            help="Also print Recall@1 as the LIP-Loc reference code measures it (pose columns 1 and 2).",
        ),
    ] = False,
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
    import json

    from liploc.localization.sequences import SequenceSettings

    if (odometry or odometry_noise is not None) and seq_len is None:
        _fail(ConfigError("--odometry and --odometry-noise need --seq-len (sequence matching)"))
    settings = None
    if seq_len is not None:
        extra = {"odometry_noise": odometry_noise} if odometry_noise is not None else {}
        settings = SequenceSettings(seq_len=seq_len, **extra)
    try:
        if sequence is None:
            from liploc.evaluation.protocols import evaluate_protocol

            options = {"protocol": protocol, "map_sequence": map_sequence, "threshold": threshold}
            options.update({"revisit_window": revisit_window, "exclude_self": exclude_self})
            given = [f"--{k.replace('_', '-')}" for k, v in options.items() if v is not None]
            if given:
                what = f"the preset {preset}" if preset else "the config's test split"
                raise ConfigError(
                    f"{', '.join(given)}: fixed by {what}; give --sequence to set them yourself"
                )
            if also_reference_metric:
                raise ConfigError("--also-reference-metric works with --sequence (one sequence at a time)")
            report = evaluate_protocol(
                run,
                data_root,
                preset,
                layout=layout,
                out_dir=out,
                device=device,
                allow_training_data=allow_training_data,
                console=err_console if as_json else console,
            )
            if as_json:
                typer.echo(json.dumps(report.to_dict(), indent=2))
            return
        if preset is not None:
            raise ConfigError("give --preset (all its test sequences) or --sequence, not both")
        from liploc.evaluation.evaluate import EvaluationSettings
        from liploc.evaluation.evaluate import evaluate as run_evaluation

        output = run_evaluation(
            run,
            data_root,
            EvaluationSettings(
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
                also_reference_metric=also_reference_metric,
                sequence_settings=settings,
                odometry=odometry,
            ),
            console=err_console if as_json else console,
        )
    except LiplocError as err:
        _fail(err)
    except OSError as err:
        _fail_if_disk_full(err, out)
        return
    except KeyboardInterrupt:
        _interrupted("evaluation stopped; nothing was written")
    if as_json:
        payload = json.loads(output.files["metrics"].read_text())  # what metrics.json holds
        payload["files"] = {name: str(path) for name, path in output.files.items()}
        typer.echo(json.dumps(payload, indent=2))


@map_app.command(
    "build",
    epilog="[bold]Examples[/]\n\n"
    "  liploc map build runs/kitti_resnet50 --data-root /data/kitti/dataset --sequence 8 --out maps/08",
)
def map_build(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder or checkpoint file.", **EXISTING)],
    data_root: Annotated[Path, typer.Option("--data-root", help="Dataset folder.", **EXISTING_DIR)],
    sequence: Annotated[
        list[str], typer.Option(help="Sequence(s) whose scans make the map (repeatable; 8 means 08).")
    ],
    out: Annotated[Path, typer.Option(help="Map folder to write.")],
    layout: Annotated[str, typer.Option(help=LAYOUT_HELP, callback=_check_layout)] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", callback=_check_device)] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing map at --out.")] = False,
    onnx: Annotated[
        bool,
        typer.Option(
            "--onnx/--no-onnx",
            help="Keep an ONNX export of the camera tower in the map: `liploc localize` then starts "
            "without torch (a fraction of the time).",
        ),
    ] = True,
) -> None:
    """Embed the LiDAR scans of sequences into a self-contained map (embeddings, poses, index, model)."""
    from liploc.localization.localize import build_map

    try:
        build_map(
            run,
            data_root,
            sequence,
            out,
            layout=layout,
            device=device,
            console=console,
            force=force,
            onnx=onnx,
        )
    except LiplocError as err:
        _fail(err)
    except OSError as err:
        _fail_if_disk_full(err, out)


@app.command(
    epilog="[bold]Examples[/]\n\n"
    "  liploc localize maps/08 frame_000123.png\n\n"
    "  liploc localize maps/08 drive/image_2/ --json -k 1\n\n"
    "  liploc localize maps/08 'drive/image_2/0001*.png'"
)
def localize(
    map_dir: Annotated[
        Path,
        typer.Argument(
            metavar="MAP",
            help="Map folder from `liploc map build`.",
            callback=_check_map_folder,
            **EXISTING_DIR,
        ),
    ],
    images: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE...",
            help="Camera images: files, folders (their images) or quoted globs, localized in sorted order.",
        ),
    ],
    k: Annotated[int, typer.Option("-k", "--top-k", help="Poses to return per image.", min=1)] = 5,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Embed queries with this model instead of the map's own copy.", **EXISTING),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", callback=_check_device)] = "auto",
    backend: Annotated[
        Literal["auto", "torch", "onnx"],
        typer.Option(
            metavar="BACKEND",
            help="onnx: onnxruntime on an ONNX export (no torch); torch; auto: onnx on the CPU when "
            "the map holds an export (map build makes one) and neither --checkpoint, --sequence nor "
            "a CUDA --device asks for torch, else torch.",
        ),
    ] = "auto",
    onnx_dir: Annotated[
        Path | None, typer.Option("--onnx", help="ONNX export folder (default MAP/model/onnx).")
    ] = None,
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

    from liploc.localization.query_images import check_query_image, expand_query_paths

    if travelled is not None and not sequence:
        _fail(ConfigError("--travelled needs --sequence"))
    try:
        # Checked from their headers before the model loads: a wrong image is refused at once.
        checked = [check_query_image(path) for path in expand_query_paths(images)]
    except LiplocError as err:
        _fail(err)
        return
    for query in checked:
        if query.warning:
            print_line(err_console, f"[yellow]warning:[/] {query.warning}")
    paths = [query.path for query in checked]
    if sequence:
        _localize_sequence(map_dir, paths, k, checkpoint, as_json, device, travelled, backend, onnx_dir)
        return
    if backend == "auto":
        backend = _localize_backend(map_dir, onnx_dir, checkpoint, device, sequence)

    try:
        if backend == "onnx":
            if checkpoint is not None:
                raise ConfigError("--checkpoint is for the torch backend; give --onnx DIR for onnx")
            from liploc.localization.onnx_localizer import OnnxLocalizer

            results = OnnxLocalizer.open(map_dir, onnx_dir).localize(paths, k)
        else:
            from liploc.localization.localize import Localizer

            results = Localizer.open(map_dir, checkpoint, device).localize(paths, k)
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
            for img, matches in zip(paths, results, strict=True)
        ]
        typer.echo(json.dumps(payload, indent=2))
        return
    for img, matches in zip(paths, results, strict=True):
        print_table(console, matches_table(str(img), matches))


def _localize_backend(
    map_dir: Path, onnx_dir: Path | None, checkpoint: Path | None, device: str, sequence: bool
) -> Literal["torch", "onnx"]:
    """``--backend auto``: onnx where it gives the poses torch gives without loading torch (on a
    CPU, with the map's own model, single images, a map embedded in fp32 as the export runs),
    else torch."""
    import json

    from liploc.config import resolved_precision
    from liploc.interop.onnx_encoder import SPEC_FILE
    from liploc.localization.map_folder import MAP_ONNX_DIR

    export = onnx_dir if onnx_dir is not None else map_dir / MAP_ONNX_DIR
    if (
        checkpoint is not None
        or sequence
        or device not in ("auto", "cpu")
        or not (export / SPEC_FILE).is_file()
    ):
        return "torch"
    try:
        precision = json.loads((map_dir / "manifest.json").read_text()).get("embedding_precision")
        if precision is None:
            # A map that did not record it: torch embeds its queries with the model's
            # train.precision as it resolves on a CPU (auto backend only runs there).
            model_json = json.loads((map_dir / MAP_ONNX_DIR.parent / "model.json").read_text())
            train = model_json["metadata"]["config"].get("train", {})
            precision = resolved_precision(train.get("precision", "auto"), cuda_bf16=False)
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return "torch"  # which reports what is wrong with the map
    return "onnx" if precision == "fp32" else "torch"


def matches_table(title: str, matches: list) -> Table:
    """The table of ``localize``: one row per returned pose (fits 80 columns with raw drive names)."""
    columns = ("rank", "score", "sequence", "frame", "x (m)", "y (m)", "yaw\n(deg)")
    table = new_table(*columns, title=title, right=tuple(c for c in columns if c != "sequence"))
    for m in matches:
        table.add_row(
            str(m.rank),
            f"{m.score:.3f}",
            m.sequence,
            str(m.frame_index),
            f"{m.xy[0]:.1f}",
            f"{m.xy[1]:.1f}",
            f"{m.yaw_deg:.0f}",
        )
    return table


# --- import ---------------------------------------------------------------------------------------
@import_app.command("lip-loc")
def import_lip_loc(
    checkpoint: Annotated[
        Path, typer.Argument(help="The authors' checkpoint (.pth: torch.save of the state_dict).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder to create.")],
    backbone: Annotated[
        str | None,
        typer.Option(
            help="timm name of the encoders (resnet50, vit_small_patch16_224, ...); default: inferred."
        ),
    ] = None,
    v1norm: Annotated[
        bool,
        typer.Option(
            "--v1norm",
            help="The checkpoint is of the authors' CLIPModelV1Norm (L2-normalised embeddings, cosine "
            "retrieval); default CLIPModelV1 (raw dot product). The tensors cannot tell them apart.",
        ),
    ] = False,
) -> None:
    """The LIP-Loc authors' checkpoint as a liploc run (paper-exact settings) for evaluate, map, localize."""
    from liploc.interop.lip_loc import import_lip_loc as run_import

    try:
        result = run_import(checkpoint, out, backbone=backbone, normalized=v1norm)
    except LiplocError as err:
        _fail(err)
        return
    how = "inferred from the tensors" if result.backbone_inferred else "as given"
    fc = f", encoder fc -> {result.encoder_fc_dim}" if result.encoder_fc_dim else ""
    console.print(
        f"imported {checkpoint}: camera {result.image_backbone}, LiDAR {result.lidar_backbone} ({how}){fc}, "
        f"{result.embed_dim}-d {'unit-norm (cosine)' if v1norm else 'raw dot-product'} embeddings, "
        f"{result.num_tensors} tensors"
    )
    console.print(f"wrote {result.checkpoint} and {result.run_dir / 'config.yaml'}")


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
    map_dir: Annotated[
        Path,
        typer.Argument(
            metavar="MAP",
            help="Map folder from `liploc map build`.",
            callback=_check_map_folder,
            **EXISTING_DIR,
        ),
    ],
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda or cuda:N (torch backend).", callback=_check_device)
    ] = "auto",
    backend: Annotated[
        Literal["torch", "onnx"],
        typer.Option(metavar="BACKEND", help="torch, or onnx (onnxruntime, no torch)."),
    ] = "torch",
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
    max_wait_ms: Annotated[float, typer.Option(help="Longest wait to fill a batch.")] = 10.0,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads of the network's forward pass (default: half the cores).", min=1),
    ] = None,
    decode_threads: Annotated[
        int | None, typer.Option(help="Threads decoding uploads (default: the cores, at most 8).", min=1)
    ] = None,
    max_k: Annotated[int, typer.Option(help="Largest k a request may ask for.")] = 100,
    max_images_per_request: Annotated[int, typer.Option(help="Most images per /localize/batch.")] = 32,
    max_sequence_images: Annotated[
        int, typer.Option(help="Most images per /localize/sequence (its window).")
    ] = 64,
) -> None:
    """HTTP localization service and map page: POST /localize, /localize/batch, /localize/sequence;
    GET /, /map, /docs."""
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
                max_sequence_images=max_sequence_images,
                **({"network_threads": threads} if threads is not None else {}),
                **({"decode_threads": decode_threads} if decode_threads is not None else {}),
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
            threads=settings.network_threads,
        )
        run_server(service, settings, console)
    except LiplocError as err:
        _fail(err)


def _localize_sequence(
    map_dir: Path,
    images: list[Path],
    k: int,
    checkpoint: Path | None,
    as_json: bool,
    device: str,
    travelled: str | None,
    backend: str = "auto",
    onnx_dir: Path | None = None,
) -> None:
    import json

    from rich.table import Table

    try:
        distances = None
        if travelled is not None:
            try:
                distances = [float(v) for v in travelled.split(",") if v.strip()]
            except ValueError:
                msg = f"--travelled: expected comma-separated metres, got '{travelled}'"
                raise ConfigError(msg) from None
        if backend == "onnx":
            # Only when asked: auto stays on torch here, whose poses the onnx network matches
            # within 1e-4 but not bit for bit, and sequence matching imports torch anyway.
            if checkpoint is not None:
                raise ConfigError("--checkpoint is for the torch backend; give --onnx DIR for onnx")
            from liploc.localization.onnx_localizer import OnnxLocalizer

            localizer = OnnxLocalizer.open(map_dir, onnx_dir).sequence_localizer()
        else:
            from liploc.localization.localize import Localizer

            localizer = Localizer.open(map_dir, checkpoint, device)
        result = localizer.localize_sequence(images, k, travelled_m=distances)
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
            f"{m.yaw_deg:.0f}",
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
@app.command(
    epilog="[bold]Examples[/]\n\n  liploc demo\n\n  liploc demo --out runs/demo2 --town-seed 8 --epochs 10"
)
def demo(
    out: Annotated[Path, typer.Option(help="Demo folder (data, run, eval, metrics.json).")] = Path(
        "runs/demo"
    ),
    town_seed: Annotated[int, typer.Option(help="Seed of the synthetic town.")] = 7,
    drives: Annotated[int, typer.Option(help="Drives (2 of them on held-out streets).", min=3)] = 30,
    frames: Annotated[int, typer.Option(help="Frames per drive.", min=2)] = 120,
    epochs: Annotated[int, typer.Option(help="Training epochs.", min=1)] = 25,
    config: Annotated[
        Path | None, typer.Option(help="Training config (default configs/tiny.yaml).", **EXISTING)
    ] = None,
    threads: Annotated[
        int,
        typer.Option(help="CPU threads of torch, the same on every machine so that results repeat.", min=1),
    ] = 2,
    sequence_window: Annotated[
        list[float] | None,
        typer.Option(
            "--sequence-window",
            min=0.0,
            help="Metres of driving for sequence matching, a row each; repeat for more "
            "(default 20 and 60; 0: single images only).",
        ),
    ] = None,
) -> None:
    """Synthetic town -> train the tiny model on CPU -> evaluate on held-out streets -> report."""
    from liploc.commands.demo import DemoOptions, run_demo

    try:
        extra: dict[str, Any] = {"config": config} if config is not None else {}
        if sequence_window is not None:
            extra["sequence_windows_m"] = tuple(sequence_window)
        options = DemoOptions(
            town_seed=town_seed,
            drives=drives,
            frames=frames,
            epochs=epochs,
            torch_threads=threads,
            **extra,
        )
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
    from liploc.runtime.cache_warming import warm_cache
    from liploc.runtime.preprocess_cache import cache_usage, human_bytes
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
    from liploc.runtime.preprocess_cache import default_cache_dir

    return cache_dir if cache_dir is not None else default_cache_dir()


@cache_app.command("info")
def cache_info(cache_dir: CacheDirOption = None) -> None:
    """Entries and size of the preprocessing cache, per preprocessing setting."""
    from liploc.runtime.preprocess_cache import cache_usage, human_bytes

    usage = cache_usage(_cache_folder(cache_dir))
    console.print(f"{usage.folder}: {usage.entries} entries, {human_bytes(usage.bytes)}")
    for key, (n, size) in usage.per_settings.items():
        console.print(f"  settings {key}: {n} entries, {human_bytes(size)}")


@cache_app.command("clear")
def cache_clear(cache_dir: CacheDirOption = None) -> None:
    """Remove every entry of the preprocessing cache (it is rebuilt as needed)."""
    from liploc.runtime.preprocess_cache import clear_cache, human_bytes

    usage = clear_cache(_cache_folder(cache_dir))
    console.print(f"cleared {usage.folder}: freed {human_bytes(usage.bytes)} ({usage.entries} entries)")


def main() -> None:
    """Entry point for ``python -m liploc``."""
    app()


if __name__ == "__main__":
    main()
