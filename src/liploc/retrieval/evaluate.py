"""Evaluation protocols: same-sequence (the paper), cross-drive, and revisit.

- ``same-sequence``: every camera image of a sequence queries every LiDAR scan of that sequence.
- ``cross-drive``: the map (database) comes from one drive, the queries from another drive over
  the same streets (``map_sequence``).
- ``revisit``: as same-sequence, but scans taken within ``revisit_window_s`` of the query leave
  the database, so only true revisits of a place can be found.

A retrieval is correct when the retrieved scan lies within the threshold (ground-plane distance)
of the query's true position. Frames without a pose are left out of both sides and counted.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from liploc.atomic import atomic_write_text
from liploc.config import Config
from liploc.console import print_line, print_table
from liploc.datasets import DatasetReader, Frame, load_image, load_scan, open_dataset
from liploc.datasets.sequence_names import resolve_sequence_name
from liploc.errors import ConfigError, DataError
from liploc.lidar import RangeProjector
from liploc.models import TwoTowerModel
from liploc.retrieval.embedding import EmbeddingCache, embed_frames, pick_device
from liploc.retrieval.metrics import RetrievalResult, TimeWindowExclusion, evaluate_retrieval
from liploc.retrieval.report import RetrievalExample, example_rank_name, select_examples, write_report
from liploc.training.run_folder import load_model_from_checkpoint, resolve_checkpoint

PROTOCOLS = ("same-sequence", "cross-drive", "revisit")
FALLBACK_FRAME_RATE_HZ = 10.0  # KITTI's LiDAR rate, for sequences without timestamps


@dataclass
class EvaluationOutput:
    """What an evaluation produced."""

    result: RetrievalResult
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    skipped_without_pose: int = 0


def posed_frames(frames: list[Frame]) -> tuple[list[Frame], int]:
    """Frames that have a pose, and how many were left out."""
    kept = [f for f in frames if f.pose is not None]
    return kept, len(frames) - len(kept)


def require_sequences(reader: DatasetReader, data_root: str | Path, sequences: list[str]) -> None:
    """Raise a DataError naming the folder when one of ``sequences`` is not in the dataset."""
    known = reader.sequences()
    for s in sequences:
        if s not in known:
            raise DataError(data_root, f"no sequence '{s}' (found: {', '.join(known) or 'none'})")


def frame_times(frames: list[Frame]) -> np.ndarray:
    """Timestamps of frames; the frame index at 10 Hz where a sequence has none."""
    return np.array(
        [f.timestamp if f.timestamp is not None else f.index / FALLBACK_FRAME_RATE_HZ for f in frames],
        dtype=np.float64,
    )


def progress_bar(console: Console | None) -> Progress | None:
    """A transient rich progress bar on ``console``, or None when quiet."""
    if console is None:
        return None
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint (``<run>/checkpoints/x.safetensors``) or the run folder itself."""
    file = resolve_checkpoint(checkpoint)
    return file.parent.parent if file.parent.name == "checkpoints" else file.parent


