"""Evaluation protocols: same-sequence (the paper), cross-drive, and revisit.

- ``same-sequence``: every camera image of a sequence queries every LiDAR scan of that sequence.
- ``cross-drive``: the map (database) comes from one drive, the queries from another drive over
  the same streets (``map_sequence``).
- ``revisit``: as same-sequence, but scans taken within ``revisit_window_s`` of the query leave
  the database, so only true revisits of a place can be found.

Same-sequence with ``exclude_self`` takes each query's own scan out of its database (the
protocol of later work, e.g. kitti-b). Cross-drive needs both drives in one world frame (see
``DatasetReader.world_frame``): positions of different worlds cannot be compared. A sequence may
be a frame range (``00[3000:]``). The run's training and validation sequences are refused
(``allow_training_data`` to go on); the literature's protocols by name are in ``protocols.py``.

A retrieval is correct when the retrieved scan lies within the threshold (ground-plane distance)
of the query's true position. Frames without a pose are left out of both sides and counted.

:func:`evaluate` takes one :class:`EvaluationSettings` and runs these stages, each a function
here: :func:`select_frames` (queries and database), :func:`embed` (through the run's embedding
cache), :func:`database_exclusion` and :func:`run_info`, the single-image scores, the
sequence-matching rows (:func:`sequence_rows`), :func:`write_outputs` and :func:`print_summary`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from liploc.atomic import atomic_write_bytes, atomic_write_text, npy_bytes, sweep_temporary_files
from liploc.config import Config
from liploc.console import print_line, print_table, progress_bar
from liploc.datasets import DatasetReader, Frame, load_image, load_scan, open_dataset
from liploc.datasets.base import require_sequences, unpaired_count
from liploc.datasets.frame import frame_times
from liploc.datasets.sequence_names import resolve_sequence_name
from liploc.datasets.sequence_range import SequenceRange
from liploc.errors import ConfigError, DataError
from liploc.evaluation.metrics import (
    RetrievalResult,
    SameScanExclusion,
    Scoring,
    TimeWindowExclusion,
    evaluate_retrieval,
)
from liploc.evaluation.reference_metric import ReferenceMetric, reference_metric
from liploc.evaluation.report import RetrievalExample, example_rank_name, select_examples, write_report
from liploc.evaluation.sequence_rows import evaluate_sequences, single_and_sequence_table
from liploc.evaluation.settings import (
    EvaluationSettings,
    own_scan_in_database,
    protocol_label,
    report_title,
)
from liploc.evaluation.training_overlap import refuse_training_data
from liploc.lidar import RangeProjector
from liploc.localization.embedding import EmbeddingCache, embed_with_cache
from liploc.models import TwoTowerModel
from liploc.runtime.data_roots import posed
from liploc.runtime.device import pick_device
from liploc.runtime.run_folder import load_model_from_checkpoint, resolve_checkpoint


@dataclass
class EvaluationOutput:
    """What an evaluation produced."""

    result: RetrievalResult
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    skipped_without_pose: int = 0
    sequence_result: RetrievalResult | None = None
    """Sequence matching over the last ``seq_len`` images (``EvaluationSettings.seq_len``), else None."""


@dataclass(frozen=True)
class EvaluationFrames:
    """The frames of an evaluation, with a pose, and what was left out.

    Attributes:
        reader: the dataset they come from.
        query_range: the query sequence (or frame range), its name as the dataset spells it.
        database_range: the database's: the map drive for cross-drive, else ``query_range``.
        queries, database: the frames, in frame order.
        query_xy, database_xy: (Q, 2) and (N, 2) ground-plane positions.
        queries_without_pose, database_without_pose: frames left out for want of a pose.
        evaluated_on_training_data: what the run trained or validated on among them (allowed).
        unpaired: scans or images without their pair in the sequences (left out, and said).
    """

    reader: DatasetReader
    query_range: SequenceRange
    database_range: SequenceRange
    queries: list[Frame]
    database: list[Frame]
    query_xy: np.ndarray
    database_xy: np.ndarray
    queries_without_pose: int
    database_without_pose: int
    evaluated_on_training_data: list[str]
    unpaired: int = 0
    """Scans without their image or images without their scan in the sequences: left out."""


@dataclass
class Scores:
    """The embeddings and every figure computed from them."""

    query_embeddings: np.ndarray
    database_embeddings: np.ndarray
    result: RetrievalResult
    sequence_result: RetrievalResult | None
    reference: ReferenceMetric | None


def require_one_world(reader: DatasetReader, sequence: str, map_sequence: str) -> None:
    """Raise a ConfigError naming both sequences when their poses are in different world frames."""
    query_world, map_world = reader.world_frame(sequence), reader.world_frame(map_sequence)
    if reader.world_id(sequence) != reader.world_id(map_sequence):
        raise ConfigError(
            f"cross-drive between sequences {sequence} and {map_sequence} is meaningless: their poses are "
            f"in different world frames ({query_world} vs {map_world}), "
            "so their positions cannot be compared. Use drives of one world: KITTI raw drives under one "
            "root, KITTI-360 drives, or a `liploc synth --pose-frame town` folder (`liploc info` shows "
            "the world frame of each sequence)"
        )


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint (``<run>/checkpoints/x.safetensors``) or the run folder itself."""
    file = resolve_checkpoint(checkpoint)
    return file.parent.parent if file.parent.name == "checkpoints" else file.parent


