"""The literature's evaluation protocols on KITTI, by name, and the one table each prints.

A figure is only comparable with a published one under the same protocol: the same training and
test sequences, the same distance threshold, and the same answer to "is the query's own scan in
the database?". Each preset evaluates every test sequence on its own (same-sequence: the camera
images of a sequence query the LiDAR scans of that sequence) and prints one table, a row per
sequence and then the mean over sequences, as the papers' tables do; the same goes to JSON.

- ``lip-loc`` (LIP-Loc, WACV 2024): train 00-07 (largest setting: + 11-21 with SemanticKITTI poses,
  leaving out 14 as the authors' code does), test 08 and 09, 20 m, own scan in the database.
- ``kitti-b`` (CMVM, RangeBEV, DXPR): train 11-21 (SemanticKITTI poses), test 00, 02, 05, 06, 07,
  08 each on its own, 10 m, own scan removed from the database; R@1, R@5, R@1%.
- ``kitti-a`` (I2P-Rec, ModaLink, InsCMPR): train the first 3000 frames of 00, test the rest of 00
  and 02, 05, 06, 08, 10 m, own scan in the database (the query's own scan is its true match).

Sequence names are KITTI odometry's; the data root is a KITTI odometry or SemanticKITTI folder
(or one laid out like it, e.g. ``liploc synth --pose-frame first``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from liploc.atomic import atomic_write_text
from liploc.config import Config
from liploc.datasets import open_dataset
from liploc.datasets.sequence_range import SequenceRange, parse_ranges
from liploc.errors import ConfigError, DataError
from liploc.evaluation.evaluate import EvaluationOutput, evaluate, run_dir_of
from liploc.evaluation.metrics import format_percent
from liploc.evaluation.settings import EvaluationSettings, protocol_label
from liploc.evaluation.training_overlap import refuse_training_data
from liploc.runtime.run_folder import load_model_from_checkpoint


@dataclass(frozen=True)
class ProtocolPreset:
    """One evaluation protocol of the literature.

    Attributes:
        name: the preset's name (``kitti-b``).
        source: the papers that use it.
        train: training sequences (frame ranges allowed).
        train_largest: sequences added for the largest training setting (empty when none).
        test: test sequences, each evaluated on its own.
        threshold_m: a retrieval is correct within this ground-plane distance.
        own_scan_in_database: whether the query's own scan stays in the database.
        ks: the Recall@K reported (Recall@1% is always added).
        published_r1: sequence -> method -> published Recall@1 in percent, for reference.
    """

    name: str
    source: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    threshold_m: float
    own_scan_in_database: bool
    train_largest: tuple[str, ...] = ()
    ks: tuple[int, ...] = (1, 5)
    published_r1: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def exclude_self(self) -> bool:
        """Whether the query's own scan is taken out of the database."""
        return not self.own_scan_in_database

    @property
    def label(self) -> str:
        """``kitti-b, 10 m, own scan removed from database``."""
        own = "own scan in database" if self.own_scan_in_database else "own scan removed from database"
        return f"{self.name}, {self.threshold_m:g} m, {own}"


def _kitti(numbers: range | list[int]) -> tuple[str, ...]:
    return tuple(f"{n:02d}" for n in numbers)


PRESETS: dict[str, ProtocolPreset] = {
    "lip-loc": ProtocolPreset(
        name="lip-loc",
        source="LIP-Loc (WACV 2024)",
        train=_kitti(range(0, 8)),
        train_largest=_kitti([n for n in range(11, 22) if n != 14]),
        test=("08", "09"),
        threshold_m=20.0,
        own_scan_in_database=True,
    ),
    "kitti-b": ProtocolPreset(
        name="kitti-b",
        source="CMVM, RangeBEV, DXPR",
        train=_kitti(range(11, 22)),
        test=("00", "02", "05", "06", "07", "08"),
        threshold_m=10.0,
        own_scan_in_database=False,
        published_r1={"00": {"ModaLink": 90.3, "CMVM": 93.1, "RangeBEV": 99.0, "DXPR": 99.85}},
    ),
    "kitti-a": ProtocolPreset(
        name="kitti-a",
        source="I2P-Rec, ModaLink, InsCMPR",
        train=("00[0:3000]",),
        test=("00[3000:]", "02", "05", "06", "08"),
        threshold_m=10.0,
        own_scan_in_database=True,
    ),
}
"""The presets by name."""


