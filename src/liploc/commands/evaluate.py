"""``liploc evaluate``: recall of camera queries against LiDAR scans, one sequence or a preset's
test sequences (the work: :mod:`liploc.evaluation.evaluate` and :mod:`liploc.evaluation.protocols`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from liploc.commands._common import console, err_console, fail, reported_errors
from liploc.commands.options import (
    EXISTING,
    DataRoot,
    Device,
    Layout,
    ProtocolName,
    check_thresholds,
    examples,
)
from liploc.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

EPILOG = examples(
    "liploc evaluate runs/kitti_resnet50 --data-root /data/kitti/dataset --sequence 8",
    "liploc evaluate runs/kitti_resnet50 --data-root /data/kitti/dataset --preset kitti-b",
    "liploc evaluate runs/demo/run --data-root runs/demo/data --sequence 28 "
    "--protocol cross-drive --map-sequence 29 --json > metrics.json",
)

Run = Annotated[
    Path,
    typer.Argument(metavar="RUN", help="Run folder (its best checkpoint) or a checkpoint file.", **EXISTING),
]
QuerySequence = Annotated[
    str | None,
    typer.Option(
        help="Query sequence (and database, except cross-drive); 8 means 08, 13 a drive_0013; a "
        "frame range like 00[3000:] works too. Without it: the preset's (or the config's) test "
        "sequences."
    ),
]
Preset = Annotated[
    Literal["lip-loc", "kitti-b", "kitti-a"] | None,
    typer.Option(
        metavar="PRESET",
        help="Protocol of the literature: lip-loc, kitti-b or kitti-a (one table, all test sequences).",
    ),
]
Protocol = Annotated[
    ProtocolName | None,
    typer.Option(
        metavar="PROTOCOL",
        help="same-sequence (the paper's), cross-drive (map from --map-sequence) or revisit "
        "(scans near the query in time left out) (default: the run's eval.protocol).",
    ),
]
MapSequence = Annotated[
    str | None, typer.Option(help="Database sequence of the cross-drive protocol (same world frame).")
]
Threshold = Annotated[
    list[float] | None,
    typer.Option(
        help="Distance threshold in metres, above 0 (repeatable; first is the headline) "
        "(default: the run's eval.thresholds_m, 20 and 10 m in the shipped configs).",
        callback=check_thresholds,
    ),
]
RevisitWindow = Annotated[
    float | None,
    typer.Option(
        help="Revisit protocol: scans within this many seconds of the query are left out "
        "(default: the run's eval.revisit_window_s, 30 s).",
        min=0,
    ),
]
ExcludeSelf = Annotated[
    bool | None,
    typer.Option(
        "--exclude-self/--keep-self", help="Same-sequence: remove the query's own scan from the database."
    ),
]
AllowTrainingData = Annotated[
    bool,
    typer.Option("--allow-training-data", help="Evaluate even on sequences the run trained or validated on."),
]
Out = Annotated[Path | None, typer.Option(help="Output folder (default RUN/eval/SEQ-PROTOCOL).")]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print the metrics as JSON on stdout (messages go to stderr).")
]
AlsoReferenceMetric = Annotated[
    bool,
    typer.Option(
        "--also-reference-metric",
        help="Also print Recall@1 as the LIP-Loc reference code measures it (pose columns 1 and 2).",
    ),
]
SeqLen = Annotated[
    int | None,
    typer.Option(
        "--seq-len",
        min=1,
        help="Also localize each query with the last L images of its drive (sequence matching).",
    ),
]
Odometry = Annotated[
    bool,
    typer.Option(
        "--odometry",
        help="Sequence matching knows the distance travelled between images (from the poses, noisy).",
    ),
]
OdometryNoise = Annotated[
    float | None,
    typer.Option("--odometry-noise", min=0.0, help="Relative noise of the odometry (default 0.1)."),
]


def evaluate(
    run: Run,
    data_root: DataRoot,
    sequence: QuerySequence = None,
    preset: Preset = None,
    protocol: Protocol = None,
    map_sequence: MapSequence = None,
    threshold: Threshold = None,
    revisit_window: RevisitWindow = None,
    exclude_self: ExcludeSelf = None,
    allow_training_data: AllowTrainingData = False,
    layout: Layout = "auto",
    out: Out = None,
    device: Device = "auto",
    as_json: AsJson = False,
    also_reference_metric: AlsoReferenceMetric = False,
    seq_len: SeqLen = None,
    odometry: Odometry = False,
    odometry_noise: OdometryNoise = None,
) -> None:
    """Recall@1/5/10 and @1% of camera queries against LiDAR scans; writes JSON and an HTML report."""
    from liploc.localization.sequences import SequenceSettings

    if (odometry or odometry_noise is not None) and seq_len is None:
        fail(ConfigError("--odometry and --odometry-noise need --seq-len (sequence matching)"))
    settings = None
    if seq_len is not None:
        extra = {"odometry_noise": odometry_noise} if odometry_noise is not None else {}
        settings = SequenceSettings(seq_len=seq_len, **extra)
    # With --json the metrics are the only thing on stdout.
    messages = err_console if as_json else console
    with reported_errors(writing=out, interrupted="evaluation stopped; nothing was written"):
        if sequence is None:
            fixed = {"protocol": protocol, "map_sequence": map_sequence, "threshold": threshold}
            fixed.update({"revisit_window": revisit_window, "exclude_self": exclude_self})
            report = _evaluate_preset(
                run, data_root, preset, fixed, also_reference_metric, layout, out, device,
                allow_training_data, messages,
            )  # fmt: skip
            if as_json:
                typer.echo(json.dumps(report.to_dict(), indent=2))
            return
        if preset is not None:
            raise ConfigError("give --preset (all its test sequences) or --sequence, not both")
        from liploc.commands.preflight import check_evaluation

        # The protocol, the run's checkpoint and the sequences are checked before torch loads.
        check_evaluation(run, data_root, layout, sequence, protocol, map_sequence, exclude_self)
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
            console=messages,
        )
    if as_json:
        payload = json.loads(output.files["metrics"].read_text())  # what metrics.json holds
        payload["files"] = {name: str(path) for name, path in output.files.items()}
        typer.echo(json.dumps(payload, indent=2))


def _evaluate_preset(
    run: Path,
    data_root: Path,
    preset: str | None,
    fixed: dict[str, Any],
    also_reference_metric: bool,
    layout: str,
    out: Path | None,
    device: str,
    allow_training_data: bool,
    messages: Console,
) -> Any:
    """All test sequences of ``preset`` (or of the run's config) in one table; the options that
    the preset fixes (``fixed``: name -> value, None when not given) are refused, before torch."""
    given = [f"--{k.replace('_', '-')}" for k, v in fixed.items() if v is not None]
    if given:
        what = f"the preset {preset}" if preset else "the config's test split"
        raise ConfigError(f"{', '.join(given)}: fixed by {what}; give --sequence to set them yourself")
    if also_reference_metric:
        raise ConfigError("--also-reference-metric works with --sequence (one sequence at a time)")
    from liploc.evaluation.protocols import evaluate_protocol

    return evaluate_protocol(
        run,
        data_root,
        preset,  # type: ignore[arg-type]
        layout=layout,
        out_dir=out,
        device=device,
        allow_training_data=allow_training_data,
        console=messages,
    )