def evaluate(
    checkpoint: str | Path,
    data_root: str | Path,
    settings: EvaluationSettings,
    *,
    console: Console | None = None,
    model: TwoTowerModel | None = None,
    config: Config | None = None,
) -> EvaluationOutput:
    """Evaluate a trained model on one sequence with one protocol; write JSON, embeddings and a report.

    Args:
        checkpoint: run folder or checkpoint file.
        data_root: dataset folder (any registered layout).
        settings: the sequence, protocol and options; None options take the run's ``eval`` settings.
        console: where to print the table and the files written (None: silent).
        model, config: an already loaded model and its config (skips loading ``checkpoint``).
    """
    checkpoint = Path(checkpoint)
    settings.check()
    if model is None or config is None:
        model, config = load_model_from_checkpoint(checkpoint)
    settings = settings.with_run_defaults(config)
    frames = select_frames(checkpoint, data_root, settings, config)
    label = output_label(settings, frames)
    out = settings.out_dir if settings.out_dir is not None else run_dir_of(checkpoint) / "eval" / label
    fingerprint = model.fingerprint()  # hashes every weight: once
    q_emb, db_emb = embed(checkpoint, model, fingerprint, config, frames, settings, console)
    scoring = Scoring(
        thresholds_m=list(settings.thresholds_m or ()),
        ks=list(settings.ks or ()),
        exclude=database_exclusion(settings, frames),
    )
    info = run_info(checkpoint, data_root, settings, config, frames, fingerprint)
    result = evaluate_retrieval(
        q_emb,
        db_emb,
        frames.query_xy,
        frames.database_xy,
        info=info,
        unit_norm=config.model.normalize,
        **scoring,
    )
    scores = Scores(
        q_emb,
        db_emb,
        result,
        sequence_rows(q_emb, db_emb, frames, settings, scoring, info),
        reference_rows(result, frames, settings),
    )
    files = write_outputs(out, scores, frames, settings, config)
    if console is not None:
        print_summary(console, label, scores, frames, files)
    return EvaluationOutput(result, out, files, frames.queries_without_pose, scores.sequence_result)


