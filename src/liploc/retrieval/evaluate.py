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
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from liploc.atomic import atomic_write_text
from liploc.config import Config
from liploc.datasets import DatasetReader, Frame, load_image, open_dataset
from liploc.errors import ConfigError, DataError
from liploc.models import TwoTowerModel
from liploc.retrieval.embedding import EmbeddingCache, embed_frames, pick_device
from liploc.retrieval.metrics import RetrievalResult, TimeWindowExclusion, evaluate_retrieval
from liploc.retrieval.report import RetrievalExample, select_examples, write_report
from liploc.training.data import LidarDataset
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
    num_examples: int = 4,
    console: Console | None = None,
    model: TwoTowerModel | None = None,
    config: Config | None = None,
    also_reference_metric: bool = False,
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
        also_reference_metric: also compute the LIP-Loc reference code's Recall@1 (distance from
            pose columns 1 and 2, see :mod:`liploc.retrieval.reference_metric`), print it beside
            liploc's and store it under ``reference_metric`` in metrics.json.
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
    label = f"{sequence}-{protocol}" if protocol != "cross-drive" else f"{sequence}-on-{map_sequence}"
    out = Path(out_dir) if out_dir is not None else run_dir_of(checkpoint) / "eval" / label
    out.mkdir(parents=True, exist_ok=True)

    reader = open_dataset(data_root, layout)
    require_sequences(reader, data_root, [sequence, map_sequence or sequence])
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
    reference = None
    if also_reference_metric:
        from liploc.retrieval.reference_metric import reference_metric

        reference = reference_metric(result, queries, database, layout=reader.name)

    files: dict[str, Path] = {}
    np.save(out / "query_embeddings.npy", q_emb, allow_pickle=False)
    np.save(out / "database_embeddings.npy", db_emb, allow_pickle=False)
    files["metrics"] = out / "metrics.json"
    summary = result.to_dict()
    if reference is not None:
        summary["reference_metric"] = reference.to_dict()
    atomic_write_text(files["metrics"], json.dumps(summary, indent=2))
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
            title=f"liploc evaluation: {label}",
        )
    )
    if console is not None:
        console.print(result.table(title=f"{label} ({len(queries)} queries, {len(database)} scans)"))
        if reference is not None:
            console.print(
                reference.table(title=f"{label}: Recall@1, liploc's metric and the reference code's")
            )
        console.print(f"wrote {files['metrics']} and {files['html']}")
    return EvaluationOutput(result, out, files, skipped_q)


def _examples(
    result: RetrievalResult, queries: list[Frame], database: list[Frame], config: Config, count: int
) -> list[RetrievalExample]:
    if count <= 0:
        return []
    lidar = LidarDataset(database, config)
    examples = []
    for qi in select_examples(result, count):
        top = [int(i) for i in result.retrieved[qi, :3] if i >= 0]
        ranges = [lidar.preprocessed(i, "lidar")[0] for i in top]
        f = queries[qi]
        examples.append(
            RetrievalExample(qi, load_image(f.image_path), ranges, label=f"{f.sequence}/{f.index}")
        )
    return examples