def get_preset(name: str) -> ProtocolPreset:
    """The preset called ``name``; a ConfigError listing the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown protocol preset '{name}'; known: {', '.join(PRESETS)}") from None


@dataclass
class SequenceRow:
    """The figures of one test sequence."""

    sequence: str
    queries: int
    """Queries counted (those with a positive in their database)."""
    without_positive: int
    database: int
    recall: dict[int, float]
    recall_one_percent: float
    k_one_percent: int
    chance_r1: float
    median_error_m: float
    metrics_file: str


@dataclass
class ProtocolReport:
    """The table of a protocol run: one row per test sequence and their mean."""

    protocol: str
    label: str
    threshold_m: float
    own_scan_in_database: bool
    ks: tuple[int, ...]
    rows: list[SequenceRow]
    published_r1: dict[str, dict[str, float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def mean(self) -> dict[str, float]:
        """Unweighted mean over sequences of each recall (as the papers average their rows)."""
        out = {f"R@{k}": _mean([r.recall[k] for r in self.rows]) for k in self.ks}
        out["R@1%"] = _mean([r.recall_one_percent for r in self.rows])
        out["chance R@1"] = _mean([r.chance_r1 for r in self.rows])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: protocol, threshold, own scan in database, rows, mean, published figures."""
        rows = []
        for r in self.rows:
            row = asdict(r)
            row["recall"] = {str(k): _json(v) for k, v in r.recall.items()}
            for key in ("recall_one_percent", "chance_r1", "median_error_m"):
                row[key] = _json(row[key])
            rows.append(row)
        return {
            "protocol": self.protocol,
            "protocol_label": self.label,
            "threshold_m": self.threshold_m,
            "own_scan_in_database": self.own_scan_in_database,
            "ks": list(self.ks),
            "rows": rows,
            "mean": {k: _json(v) for k, v in self.mean().items()},
            "published_r1": self.published_r1,
            "info": self.info,
        }


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _json(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def protocol_table(report: ProtocolReport) -> Table:
    """The report as a rich table: a row per sequence, then the mean; recall in percent."""
    table = Table(title=report.label)
    table.add_column("sequence", no_wrap=True)
    table.add_column("queries", justify="right")
    table.add_column("scans", justify="right")
    for k in report.ks:
        table.add_column(f"R@{k}", justify="right")
    table.add_column("R@1%", justify="right")
    table.add_column("chance R@1", justify="right")
    for r in report.rows:
        table.add_row(
            r.sequence,
            str(r.queries),
            str(r.database),
            *(format_percent(r.recall[k]) for k in report.ks),
            format_percent(r.recall_one_percent),
            format_percent(r.chance_r1),
        )
    mean = report.mean()
    table.add_row(
        "mean", "", "", *(format_percent(mean[f"R@{k}"]) for k in report.ks),
        format_percent(mean["R@1%"]), format_percent(mean["chance R@1"]),
        style="bold", end_section=True,
    )  # fmt: skip
    return table


def published_lines(report: ProtocolReport) -> list[str]:
    """``published R@1 on 00 (kitti-b): ModaLink 90.3, ...`` lines, for reference."""
    return [
        f"published R@1 on {seq} ({report.protocol}, for reference): "
        + ", ".join(f"{method} {value}" for method, value in figures.items())
        for seq, figures in report.published_r1.items()
    ]


def config_test_ranges(config: Config, layout: str) -> list[SequenceRange]:
    """The test sequences of a config's dataset entries of ``layout`` (all entries when none matches)."""
    entries = [e for e in config.data.datasets if e.test and e.layout in (layout, "auto")]
    entries = entries or [e for e in config.data.datasets if e.test]
    return [r for e in entries for r in parse_ranges(e.test)]


@dataclass(frozen=True)
class ProtocolPlan:
    """What a protocol run evaluates: its sequences and the one protocol applied to each.

    Attributes:
        name: ``kitti-b`` or ``config-test``: the report's protocol and default folder name.
        label: the table's title (``kitti-b, 10 m, own scan removed from database``).
        ranges: the test sequences (or frame ranges), each evaluated on its own.
        protocol: ``same-sequence`` or ``revisit``.
        threshold_m: the one distance threshold.
        exclude_self: whether each query's own scan leaves its database.
        ks: the Recall@K reported.
        published_r1: the published figures of the preset (empty for a config's test split).
    """

    name: str
    label: str
    ranges: list[SequenceRange]
    protocol: str
    threshold_m: float
    exclude_self: bool
    ks: tuple[int, ...]
    published_r1: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def own_scan_in_database(self) -> bool:
        """Whether the query's own scan stays in its database."""
        return self.protocol == "same-sequence" and not self.exclude_self

    def settings(
        self, spec: SequenceRange, out: Path, layout: str, device: str, batch_size: int | None
    ) -> EvaluationSettings:
        """The evaluation of one test sequence, written to ``out/<sequence slug>``."""
        return EvaluationSettings(
            sequence=str(spec),
            protocol=self.protocol,
            thresholds_m=(self.threshold_m,),
            ks=self.ks,
            exclude_self=self.exclude_self,
            allow_training_data=True,  # checked by evaluate_protocol for all sequences at once
            layout=layout,
            out_dir=out / spec.slug,
            device=device,
            batch_size=batch_size,
            num_examples=0,
        )


def preset_plan(name: str) -> ProtocolPlan:
    """The plan of a preset of the literature (same-sequence on each of its test sequences)."""
    chosen = get_preset(name)
    return ProtocolPlan(
        name=chosen.name,
        label=chosen.label,
        ranges=parse_ranges(chosen.test),
        protocol="same-sequence",
        threshold_m=chosen.threshold_m,
        exclude_self=chosen.exclude_self,
        ks=chosen.ks,
        published_r1=chosen.published_r1,
    )


def config_test_plan(config: Config, layout: str) -> ProtocolPlan:
    """The plan of a run's own test split: its ``eval.protocol``, first threshold and ``exclude_self``."""
    ranges = config_test_ranges(config, layout)
    if not ranges:
        raise ConfigError(
            "no sequence to evaluate: give --sequence or --preset, or list data.datasets[].test "
            "(or eval.preset) in the run's config"
        )
    protocol, threshold = config.eval.protocol, config.eval.thresholds_m[0]
    if protocol == "cross-drive":
        raise ConfigError("eval.protocol cross-drive needs --sequence and --map-sequence")
    exclude_self = config.eval.exclude_self and protocol == "same-sequence"
    return ProtocolPlan(
        name="config-test",
        label=f"config test split: {protocol_label(protocol, threshold, exclude_self)}",
        ranges=ranges,
        protocol=protocol,
        threshold_m=threshold,
        exclude_self=exclude_self,
        ks=tuple(config.eval.ks),
    )


def evaluate_protocol(
    checkpoint: str | Path,
    data_root: str | Path,
    preset: str | None = None,
    *,
    layout: str = "auto",
    out_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    allow_training_data: bool = False,
    console: Console | None = None,
) -> ProtocolReport:
    """Evaluate every test sequence of a protocol and write its table as JSON.

    Args:
        checkpoint: run folder or checkpoint file.
        data_root: dataset folder holding the test sequences (KITTI odometry layout for presets).
        preset: ``lip-loc``, ``kitti-b`` or ``kitti-a``; None: the run's ``eval.preset``, else the
            ``data.datasets[].test`` sequences of its config with ``eval.protocol`` (same-sequence
            or revisit), ``eval.thresholds_m[0]`` and ``eval.exclude_self``.
        out_dir: where to write (default ``<run>/eval/<preset>``): ``protocol.json`` and one
            folder per sequence with its metrics and embeddings.
        allow_training_data: go on when the run trained or validated on a test sequence.
    """
    model, config = load_model_from_checkpoint(checkpoint)
    preset = preset or config.eval.preset
    if preset is not None:
        plan = preset_plan(preset)
    else:
        plan = config_test_plan(config, open_dataset(data_root, layout).name)
    _require_test_sequences(plan, data_root, layout)
    overlaps = refuse_training_data(config, plan.ranges, allow_training_data, f"run {run_dir_of(checkpoint)}")
    out = Path(out_dir) if out_dir is not None else run_dir_of(checkpoint) / "eval" / plan.name
    rows = []
    for spec in plan.ranges:
        if console is not None:
            console.print(f"{plan.name}: evaluating {spec}")
        settings = plan.settings(spec, out, layout, device, batch_size)
        ev = evaluate(checkpoint, data_root, settings, model=model, config=config)
        rows.append(sequence_row(spec, ev, plan.ks))
    report = ProtocolReport(
        protocol=plan.name,
        label=plan.label,
        threshold_m=plan.threshold_m,
        own_scan_in_database=plan.own_scan_in_database,
        ks=plan.ks,
        rows=rows,
        published_r1=plan.published_r1,
        info={
            "evaluation_protocol": plan.protocol,
            "data_root": str(data_root),
            "checkpoint": str(checkpoint),
            "evaluated_on_training_data": overlaps,
        },
    )
    path = write_protocol_report(report, out)
    if console is not None:
        print_protocol_report(console, report, overlaps, path)
    return report


def _require_test_sequences(plan: ProtocolPlan, data_root: str | Path, layout: str) -> None:
    reader = open_dataset(data_root, layout)
    missing = [str(r) for r in plan.ranges if r.sequence not in reader.sequences()]
    if missing:
        found = ", ".join(reader.sequences()) or "none"
        raise DataError(
            data_root, f"{plan.name}: test sequences {', '.join(missing)} not found (found: {found})"
        )


def sequence_row(spec: SequenceRange, ev: EvaluationOutput, ks: tuple[int, ...]) -> SequenceRow:
    """The row of one test sequence, from its evaluation at the protocol's one threshold."""
    main = ev.result.main
    return SequenceRow(
        sequence=str(spec),
        queries=main.num_counted,
        without_positive=main.num_without_positive,
        database=ev.result.db_size,
        recall={k: main.recall[k] for k in ks},
        recall_one_percent=main.recall_one_percent,
        k_one_percent=ev.result.k_one_percent,
        chance_r1=main.chance[1],
        median_error_m=main.median_error_m,
        metrics_file=str(ev.files["metrics"]),
    )


def write_protocol_report(report: ProtocolReport, out: Path) -> Path:
    """``out/protocol.json``: the table, its mean and the published figures."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "protocol.json"
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2))
    return path


def print_protocol_report(console: Console, report: ProtocolReport, overlaps: list[str], path: Path) -> None:
    """The table, the published figures beside it, warnings about training data, the file written."""
    console.print(protocol_table(report))
    for line in published_lines(report):
        console.print(line)
    for line in overlaps:
        console.print(f"[yellow]warning:[/] evaluated on training data: {line}")
    console.print(f"wrote {path}")