def evaluate(
    checkpoint: str | Path,
    data_root: str | Path,
    sequence: str,
    *,
    protocol: str = "same-sequence",
    map_sequence: str | None = None,
    thresholds_m: list[float] | None = None,
    ks: list[int] | None = None,
    revisit_window_s: float | None = None,
    layout: str = "auto",
    out_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    num_examples: int = 3,  # the best, median and worst query by top-1 error
    console: Console | None = None,
    model: TwoTowerModel | None = None,
    config: Config | None = None,
) -> EvaluationOutput:
    """Evaluate a trained model on one sequence with one protocol; write JSON, embeddings and a report.

    Args:
        checkpoint: run folder or checkpoint file.
        data_root: dataset folder (any registered layout).
        sequence: the query sequence (and the database for same-sequence and revisit).
        protocol: ``same-sequence``, ``cross-drive`` or ``revisit``.
        map_sequence: the database sequence for ``cross-drive``.
        thresholds_m, ks, revisit_window_s, batch_size: override the run's ``eval`` settings.
        out_dir: where to write (default ``<run>/eval/<sequence>-<protocol>``).
        model, config: an already loaded model and its config (skips loading ``checkpoint``).
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{protocol}'; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "cross-drive" and not map_sequence:
        raise ConfigError("the cross-drive protocol needs --map-sequence (the drive the map comes from)")
    if protocol != "cross-drive" and map_sequence and map_sequence != sequence:
        raise ConfigError(f"--map-sequence is only used by the cross-drive protocol, not by '{protocol}'")
    checkpoint = Path(checkpoint)
    if model is None or config is None:
        model, config = load_model_from_checkpoint(checkpoint)
    ev = config.eval
    thresholds_m = list(thresholds_m or ev.thresholds_m)
    ks = list(ks or ev.ks)
    window = ev.revisit_window_s if revisit_window_s is None else revisit_window_s
    batch_size = batch_size or ev.batch_size
    reader = open_dataset(data_root, layout)
    # Users type "8" for KITTI's "08" or "13" for a raw drive: resolve before naming outputs.
    sequence = resolve_sequence_name(sequence, reader.sequences(), data_root)
    if map_sequence:
        map_sequence = resolve_sequence_name(map_sequence, reader.sequences(), data_root)
    require_sequences(reader, data_root, [sequence, map_sequence or sequence])
    label = f"{sequence}-{protocol}" if protocol != "cross-drive" else f"{sequence}-on-{map_sequence}"
    out = Path(out_dir) if out_dir is not None else run_dir_of(checkpoint) / "eval" / label
    queries, skipped_q = posed_frames(reader.frames(sequence))
    if protocol == "cross-drive":
        database, skipped_db = posed_frames(reader.frames(map_sequence))  # type: ignore[arg-type]
    else:
        database, skipped_db = queries, skipped_q
    if not queries or not database:
        raise DataError(data_root, f"sequence '{sequence}' has no frame with a pose to evaluate on")

    dev = pick_device(device)
    fingerprint = model.fingerprint()
    cache = EmbeddingCache(run_dir_of(checkpoint) / "embeddings", fingerprint)
    progress = progress_bar(console)
    with progress if progress is not None else nullcontext():
        q_emb, _ = cache.get_or_make(
            queries,
            "image",
            lambda: embed_frames(
                model, queries, config, "image", device=dev, batch_size=batch_size, progress=progress
            ),
        )
        db_emb, _ = cache.get_or_make(
            database,
            "lidar",
            lambda: embed_frames(
                model, database, config, "lidar", device=dev, batch_size=batch_size, progress=progress
            ),
        )

    q_xy = np.stack([f.position_xy for f in queries])
    db_xy = np.stack([f.position_xy for f in database])
    exclude = None
    if protocol == "revisit":
        exclude = TimeWindowExclusion(frame_times(queries), frame_times(database), window)
    info: dict[str, Any] = {
        "protocol": protocol,
        "sequence": sequence,
        "map_sequence": map_sequence if protocol == "cross-drive" else sequence,
        "data_root": str(data_root),
        "checkpoint": str(resolve_checkpoint(checkpoint)) if checkpoint.exists() else str(checkpoint),
        "model_fingerprint": fingerprint,
        "queries_without_pose": skipped_q,
        "database_without_pose": skipped_db if protocol == "cross-drive" else skipped_q,
    }
    if protocol == "revisit":
        info["revisit_window_s"] = window
    info.update(training_data(config))
    result = evaluate_retrieval(q_emb, db_emb, q_xy, db_xy, thresholds_m, ks, exclude=exclude, info=info)

    files: dict[str, Path] = {}
    # The output folder is made only now, and removed again when writing fails or is interrupted,
    # so that a failed evaluation leaves no empty or half-written eval folder behind.
    with output_folder(out):
        np.save(out / "query_embeddings.npy", q_emb, allow_pickle=False)
        np.save(out / "database_embeddings.npy", db_emb, allow_pickle=False)
        files["metrics"] = out / "metrics.json"
        atomic_write_text(files["metrics"], json.dumps(result.to_dict(), indent=2))
        atomic_write_text(out / "per_query.json", json.dumps(result.to_dict(per_query=True)["per_query"]))
        examples = _examples(result, queries, database, config, num_examples)
        files.update(
            write_report(
                out / "report",
                result,
                q_xy,
                db_xy,
                examples=examples,
                run_info=info,
                title=report_title(protocol, sequence, map_sequence),
            )
        )
    if console is not None:
        print_table(console, result.table(title=f"{label} ({len(queries)} queries, {len(database)} scans)"))
        print_line(console, f"wrote {files['metrics']} and {files['html']}")
    return EvaluationOutput(result, out, files, skipped_q)


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