def select_frames(
    checkpoint: Path, data_root: str | Path, settings: EvaluationSettings, config: Config
) -> EvaluationFrames:
    """The posed query and database frames, after refusing the run's training data and other worlds.

    ``settings`` must have a protocol (:meth:`EvaluationSettings.with_run_defaults`). Sequence
    names are resolved as users type them ("8" for KITTI's "08", "13" for a raw drive).
    """
    reader = open_dataset(data_root, settings.layout)
    typed_query, typed_map = settings.ranges()
    query_range = _as_named(typed_query, reader, data_root)
    map_range = _as_named(typed_map, reader, data_root) if typed_map is not None else None
    cross_drive = settings.protocol == "cross-drive"
    database_range = map_range if cross_drive and map_range is not None else query_range
    overlaps = refuse_training_data(
        config,
        [query_range] + ([database_range] if cross_drive else []),
        settings.allow_training_data,
        f"run {run_dir_of(checkpoint)}",
    )
    sequence = query_range.sequence
    require_sequences(reader, data_root, [sequence, map_range.sequence if map_range else sequence])
    if cross_drive:
        require_one_world(reader, sequence, database_range.sequence)
    queries, skipped_q = posed(query_range.select(reader.frames(sequence)))
    database, skipped_db = queries, skipped_q
    if cross_drive:
        database, skipped_db = posed(database_range.select(reader.frames(database_range.sequence)))
    if not queries or not database:
        raise DataError(data_root, f"sequence '{query_range}' has no frame with a pose to evaluate on")
    return EvaluationFrames(
        reader,
        query_range,
        database_range,
        queries,
        database,
        np.stack([f.position_xy for f in queries]),
        np.stack([f.position_xy for f in database]),
        skipped_q,
        skipped_db,
        overlaps,
        sum(unpaired_count(reader, s) for s in {sequence, database_range.sequence}),
    )


def _as_named(typed: SequenceRange, reader: DatasetReader, data_root: str | Path) -> SequenceRange:
    return replace(typed, sequence=resolve_sequence_name(typed.sequence, reader.sequences(), data_root))


def output_label(settings: EvaluationSettings, frames: EvaluationFrames) -> str:
    """``02-same-sequence``, ``02-same-sequence-exclude-self``, ``28-on-29``: the folder and table name."""
    if settings.protocol == "cross-drive":
        return f"{frames.query_range.slug}-on-{frames.database_range.slug}"
    return f"{frames.query_range.slug}-{settings.protocol}{'-exclude-self' if settings.exclude_self else ''}"


