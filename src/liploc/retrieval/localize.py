"""LiDAR maps from a trained model, and localization of camera images against them.

A map folder (see :mod:`liploc.retrieval.lidar_map`) holds the LiDAR embeddings, poses and faiss index of
one or more sequences, plus a copy of the model checkpoint that made them (``model/``), so that a
deployed map is self-contained: ``liploc localize MAP IMAGE`` needs nothing else. A query embedded
by another model (``--checkpoint`` of another run) is refused by the map's fingerprint check.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from liploc.config import Config
from liploc.datasets import open_dataset
from liploc.datasets.sequence_names import resolve_sequence_name
from liploc.errors import ConfigError, DataError
from liploc.models import TwoTowerModel
from liploc.retrieval.embedding import embed_frames, embed_image_files, embedding_precision, pick_device
from liploc.retrieval.evaluate import frame_times, posed_frames, progress_bar, require_sequences
from liploc.retrieval.lidar_map import LidarMap, Match
from liploc.retrieval.sequences import MapTrack, SequenceMatcher, SequenceSettings
from liploc.training.checkpoint import copy_checkpoint
from liploc.training.run_folder import load_model_from_checkpoint, resolve_checkpoint

MODEL_DIR = "model"


def build_map(
    checkpoint: str | Path,
    data_root: str | Path,
    sequences: Sequence[str],
    out: str | Path,
    *,
    layout: str = "auto",
    device: str = "auto",
    batch_size: int = 64,
    console: Console | None = None,
    precision: str | None = None,
    force: bool = False,
) -> LidarMap:
    """Embed every posed LiDAR scan of ``sequences`` and save a self-contained map folder at ``out``.

    ``precision`` (``fp32``, ``bf16``, ``fp16``; None: the checkpoint's ``train.precision`` on the
    device) is recorded in the map; localization embeds its queries with the same one. The map, with
    its copy of the checkpoint in ``model/``, appears in one atomic step; an existing map at ``out``
    is replaced only with ``force``.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(f"{out}: a map (or other files) already exists there; pass --force to replace it")
    model, config = load_model_from_checkpoint(checkpoint)
    reader = open_dataset(data_root, layout)
    sequences = [resolve_sequence_name(s, reader.sequences(), data_root) for s in sequences]  # "8" -> "08"
    require_sequences(reader, data_root, list(sequences))
    frames = []
    for seq in sequences:
        kept, skipped = posed_frames(reader.frames(seq))
        if skipped and console is not None:
            console.print(f"[yellow]{seq}: {skipped} frames without a pose left out of the map[/]")
        frames.extend(kept)
    if not frames:
        raise DataError(data_root, "no frame with a pose in the requested sequences")
    dev = pick_device(device)
    precision = precision or embedding_precision(config, dev)
    progress = progress_bar(console)
    with progress if progress is not None else nullcontext():
        emb = embed_frames(
            model,
            frames,
            config,
            "lidar",
            device=dev,
            batch_size=batch_size,
            progress=progress,
            precision=precision,
        )
    lidar_map = LidarMap.build(
        emb,
        np.stack([f.pose for f in frames]),
        [(f.sequence, f.index) for f in frames],
        model.fingerprint(),
        config.model.model_dump(mode="json"),
        timestamps=frame_times(frames),
        embedding_precision=precision,
    )
    # The checkpoint travels with the map (inside it before the swap) so that a deployed map is
    # self-contained and never seen without its model.
    ckpt = resolve_checkpoint(checkpoint)
    out = lidar_map.save(
        out, add_files=lambda folder: copy_checkpoint(ckpt, folder / MODEL_DIR / "model.safetensors")
    )
    if console is not None:
        console.print(f"map of {len(lidar_map)} scans ({', '.join(sequences)}) written to {out}")
    return lidar_map


