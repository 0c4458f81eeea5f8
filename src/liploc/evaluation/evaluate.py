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
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from liploc.atomic import atomic_write_bytes, atomic_write_text, npy_bytes, sweep_temporary_files
from liploc.config import Config
from liploc.console import print_line, print_table, progress_bar
from liploc.datasets import DatasetReader, Frame, load_image, load_scan, open_dataset
from liploc.datasets.base import require_sequences
from liploc.datasets.frame import frame_times
from liploc.datasets.sequence_names import resolve_sequence_name
from liploc.datasets.sequence_range import SequenceRange
from liploc.errors import ConfigError, DataError
from liploc.evaluation.metrics import (
    DEFAULT_CURVE_K,
    RetrievalResult,
    SameScanExclusion,
    TimeWindowExclusion,
    evaluate_retrieval,
    format_percent,
    one_percent_k,
    score_retrieval,
)
from liploc.evaluation.report import RetrievalExample, example_rank_name, select_examples, write_report
from liploc.evaluation.training_overlap import refuse_training_data
from liploc.lidar import RangeProjector
from liploc.localization.embedding import EmbeddingCache, embed_with_cache
from liploc.localization.sequences import (
    MapTrack,
    SequenceMatcher,
    SequenceSettings,
    sequence_search,
    stream_windows,
)
from liploc.models import TwoTowerModel
from liploc.runtime.data_roots import posed
from liploc.runtime.device import pick_device
from liploc.runtime.run_folder import load_model_from_checkpoint, resolve_checkpoint

PROTOCOLS = ("same-sequence", "cross-drive", "revisit")


@dataclass
class EvaluationOutput:
    """What an evaluation produced."""

    result: RetrievalResult
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    skipped_without_pose: int = 0
    sequence_result: RetrievalResult | None = None
    """Sequence matching over the last ``seq_len`` images (``evaluate(seq_len=...)``), else None."""


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


def own_scan_in_database(protocol: str, exclude_self: bool) -> bool:
    """Whether the query's own scan can be retrieved (same-sequence without ``exclude_self``)."""
    return protocol == "same-sequence" and not exclude_self