def embed(
    checkpoint: Path,
    model: TwoTowerModel,
    fingerprint: str,
    config: Config,
    frames: EvaluationFrames,
    settings: EvaluationSettings,
    console: Console | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Query (camera) and database (LiDAR) embeddings, kept in ``<run>/embeddings`` for the next time.

    ``fingerprint`` is the model's (:meth:`TwoTowerModel.fingerprint`): it names the cache folder.
    """
    device = pick_device(settings.device)
    cache = EmbeddingCache(run_dir_of(checkpoint) / "embeddings", fingerprint)
    progress = progress_bar(console)
    with progress if progress is not None else nullcontext():
        q_emb, db_emb = embed_with_cache(
            cache,
            model,
            [(frames.queries, "image"), (frames.database, "lidar")],
            config,
            device=device,
            batch_size=settings.batch_size,
            progress=progress,
        )
    return q_emb, db_emb


def database_exclusion(
    settings: EvaluationSettings, frames: EvaluationFrames
) -> TimeWindowExclusion | SameScanExclusion | None:
    """What leaves each query's database: a time window (revisit), its own scan, or nothing."""
    if settings.protocol == "revisit":
        assert settings.revisit_window_s is not None
        times = frame_times(frames.queries), frame_times(frames.database)
        return TimeWindowExclusion(*times, settings.revisit_window_s)
    if settings.exclude_self:
        keys = [(f.sequence, f.index) for f in frames.queries]
        return SameScanExclusion(keys, [(f.sequence, f.index) for f in frames.database])
    return None


def run_info(
    checkpoint: Path,
    data_root: str | Path,
    settings: EvaluationSettings,
    config: Config,
    frames: EvaluationFrames,
    fingerprint: str,
) -> dict[str, Any]:
    """What every figure is named by in metrics.json and the report: protocol, data, model."""
    protocol, exclude_self = str(settings.protocol), bool(settings.exclude_self)
    assert settings.thresholds_m, "with_run_defaults() gives every evaluation a threshold"
    threshold = settings.thresholds_m[0]
    info: dict[str, Any] = {
        "protocol": protocol,
        "protocol_label": protocol_label(protocol, threshold, exclude_self),
        "threshold_m": threshold,
        "own_scan_in_database": own_scan_in_database(protocol, exclude_self),
        "exclude_self": exclude_self,
        "world_frame": frames.reader.world_frame(frames.query_range.sequence),
        "sequence": str(frames.query_range),
        "map_sequence": str(frames.database_range),
        "data_root": str(data_root),
        "checkpoint": str(resolve_checkpoint(checkpoint)) if checkpoint.exists() else str(checkpoint),
        "model_fingerprint": fingerprint,
        "method": config.model.method,
        "queries_without_pose": frames.queries_without_pose,
        "database_without_pose": frames.database_without_pose,
        "unpaired_left_out": frames.unpaired,
    }
    if protocol == "revisit":
        info["revisit_window_s"] = settings.revisit_window_s
    if frames.evaluated_on_training_data:
        info["evaluated_on_training_data"] = frames.evaluated_on_training_data
    info.update(training_data(config))
    return info


def sequence_rows(
    q_emb: np.ndarray,
    db_emb: np.ndarray,
    frames: EvaluationFrames,
    settings: EvaluationSettings,
    scoring: Scoring,
    info: dict[str, Any],
) -> RetrievalResult | None:
    """Sequence matching's figures (:func:`evaluate_sequences`) when the settings ask for them."""
    matching = settings.sequence_matching
    if matching is None:
        return None
    worlds = dict(settings.worlds) if settings.worlds is not None else None
    if worlds is None:  # paths may join map drives only within one world frame
        names = {frames.query_range.sequence, frames.database_range.sequence}
        worlds = {name: frames.reader.world_id(name) for name in names}
    return evaluate_sequences(
        q_emb,
        db_emb,
        frames.queries,
        frames.database,
        matching,
        odometry=settings.odometry,
        worlds=worlds,
        info=info,
        **scoring,
    )


def reference_rows(
    result: RetrievalResult, frames: EvaluationFrames, settings: EvaluationSettings
) -> ReferenceMetric | None:
    """The LIP-Loc reference code's Recall@1 when the settings ask for it."""
    if not settings.also_reference_metric:
        return None
    return reference_metric(result, frames.queries, frames.database, layout=frames.reader.name)


def write_outputs(
    out: Path, scores: Scores, frames: EvaluationFrames, settings: EvaluationSettings, config: Config
) -> dict[str, Path]:
    """Embeddings, metrics.json, per_query.json, sequence_metrics.json and the report, in ``out``.

    The output folder is made only now, and removed again when writing fails or is interrupted,
    so that a failed evaluation leaves no empty or half-written eval folder behind.
    """
    result, seq_result = scores.result, scores.sequence_result
    files: dict[str, Path] = {}
    with output_folder(out):
        sweep_temporary_files(out)  # what a killed evaluation left
        atomic_write_bytes(out / "query_embeddings.npy", npy_bytes(scores.query_embeddings))
        atomic_write_bytes(out / "database_embeddings.npy", npy_bytes(scores.database_embeddings))
        files["metrics"] = out / "metrics.json"
        summary = result.to_dict()
        if scores.reference is not None:
            summary["reference_metric"] = scores.reference.to_dict()
        atomic_write_text(files["metrics"], json.dumps(summary, indent=2))
        atomic_write_text(out / "per_query.json", json.dumps(result.to_dict(per_query=True)["per_query"]))
        if seq_result is not None:
            files["sequence_metrics"] = out / "sequence_metrics.json"
            atomic_write_text(files["sequence_metrics"], json.dumps(seq_result.to_dict(), indent=2))
        examples = _examples(result, frames.queries, frames.database, config, settings.num_examples)
        files.update(
            write_report(
                out / "report",
                result,
                frames.query_xy,
                frames.database_xy,
                examples=examples,
                run_info=result.info,
                title=_report_title(settings, frames),
                sequence_result=seq_result,
            )
        )
    return files


def _report_title(settings: EvaluationSettings, frames: EvaluationFrames) -> str:
    cross_drive = settings.protocol == "cross-drive"
    map_sequence = str(frames.database_range) if cross_drive else None
    return report_title(str(settings.protocol), str(frames.query_range), map_sequence)


def print_summary(
    console: Console, label: str, scores: Scores, frames: EvaluationFrames, files: dict[str, Path]
) -> None:
    """The table (single-image rows, and sequence rows beside them), the reference's, the files."""
    result, seq_result = scores.result, scores.sequence_result
    title = f"{label} ({len(frames.queries)} queries, {len(frames.database)} scans; "
    title += f"{result.info['protocol_label']})"
    if seq_result is None:
        print_table(console, result.table(title=title))
    else:
        print_table(console, single_and_sequence_table(result, seq_result, title=title))
    if scores.reference is not None:
        caption = f"{label}: Recall@1, liploc's metric and the reference code's"
        print_table(console, scores.reference.table(title=caption))
    if frames.unpaired:
        print_line(
            console,
            f"left out {frames.unpaired} scans or images without their pair (`liploc info` lists them)",
        )
    print_line(console, f"wrote {files['metrics']} and {files['html']}")


@contextmanager
def output_folder(out: Path) -> Iterator[Path]:
    """Create ``out`` (and missing parents) for writing; remove what was created if the block fails.

    A folder that existed before (an earlier evaluation's) is left as it is.
    """
    created = [p for p in (out, *out.parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
        raise


def training_data(config: Config) -> dict[str, str]:
    """``trained_on`` / ``validated_on``: the sequences (and folders) the model learnt from."""

    def describe(pick: str) -> str:
        parts = []
        for split in config.data.datasets:
            names = getattr(split, pick)
            if names:
                where = f" of {split.root}" if split.root is not None else ""
                parts.append(f"{_sequence_span(names)}{where}")
        return "; ".join(parts)

    out = {"trained_on": describe("train") or "unknown (not recorded in the run's config)"}
    validated = describe("val")
    out["validated_on"] = validated or f"{config.data.val_fraction:.0%} of the training frames, held out"
    return out


def _sequence_span(names: list[str]) -> str:
    if len(names) <= 4:
        return "sequence " + ", ".join(names) if len(names) == 1 else "sequences " + ", ".join(names)
    return f"{len(names)} sequences ({names[0]} .. {names[-1]})"


def _examples(
    result: RetrievalResult, queries: list[Frame], database: list[Frame], config: Config, count: int
) -> list[RetrievalExample]:
    if count <= 0:
        return []
    projector = RangeProjector(config.projection)
    examples = []
    chosen = select_examples(result, count)
    for position, qi in enumerate(chosen):
        top = [int(i) for i in result.retrieved[qi, :3] if i >= 0]
        # The range crop at its own resolution and aspect, not the square network input.
        ranges = [_range_crop(projector, database[i]) for i in top]
        f = queries[qi]
        error = float(result.top1_error_m[qi])
        label = (
            f"{example_rank_name(position, len(chosen))}: {f.sequence}/{f.index}, top-1 error {error:.1f} m"
        )
        examples.append(RetrievalExample(qi, load_image(f.image_path), ranges, label=label))
    return examples


def _range_crop(projector: RangeProjector, frame: Frame) -> np.ndarray:
    crop = np.asarray(projector.model_input(load_scan(frame.scan_path), frame.calib), dtype=np.float32)
    first = crop[0] if crop.ndim == 3 else crop
    return np.clip(first, 0, 255).astype(np.uint8)