@dataclass
class Localizer:
    """A map and the model whose camera tower embeds queries for it (the Python API of ``localize``)."""

    lidar_map: LidarMap
    model: TwoTowerModel
    config: Config
    device: Any

    @classmethod
    def open(
        cls, map_dir: str | Path, checkpoint: str | Path | None = None, device: str = "auto"
    ) -> Localizer:
        """Load a map folder and its model (the map's own copy unless ``checkpoint`` is given)."""
        map_dir = Path(map_dir)
        lidar_map = LidarMap.load(map_dir)
        if checkpoint is None:
            checkpoint = map_dir / MODEL_DIR / "model.safetensors"
            if not checkpoint.is_file() and not checkpoint.with_suffix(".json").is_file():
                raise DataError(map_dir, "map has no model/ copy; pass the checkpoint that built it")
        model, config = load_model_from_checkpoint(checkpoint)
        return cls(lidar_map, model, config, pick_device(device))

    def localize(self, images: Sequence[str | Path], k: int = 5) -> list[list[Match]]:
        """Top-``k`` map entries (poses and scores) for each camera image file."""
        # The map's precision, not this device's default: queries must be embedded as the map was.
        emb = embed_image_files(
            self.model, images, self.config, device=self.device, precision=self.lidar_map.embedding_precision
        )
        return self.lidar_map.localize(emb, k, query_fingerprint=self.model.fingerprint())

    def localize_sequence(
        self,
        images: Sequence[str | Path],
        k: int = 5,
        *,
        travelled_m: Sequence[float] | None = None,
        settings: SequenceSettings | None = None,
        worlds: dict[str, str] | None = None,
    ) -> SequenceLocalization:
        """Localize the last of ``images`` (in driving order) by sequence matching over all of them.

        Args:
            images: camera image files, oldest first; the window is all of them.
            k: poses to return for the last image.
            travelled_m: metres travelled between consecutive images (``len(images) - 1`` values,
                odometry); None: the speed is unknown and speed ratios are tried.
            settings: sequence-matching settings (``seq_len`` is set to ``len(images)``).
            worlds: sequence -> world-frame id of the map's drives (paths may change drive only
                within a world); default: each drive its own world.
        """
        if not images:
            raise ConfigError("give at least one image to localize")
        if travelled_m is not None:
            travelled_m = [float(d) for d in travelled_m]
            if len(travelled_m) != len(images) - 1:
                raise ConfigError(
                    f"{len(images)} images need {len(images) - 1} travelled distances "
                    f"(one between each pair of consecutive images), got {len(travelled_m)}"
                )
            if any(not np.isfinite(d) or d < 0 for d in travelled_m):
                raise ConfigError(f"travelled distances must be finite and >= 0, got {travelled_m}")
        settings = (settings or SequenceSettings()).model_copy(update={"seq_len": len(images)})
        lm = self.lidar_map
        lm.check_query_model(self.model.fingerprint())
        emb = embed_image_files(self.model, images, self.config, device=self.device)
        track = MapTrack.build(
            lm.sequences, lm.frame_indices, lm.xy, join_radius_m=settings.join_radius_m, worlds=worlds
        )
        sim = (emb @ lm.embeddings.T)[None]
        steps = None if travelled_m is None else np.asarray(travelled_m, dtype=np.float64)[None]
        result = SequenceMatcher(track, settings).match(sim, travelled_m=steps, with_paths=True)
        scores = result.scores[0]
        top = np.argsort(-scores, kind="stable")[: min(k, len(lm))]
        matches = [lm._match(rank, float(scores[i]), int(i)) for rank, i in enumerate(top, 1)]
        path = [
            None if i < 0 else lm._match(0, float(sim[0, t, i]), int(i))
            for t, i in enumerate(result.paths[0])  # type: ignore[index]
        ]
        return SequenceLocalization(matches, path)


@dataclass(frozen=True, eq=False)
class SequenceLocalization:
    """Sequence localization of the last image of a window.

    Attributes:
        matches: the best map places for the last image, best first; ``score`` is the path's
            mean normalised similarity (z-score units), not a cosine similarity.
        path: for each image (oldest first) the map place of the best path, with the image's
            cosine similarity to it (``rank`` 0), or None where the path ran off the map.
    """

    matches: list[Match]
    path: list[Match | None]