def protocol_label(protocol: str, threshold_m: float, exclude_self: bool) -> str:
    """``same-sequence, 20 m, own scan in database``: what every printed figure is named by."""
    if protocol == "same-sequence":
        own = "own scan removed from database" if exclude_self else "own scan in database"
    elif protocol == "revisit":
        own = "scans within the revisit window removed (own scan too)"
    else:
        own = "database from another drive"
    return f"{protocol}, {threshold_m:g} m, {own}"


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint (``<run>/checkpoints/x.safetensors``) or the run folder itself."""
    file = resolve_checkpoint(checkpoint)
    return file.parent.parent if file.parent.name == "checkpoints" else file.parent


def evaluate(
    checkpoint: str | Path,
    data_root: str | Path,
    sequence: str,
    *,
    protocol: str | None = None,
    map_sequence: str | None = None,
    thresholds_m: list[float] | None = None,
    ks: list[int] | None = None,
    revisit_window_s: float | None = None,
    exclude_self: bool | None = None,
    allow_training_data: bool = False,
    layout: str = "auto",
    out_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    num_examples: int = 3,  # the best, median and worst query by top-1 error
    console: Console | None = None,
    model: TwoTowerModel | None = None,
    config: Config | None = None,
    also_reference_metric: bool = False,
    seq_len: int | None = None,
    odometry: bool = False,
    sequence_settings: SequenceSettings | None = None,
    worlds: dict[str, str] | None = None,
) -> EvaluationOutput:
    """Evaluate a trained model on one sequence with one protocol; write JSON, embeddings and a report.

    Args:
        checkpoint: run folder or checkpoint file.
        data_root: dataset folder (any registered layout).
        sequence: the query sequence (and the database for same-sequence and revisit); a frame
            range such as ``00[3000:]`` evaluates those frames only.
        protocol: ``same-sequence``, ``cross-drive`` or ``revisit`` (default: the run's
            ``eval.protocol``).
        map_sequence: the database sequence for ``cross-drive`` (both must share a world frame).
        exclude_self: same-sequence: take each query's own scan out of its database (default:
            the run's ``eval.exclude_self``).
        allow_training_data: evaluate even on frames the run trained or validated on.
        thresholds_m, ks, revisit_window_s, batch_size: override the run's ``eval`` settings.
        out_dir: where to write (default ``<run>/eval/<sequence>-<protocol>``).
        model, config: an already loaded model and its config (skips loading ``checkpoint``).
        also_reference_metric: also compute the LIP-Loc reference code's Recall@1 (distance from
            pose columns 1 and 2, see :mod:`liploc.evaluation.reference_metric`), print it beside
            liploc's and store it under ``reference_metric`` in metrics.json.
        seq_len: also evaluate sequence matching over the last ``seq_len`` query images of the drive
            (:mod:`liploc.localization.sequences`); the first images of the drive use what they have.
        odometry: sequence matching knows the distance travelled between query images (simulated
            from the true poses with ``sequence_settings.odometry_noise``); else speed ratios.
        sequence_settings: other sequence-matching settings (``seq_len`` overrides its own).
        worlds: sequence -> world-frame id, for the "same world" test of paths between map drives.
    """
    if protocol is not None:
        _check_protocol(protocol, sequence, map_sequence, exclude_self)
    query_range = _parse_range(sequence)
    map_range = _parse_range(map_sequence) if map_sequence else None
    checkpoint = Path(checkpoint)
    if model is None or config is None:
        model, config = load_model_from_checkpoint(checkpoint)
    if protocol is None:
        protocol = config.eval.protocol
        _check_protocol(protocol, sequence, map_sequence, exclude_self)
    if exclude_self is None:
        exclude_self = config.eval.exclude_self and protocol == "same-sequence"
    reader = open_dataset(data_root, layout)
    # Users type "8" for KITTI's "08" or "13" for a raw drive: resolve before checking and naming.
    query_range = replace(
        query_range, sequence=resolve_sequence_name(query_range.sequence, reader.sequences(), data_root)
    )
    if map_range is not None:
        map_range = replace(
            map_range, sequence=resolve_sequence_name(map_range.sequence, reader.sequences(), data_root)
        )
    evaluated = [query_range] + ([map_range] if protocol == "cross-drive" and map_range else [])
    overlaps = refuse_training_data(config, evaluated, allow_training_data, f"run {run_dir_of(checkpoint)}")
    sequence, map_sequence = query_range.sequence, map_range.sequence if map_range else None
    ev = config.eval
    thresholds_m = list(thresholds_m or ev.thresholds_m)
    ks = list(ks or ev.ks)
    window = ev.revisit_window_s if revisit_window_s is None else revisit_window_s
    batch_size = batch_size or ev.batch_size
    label = (
        f"{query_range.slug}-{protocol}{'-exclude-self' if exclude_self else ''}"
        if protocol != "cross-drive"
        else f"{query_range.slug}-on-{map_range.slug if map_range else map_sequence}"
    )
    out = Path(out_dir) if out_dir is not None else run_dir_of(checkpoint) / "eval" / label
    require_sequences(reader, data_root, [sequence, map_sequence or sequence])
    if protocol == "cross-drive":
        require_one_world(reader, sequence, map_sequence)  # type: ignore[arg-type]
    queries, skipped_q = posed(query_range.select(reader.frames(sequence)))
    if protocol == "cross-drive":
        assert map_range is not None
        database, skipped_db = posed(map_range.select(reader.frames(map_range.sequence)))
    else:
        database, skipped_db = queries, skipped_q
    if not queries or not database:
        raise DataError(data_root, f"sequence '{query_range}' has no frame with a pose to evaluate on")

    dev = pick_device(device)
    fingerprint = model.fingerprint()
    cache = EmbeddingCache(run_dir_of(checkpoint) / "embeddings", fingerprint)
    progress = progress_bar(console)
    with progress if progress is not None else nullcontext():
        q_emb, db_emb = embed_with_cache(
            cache,
            model,
            [(queries, "image"), (database, "lidar")],
            config,
            device=dev,
            batch_size=batch_size,
            progress=progress,
        )

    q_xy = np.stack([f.position_xy for f in queries])
    db_xy = np.stack([f.position_xy for f in database])
    exclude: TimeWindowExclusion | SameScanExclusion | None = None
    if protocol == "revisit":
        exclude = TimeWindowExclusion(frame_times(queries), frame_times(database), window)
    elif exclude_self:
        keys = [(f.sequence, f.index) for f in queries]
        exclude = SameScanExclusion(keys, [(f.sequence, f.index) for f in database])
    info: dict[str, Any] = {
        "protocol": protocol,
        "protocol_label": protocol_label(protocol, thresholds_m[0], exclude_self),
        "threshold_m": thresholds_m[0],
        "own_scan_in_database": own_scan_in_database(protocol, exclude_self),
        "exclude_self": bool(exclude_self),
        "world_frame": reader.world_frame(sequence),
        "sequence": str(query_range),
        "map_sequence": str(map_range) if protocol == "cross-drive" else str(query_range),
        "data_root": str(data_root),
        "checkpoint": str(resolve_checkpoint(checkpoint)) if checkpoint.exists() else str(checkpoint),
        "model_fingerprint": fingerprint,
        "queries_without_pose": skipped_q,
        "database_without_pose": skipped_db if protocol == "cross-drive" else skipped_q,
    }
    if protocol == "revisit":
        info["revisit_window_s"] = window
    if overlaps:
        info["evaluated_on_training_data"] = overlaps
    info.update(training_data(config))
    result = evaluate_retrieval(
        q_emb,
        db_emb,
        q_xy,
        db_xy,
        thresholds_m,
        ks,
        exclude=exclude,
        info=info,
        unit_norm=config.model.normalize,
    )
    seq_result = None
    if seq_len is not None or sequence_settings is not None:
        settings = sequence_settings or SequenceSettings()
        if seq_len is not None:
            settings = settings.model_copy(update={"seq_len": seq_len})
        if worlds is None:  # paths may join map drives only within one world frame
            worlds = {name: reader.world_id(name) for name in {sequence, map_sequence or sequence}}
        seq_result = evaluate_sequences(
            q_emb,
            db_emb,
            queries,
            database,
            thresholds_m,
            ks,
            settings,
            odometry=odometry,
            exclude=exclude,
            worlds=worlds,
            info=info,
        )
    reference = None
    if also_reference_metric:
        from liploc.evaluation.reference_metric import reference_metric

        reference = reference_metric(result, queries, database, layout=reader.name)

    files: dict[str, Path] = {}
    # The output folder is made only now, and removed again when writing fails or is interrupted,
    # so that a failed evaluation leaves no empty or half-written eval folder behind.
    with output_folder(out):
        sweep_temporary_files(out)  # what a killed evaluation left
        atomic_write_bytes(out / "query_embeddings.npy", npy_bytes(q_emb))
        atomic_write_bytes(out / "database_embeddings.npy", npy_bytes(db_emb))
        files["metrics"] = out / "metrics.json"
        summary = result.to_dict()
        if reference is not None:
            summary["reference_metric"] = reference.to_dict()
        atomic_write_text(files["metrics"], json.dumps(summary, indent=2))
        atomic_write_text(out / "per_query.json", json.dumps(result.to_dict(per_query=True)["per_query"]))
        if seq_result is not None:
            files["sequence_metrics"] = out / "sequence_metrics.json"
            atomic_write_text(files["sequence_metrics"], json.dumps(seq_result.to_dict(), indent=2))
        examples = _examples(result, queries, database, config, num_examples)
        files.update(
            write_report(
                out / "report",
                result,
                q_xy,
                db_xy,
                examples=examples,
                run_info=info,
                title=report_title(protocol, str(query_range), str(map_range) if map_range else None),
                sequence_result=seq_result,
            )
        )
    if console is not None:
        title = f"{label} ({len(queries)} queries, {len(database)} scans; {info['protocol_label']})"
        if seq_result is None:
            print_table(console, result.table(title=title))
        else:
            print_table(console, single_and_sequence_table(result, seq_result, title=title))
        if reference is not None:
            print_table(
                console, reference.table(title=f"{label}: Recall@1, liploc's metric and the reference code's")
            )
        print_line(console, f"wrote {files['metrics']} and {files['html']}")
    return EvaluationOutput(result, out, files, skipped_q, seq_result)


def simulated_odometry(frames: list[Frame], noise: float, seed: int = 0) -> np.ndarray:
    """(Q,) metres travelled from the previous frame of the same sequence (0 for a sequence's first),
    from the true poses with multiplicative Gaussian noise of relative std ``noise`` (fixed seed)."""
    xy = np.stack([f.position_xy for f in frames]) if frames else np.zeros((0, 2))
    step = np.zeros(len(frames))
    if len(frames) > 1:
        same = np.array([a.sequence == b.sequence for a, b in itertools.pairwise(frames)])
        step[1:] = np.where(same, np.linalg.norm(np.diff(xy, axis=0), axis=1), 0.0)
    rng = np.random.default_rng(seed)
    return np.maximum(step * (1.0 + noise * rng.standard_normal(len(step))), 0.0)


def evaluate_sequences(
    q_emb: np.ndarray,
    db_emb: np.ndarray,
    queries: list[Frame],
    database: list[Frame],
    thresholds_m: list[float],
    ks: list[int],
    settings: SequenceSettings,
    *,
    odometry: bool = False,
    exclude: TimeWindowExclusion | None = None,
    worlds: dict[str, str] | None = None,
    info: dict[str, Any] | None = None,
) -> RetrievalResult:
    """Recall of sequence matching: each query localized with the last ``seq_len`` images of its drive.

    Queries are taken in driving order (their order in ``queries``: frame order per sequence). The
    same positives, thresholds and exclusions as the single-image evaluation apply to the newest
    image of each window, so the two results compare one to one.
    """
    db_xy = np.stack([f.position_xy for f in database])
    q_xy = np.stack([f.position_xy for f in queries])
    track = MapTrack.build(
        [f.sequence for f in database],
        [f.index for f in database],
        db_xy,
        join_radius_m=settings.join_radius_m,
        worlds=worlds,
    )
    matcher = SequenceMatcher(track, settings)
    k_max = min(len(database), max([*ks, one_percent_k(len(database)), DEFAULT_CURVE_K]))
    excluded_fn = None
    if exclude is not None:
        db_ids = np.arange(len(database))[None, :]

        def excluded_fn(rows: np.ndarray) -> np.ndarray:
            return exclude.excluded(rows[:, None], db_ids)

    travelled = simulated_odometry(queries, settings.odometry_noise) if odometry else None
    scores, retrieved = sequence_search(
        q_emb,
        db_emb,
        matcher,
        k_max,
        segments=[f.sequence for f in queries],
        travelled_m=travelled,
        frame_indices=np.array([f.index for f in queries]),
        excluded_fn=excluded_fn,
    )
    # Excluded places score -inf; they must not count as retrieved.
    retrieved = np.where(np.isfinite(scores), retrieved, -1)
    result = score_retrieval(retrieved, scores, q_xy, db_xy, thresholds_m, ks, exclude)
    result.info.update(info or {})
    result.info["sequence_matching"] = {
        "seq_len": settings.seq_len,
        "odometry": odometry,
        "window_m": float(np.median(_window_lengths(q_xy, [f.sequence for f in queries], settings.seq_len))),
        **settings.model_dump(mode="json"),
    }
    return result


def _window_lengths(xy: np.ndarray, segments: list[str], seq_len: int) -> np.ndarray:
    """Metres driven over each full window of ``seq_len`` images (for the record)."""
    windows, valid = stream_windows(segments, seq_len)
    step = np.r_[0.0, np.linalg.norm(np.diff(xy, axis=0), axis=1)]
    full = valid.all(axis=1)
    if not full.any():
        return np.zeros(1)
    return np.array([step[w[1:]].sum() for w in windows[full]])


def single_and_sequence_table(single: RetrievalResult, sequence: RetrievalResult, title: str | None) -> Table:
    """One rich table with single-image and sequence rows side by side, per threshold."""
    seq = sequence.info.get("sequence_matching", {})
    label = f"seq L={seq.get('seq_len', '?')}" + (" odo" if seq.get("odometry") else "")
    table = Table(title=title)
    table.add_column("threshold", justify="right")
    table.add_column("input", no_wrap=True)
    table.add_column("queries", justify="right")
    for k in single.ks:
        table.add_column(f"R@{k}", justify="right")
    table.add_column(f"R@1% (K={single.k_one_percent})", justify="right")
    table.add_column("chance R@1", justify="right")
    table.add_column("median err", justify="right")
    flagged = False
    for t_single, t_seq in zip(single.thresholds, sequence.thresholds, strict=True):
        for name, t, res in (("single", t_single, single), (label, t_seq, sequence)):
            recalls = [format_percent(t.recall[k]) for k in res.ks]
            if t.near_chance and 1 in res.ks:  # as RetrievalResult.table marks it
                recalls[res.ks.index(1)] = "~" + recalls[res.ks.index(1)]
                flagged = True
            table.add_row(
                f"{t.threshold_m:g} m",
                name,
                f"{t.num_counted}/{res.num_queries}",
                *recalls,
                format_percent(t.recall_one_percent),
                format_percent(t.chance[1]),
                "n/a" if math.isnan(t.median_error_m) else f"{t.median_error_m:.1f} m",
            )
    captions = []
    window = seq.get("window_m")
    if window is not None:
        captions.append(f"sequence window: {seq.get('seq_len')} images, median {window:.0f} m driven")
    if flagged:
        captions.append("~ R@1 within noise of chance (less than 3 sigma above it): no evidence of skill")
    if captions:
        table.caption = "\n".join(captions)
    return table


def _check_protocol(
    protocol: str, sequence: str, map_sequence: str | None, exclude_self: bool | None
) -> None:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{protocol}'; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "cross-drive" and not map_sequence:
        raise ConfigError("the cross-drive protocol needs --map-sequence (the drive the map comes from)")
    if protocol != "cross-drive" and map_sequence and map_sequence != sequence:
        raise ConfigError(f"--map-sequence is only used by the cross-drive protocol, not by '{protocol}'")
    if exclude_self and protocol != "same-sequence":
        why = (
            "queries and database are different drives"
            if protocol == "cross-drive"
            else ("the revisit window already removes the query's own scan")
        )
        raise ConfigError(f"--exclude-self is for same-sequence evaluation, not '{protocol}' ({why})")


def _parse_range(text: str) -> SequenceRange:
    try:
        return SequenceRange.parse(text)
    except ValueError as err:
        raise ConfigError(f"sequence {err}") from None


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


def report_title(protocol: str, sequence: str, map_sequence: str | None) -> str:
    """A title in words: what was localized in what."""
    if protocol == "cross-drive":
        return f"Drive {sequence} localized in the LiDAR map of drive {map_sequence}"
    if protocol == "revisit":
        return f"Sequence {sequence}: revisited places found in its own LiDAR scans"
    return f"Sequence {sequence}: camera images localized among its own LiDAR scans"


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
