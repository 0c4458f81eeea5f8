"""A LiDAR map: LiDAR embeddings with their poses and frame ids, searchable by camera embeddings.

A saved map is a folder::

    manifest.json     format, version, sizes, the model's fingerprint and config, its method
                      (appearance or bridge) and, for bridge maps, the camera calibration of
                      the map's drives, the index's kind and settings, the drives' world frame,
                      sha256 of each file
    embeddings.npy    (N, D) float32, L2-normalised LiDAR embeddings
    poses.npy         (N, 4, 4) float64 LiDAR poses in the z-up world frame
    frames.json       sequence name, frame index and timestamp (or null) of each entry
    index.faiss       the faiss index over the embeddings (see :mod:`liploc.localization.index`)

A loaded map memory-maps ``embeddings.npy`` and ``poses.npy``: what stays resident is the index's
own memory (about 40 bytes per scan for ``ivf-pq``) and the frame list; the compressed index kinds
re-score their shortlist against the mapped embeddings. Loading checks, by a few searches, that
the index holds the map's embeddings (an index replaced along with its checksum is caught).
Maps whose index is a compressed kind are format version 2 (a liploc that cannot re-rank refuses
them); the others stay version 1.

The folder, with anything the caller adds (the model copy of ``map build``), is written under a
temporary name (``.NAME.<pid>.<random>.tmp`` beside it) and then swapped into place in one
atomic exchange (``renameat2(RENAME_EXCHANGE)`` on Linux), so a reader sees the old map or the new
one, never a half-written or missing one. Temporary folders of killed builds are swept by the next
save beside them. Folders and files follow the umask. Loading checks every file's sha256 and
names the file that is missing or corrupt (a load that a rebuild swapped under is retried).
Queries must come from the model that built the map: ``localize`` compares fingerprints.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liploc.atomic import dir_mode, reporting_full_disk
from liploc.atomic_folder import real_folder, replace_folder, scratch_path, sweep_folder_leftovers
from liploc.checksums import file_size_and_sha256
from liploc.errors import DataError, EmbeddingError, ModelMismatchError
from liploc.faults import fault_point
from liploc.localization.index import (
    RERANK_SHORTLIST,
    RERANKED_KINDS,
    EmbeddingIndex,
    IndexKind,
    check_embeddings,
)
from liploc.localization.map_folder import DATA_FILES as _FILES
from liploc.localization.map_folder import MANIFEST
from liploc.versioned_json import read_versioned_json

MAP_FORMAT = "liploc-lidar-map"
MAP_VERSION = 2
"""Version of maps whose index re-ranks (``flat-fp16``, ``ivf-pq``); the others are written as
:data:`MAP_VERSION_EXACT`, which liploc before issue 25 reads too."""
MAP_VERSION_EXACT = 1


@dataclass(frozen=True, eq=False)
class Match:
    """One retrieved map entry.

    Attributes:
        rank: 1 for the best match of the query, 2 for the next...
        score: cosine similarity between the query and the entry's embedding.
        map_index: row of the entry in the map.
        sequence, frame_index: the frame the entry's scan comes from.
        timestamp: seconds since the start of its sequence, or None.
        pose: 4x4 LiDAR pose in the z-up world frame.
    """

    rank: int
    score: float
    map_index: int
    sequence: str
    frame_index: int
    timestamp: float | None
    pose: np.ndarray

    @property
    def frame_id(self) -> str:
        """``sequence/frame_index``, e.g. ``08/000123``."""
        return f"{self.sequence}/{self.frame_index:06d}"

    @property
    def yaw_deg(self) -> float:
        """Heading in degrees (see :attr:`yaw`)."""
        return math.degrees(self.yaw)

    @property
    def xy(self) -> np.ndarray:
        """Ground-plane position (x, y) in metres."""
        return self.pose[:2, 3].copy()

    @property
    def yaw(self) -> float:
        """Heading of the LiDAR's x axis in the ground plane, radians counter-clockwise from world x."""
        return math.atan2(self.pose[1, 0], self.pose[0, 0])


class LidarMap:
    """LiDAR embeddings, poses and frame ids of a map, with a faiss index and the model's identity."""

    def __init__(
        self,
        embeddings: np.ndarray,
        poses: np.ndarray,
        sequences: list[str],
        frame_indices: np.ndarray,
        timestamps: np.ndarray,
        model_fingerprint: str,
        model_config: dict[str, Any],
        index: EmbeddingIndex,
        embedding_precision: str | None = None,
        world: str | None = None,
        preprocessing: str | None = None,
        camera: dict[str, Any] | None = None,
    ) -> None:
        """Use :meth:`build` or :meth:`load`; this constructor trusts its (consistent) arguments."""
        self.world = world
        """Id of the world frame every pose is in (``DatasetReader.world_id``), or None where
        unknown (maps built before it was recorded, or from frames made by hand)."""
        self.preprocessing = preprocessing
        """Identity of the input preprocessing the scans were embedded with
        (:func:`liploc.localization.map_growth.preprocessing_id`), or None where unknown."""
        self.camera = camera
        """Bridge maps: the camera of the map's drives, ``{"P": 3x4, "T_cam_lidar": 4x4,
        "image_size": [width, height]}`` (lists), with which query images are back-projected
        (one rig made the map); None for appearance maps."""
        self.embedding_precision = embedding_precision
        """Precision the map's scans were embedded with (``fp32``, ``bf16``, ``fp16``); queries are
        embedded with the same one. None for maps written before it was recorded."""
        self.embeddings = embeddings
        self.poses = poses
        self.sequences = sequences
        self.frame_indices = frame_indices
        self.timestamps = timestamps
        self.model_fingerprint = model_fingerprint
        self.model_config = model_config
        self.index = index

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        poses: np.ndarray,
        frame_ids: Sequence[tuple[str, int]],
        model_fingerprint: str,
        model_config: dict[str, Any],
        timestamps: Sequence[float | None] | np.ndarray | None = None,
        index_kind: IndexKind = "auto",
        embedding_precision: str | None = None,
        *,
        max_memory: int | None = None,
        world: str | None = None,
        preprocessing: str | None = None,
        camera: dict[str, Any] | None = None,
    ) -> LidarMap:
        """Make a map from LiDAR embeddings and their frames.

        Args:
            embeddings: (N, D) LiDAR embeddings, L2-normalised unless the model's ``normalize`` is false.
            poses: (N, 4, 4) LiDAR poses in the z-up world frame.
            frame_ids: N (sequence, frame index) pairs.
            model_fingerprint: identity of the model that made the embeddings (queries must match).
            model_config: the model's configuration (JSON-serialisable), kept for the record; its
                ``normalize`` says whether the index ranks by cosine or by the raw dot product.
            timestamps: N seconds (None/NaN where unknown), or None.
            index_kind: ``flat``, ``flat-fp16``, ``hnsw``, ``ivf-pq`` or ``auto`` (exact below
                100,000 entries, ivf-pq above; see :func:`liploc.localization.index.choose_kind`).
            embedding_precision: precision of the embedding forward passes, recorded so that queries
                are embedded alike.
            max_memory: resident bytes the index may take (``auto`` chooses within it; another
                kind that does not fit is refused with a ConfigError).
            world: id of the world frame of ``poses`` (one for the whole map), recorded.
            preprocessing: identity of the scans' input preprocessing, recorded (drives added
                later must match it).
            camera: the calibration of the map's camera (see :attr:`camera`); a geometry-bridge
                model (``model_config`` method ``bridge``) needs it to embed queries.
        """
        unit_norm = unit_norm_of(model_config)
        emb = check_embeddings(embeddings, "map embeddings", unit_norm=unit_norm)
        n = len(emb)
        poses, sequences, frame_indices, times = _checked_entries(n, poses, frame_ids, timestamps)
        if not model_fingerprint:
            raise ValueError("model_fingerprint must be a non-empty string")
        json.dumps(model_config)  # fail now, not at save time, on a config JSON cannot hold
        if method_of(model_config) == "bridge":
            camera = check_camera(camera)
        index = EmbeddingIndex.build(emb, kind=index_kind, unit_norm=unit_norm, max_memory=max_memory)
        return cls(
            emb,
            poses,
            sequences,
            frame_indices,
            times,
            model_fingerprint,
            dict(model_config),
            index,
            embedding_precision,
            world,
            preprocessing,
            camera,
        )

    def appended(
        self,
        embeddings: np.ndarray,
        poses: np.ndarray,
        frame_ids: Sequence[tuple[str, int]],
        timestamps: Sequence[float | None] | np.ndarray | None = None,
    ) -> LidarMap:
        """A new map holding this map's entries followed by the given ones (arguments as in
        :meth:`build`; the model, world and preprocessing are this map's, which the caller has
        checked). The index keeps its kind (see :meth:`EmbeddingIndex.extended`); this map is
        unchanged. Save the result over this map's folder to publish it in one atomic step."""
        emb = check_embeddings(embeddings, "added embeddings", dim=self.dim, unit_norm=self.index.unit_norm)
        poses, sequences, frame_indices, times = _checked_entries(len(emb), poses, frame_ids, timestamps)
        all_emb = np.concatenate([self.embeddings, emb])
        return LidarMap(
            all_emb,
            np.concatenate([self.poses, poses]),
            [*self.sequences, *sequences],
            np.concatenate([self.frame_indices, frame_indices]),
            np.concatenate([self.timestamps, times]),
            self.model_fingerprint,
            self.model_config,
            self.index.extended(all_emb),
            self.embedding_precision,
            self.world,
            self.preprocessing,
            self.camera,
        )

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def method(self) -> str:
        """The model's method: ``appearance`` (LIP-Loc; every map made before the geometry bridge)
        or ``bridge``."""
        return method_of(self.model_config)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.embeddings.shape[1])

    @property
    def xy(self) -> np.ndarray:
        """(N, 2) ground-plane positions of the entries."""
        return self.poses[:, :2, 3].copy()

    def check_query_model(self, query_fingerprint: str) -> None:
        """Raise :class:`ModelMismatchError` unless the query embeddings come from the map's model."""
        if query_fingerprint != self.model_fingerprint:
            raise ModelMismatchError(
                f"this map was built with model {self.model_fingerprint} "
                f"({_describe_model(self.model_config)}) but the query embeddings were made by model "
                f"{query_fingerprint}; embed the queries with the map's model or rebuild the map"
            )

    def search(
        self, query_embeddings: np.ndarray, k: int, *, query_fingerprint: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), map indices (Q, k)) of the best entries, -1 padded; checks the model."""
        self.check_query_model(query_fingerprint)
        try:
            return self.index.search(query_embeddings, k)
        except EmbeddingError as err:
            raise EmbeddingError(f"{err} [map dimension {self.dim}]") from err

    def localize(
        self, query_embeddings: np.ndarray, k: int = 5, *, query_fingerprint: str
    ) -> list[list[Match]]:
        """The k best map entries for each query embedding ((Q, D) or one (D,) vector).

        Raises:
            ModelMismatchError: the queries were embedded by another model than the map's.
            EmbeddingError: wrong dimension or not L2-normalised.
        """
        scores, indices = self.search(query_embeddings, k, query_fingerprint=query_fingerprint)
        return [
            [
                self._match(rank, float(s), int(i))
                for rank, (s, i) in enumerate(zip(srow, irow, strict=True), 1)
                if i >= 0
            ]
            for srow, irow in zip(scores, indices, strict=True)
        ]

    def _match(self, rank: int, score: float, i: int) -> Match:
        t = self.timestamps[i]
        return Match(
            rank=rank,
            score=score,
            map_index=i,
            sequence=self.sequences[i],
            frame_index=int(self.frame_indices[i]),
            timestamp=None if math.isnan(t) else float(t),
            pose=self.poses[i].copy(),
        )

    # --- save / load ---------------------------------------------------------------------------
    def save(self, directory: str | Path, add_files: Callable[[Path], None] | None = None) -> Path:
        """Write the map folder atomically and return its path.

        ``add_files(folder)`` may add files to the new map before it is swapped in (the model
        copy), so that they appear together with it. An existing map folder (or an empty folder)
        at ``directory`` is replaced; any other non-empty folder is refused so that a wrong path
        never deletes user files. A full disk raises DiskFullError; the old map stays.
        """
        directory = Path(directory)
        if directory.exists() and (
            not directory.is_dir() or (any(directory.iterdir()) and not (directory / MANIFEST).is_file())
        ):
            raise DataError(directory, "exists and is not a liploc map folder; refusing to overwrite it")
        with reporting_full_disk(directory):
            directory.parent.mkdir(parents=True, exist_ok=True)
        directory = real_folder(directory)  # through a symlink: replace what it points to
        sweep_folder_leftovers(directory)
        tmp = scratch_path(directory, "tmp")
        needed = self.embeddings.nbytes * 2 + self.poses.nbytes + 64 * len(self)
        try:
            with reporting_full_disk(tmp, needed):
                tmp.mkdir(mode=0o700)
                os.chmod(tmp, dir_mode())  # mkdir's mode is masked; a map is as shareable as the umask says
                self._write_files(tmp)
                if add_files is not None:
                    add_files(tmp)
            fault_point("map.folder_written")
            replace_folder(tmp, directory, swapped_fault="map.swapped")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    def _write_files(self, folder: Path) -> None:
        np.save(folder / "embeddings.npy", self.embeddings, allow_pickle=False)
        fault_point("map.embeddings_written")  # a map's files half written (the scratch folder's)
        np.save(folder / "poses.npy", self.poses, allow_pickle=False)
        frames = {
            "sequence": self.sequences,
            "frame_index": self.frame_indices.tolist(),
            "timestamp": [None if math.isnan(t) else float(t) for t in self.timestamps],
        }
        (folder / "frames.json").write_text(json.dumps(frames), encoding="utf-8")
        self.index.save(folder / "index.faiss")
        manifest = {
            "format": MAP_FORMAT,
            "version": MAP_VERSION if self.index.kind in RERANKED_KINDS else MAP_VERSION_EXACT,
            "num_entries": len(self),
            "embedding_dim": self.dim,
            "index_kind": self.index.kind,
            "index": self.index.params,
            "world": self.world,
            "preprocessing": self.preprocessing,
            "model": {"fingerprint": self.model_fingerprint, "config": self.model_config},
            "method": self.method,
            "embedding_precision": self.embedding_precision,
            "files": {name: {"sha256": file_size_and_sha256(folder / name)[1]} for name in _FILES},
        }
        if self.camera is not None:
            manifest["camera"] = self.camera
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        for name in (*_FILES, MANIFEST):
            with open(folder / name, "rb+") as f:
                os.fsync(f.fileno())

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True) -> LidarMap:
        """Read a map folder written by :meth:`save`.

        Args:
            directory: the map folder.
            verify: check each file's sha256 against the manifest (a corrupt file is named).

        Raises:
            DataError: the folder, the manifest or a file is missing, corrupt or inconsistent.
        """
        directory = Path(directory)
        for attempt in range(3):
            before = _folder_identity(directory)
            try:
                return cls._load(directory, verify)
            except DataError:
                # A rebuild swapped the folder while we read it: read the new one.
                if attempt == 2 or _folder_identity(directory) in (before, None):
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _load(cls, directory: Path, verify: bool) -> LidarMap:
        if not directory.is_dir():
            raise DataError(directory, "map folder not found")
        manifest_path = directory / MANIFEST
        manifest = _read_manifest(manifest_path)
        try:
            files = manifest["files"]
            n = int(manifest["num_entries"])
            dim = int(manifest["embedding_dim"])
            fingerprint = str(manifest["model"]["fingerprint"])
            model_config = dict(manifest["model"]["config"])
            index_params = dict(manifest.get("index") or {})
            recorded_kind = manifest.get("index_kind")
            shortlist = int(index_params.get("shortlist", RERANK_SHORTLIST))
            world = manifest.get("world")
            preprocessing = manifest.get("preprocessing")
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(manifest_path, f"map manifest lacks or mangles an entry ({err})") from err
        for name in _FILES:
            path = directory / name
            if not path.is_file():
                raise DataError(path, "missing map file")
            if verify:
                expected = files.get(name, {}).get("sha256") if isinstance(files, dict) else None
                if expected != file_size_and_sha256(path)[1]:
                    raise DataError(
                        path, "checksum does not match the manifest: the file is corrupt or was changed"
                    )

        embeddings = _load_npy(directory / "embeddings.npy", (n, dim), np.float32)
        poses = _load_npy(directory / "poses.npy", (n, 4, 4), np.float64)
        frames_path = directory / "frames.json"
        try:
            frames = json.loads(frames_path.read_text(encoding="utf-8"))
            names: dict[str, str] = {}  # one string per drive, not one per entry (8 bytes each)
            sequences = [names.setdefault(s, s) for s in map(str, frames["sequence"])]
            frame_indices = np.array(frames["frame_index"], dtype=np.int64)
            times = np.array([np.nan if t is None else t for t in frames["timestamp"]], dtype=np.float64)
        except RecursionError:  # a list nested thousands deep: no frame list of liploc's
            raise DataError(frames_path, "unreadable frame list (nested too deeply)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DataError(frames_path, f"unreadable frame list ({err})") from err
        if not (len(sequences) == len(frame_indices) == len(times) == n):
            raise DataError(frames_path, f"expected {n} frames as the manifest says")
        camera = manifest.get("camera")
        if method_of(model_config) == "bridge":
            try:
                camera = check_camera(camera)
            except ValueError as err:
                raise DataError(
                    manifest_path, f"geometry-bridge map without a usable camera ({err})"
                ) from None
        index_path = directory / "index.faiss"
        index = EmbeddingIndex.load(
            index_path, unit_norm=unit_norm_of(model_config), vectors=embeddings, shortlist=shortlist
        )
        if recorded_kind is not None and recorded_kind != index.kind:
            raise DataError(index_path, f"holds a {index.kind} index but the manifest says {recorded_kind}")
        try:
            index.check_vectors(embeddings)
        except EmbeddingError as err:
            raise DataError(index_path, f"does not match embeddings.npy: {err}") from err
        return cls(
            embeddings,
            poses,
            sequences,
            frame_indices,
            times,
            fingerprint,
            model_config,
            index,
            manifest.get("embedding_precision"),
            world if isinstance(world, str) else None,
            preprocessing if isinstance(preprocessing, str) else None,
            camera,
        )


def _checked_entries(
    n: int,
    poses: np.ndarray,
    frame_ids: Sequence[tuple[str, int]],
    timestamps: Sequence[float | None] | np.ndarray | None,
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """(poses, sequences, frame indices, timestamps) of ``n`` entries, checked."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.shape != (n, 4, 4):
        raise ValueError(f"poses: expected shape ({n}, 4, 4), got {tuple(poses.shape)}")
    if not np.all(np.isfinite(poses)):
        raise ValueError("poses: every map entry needs a finite pose")
    if len(frame_ids) != n:
        raise ValueError(f"frame_ids: expected {n} (sequence, index) pairs, got {len(frame_ids)}")
    sequences = [str(s) for s, _ in frame_ids]
    frame_indices = np.array([int(i) for _, i in frame_ids], dtype=np.int64)
    if timestamps is None:
        times = np.full(n, np.nan)
    else:
        times = np.array([np.nan if t is None else float(t) for t in timestamps], dtype=np.float64)
        if times.shape != (n,):
            raise ValueError(f"timestamps: expected {n} values, got {times.shape}")
    return poses, sequences, frame_indices, times


def _folder_identity(directory: Path) -> int | None:
    try:
        return directory.stat().st_ino
    except OSError:
        return None


def unit_norm_of(model_config: dict[str, Any]) -> bool:
    """Whether the map's model L2-normalises its embeddings (``model.normalize``; maps made before
    that setting existed hold normalised embeddings)."""
    return bool(model_config.get("normalize", True))


def method_of(model_config: dict[str, Any]) -> str:
    """The method of a map's model config (``appearance`` for configs made before methods)."""
    return str(model_config.get("method", "appearance"))


def check_camera(camera: Any) -> dict[str, Any]:
    """A bridge map's camera as JSON lists (ValueError naming what is missing or wrong)."""
    if not isinstance(camera, dict):
        raise ValueError("a geometry-bridge map needs the camera calibration of its drives")
    try:
        P = np.asarray(camera["P"], dtype=np.float64)
        T = np.asarray(camera["T_cam_lidar"], dtype=np.float64)
        size = [int(v) for v in camera["image_size"]]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"camera needs P, T_cam_lidar and image_size ({err})") from None
    if P.shape != (3, 4) or T.shape != (4, 4) or len(size) != 2 or min(size) <= 0:
        raise ValueError(f"camera: P {P.shape} must be 3x4, T_cam_lidar {T.shape} 4x4, image_size two sides")
    if not (np.all(np.isfinite(P)) and np.all(np.isfinite(T))):
        raise ValueError("camera: P and T_cam_lidar must be finite")
    return {"P": P.tolist(), "T_cam_lidar": T.tolist(), "image_size": size}


def _describe_model(config: dict[str, Any]) -> str:
    keys = ("image_encoder", "lidar_encoder", "embed_dim")
    parts = [f"{k}={config[k]}" for k in keys if k in config]
    return ", ".join(parts) if parts else "no model config recorded"


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a map of either version (:data:`MAP_VERSION`, :data:`MAP_VERSION_EXACT`)."""
    versions = (MAP_VERSION, MAP_VERSION_EXACT)
    for version in versions:
        try:
            return read_versioned_json(
                path,
                fmt=MAP_FORMAT,
                version=version,
                missing="missing: this folder is not a liploc map (no manifest)",
                unreadable="unreadable map manifest",
                other_format=f"not a liploc map manifest (format is not {MAP_FORMAT!r})",
                other_version="map format version {version} is not supported (this liploc reads "
                f"versions {MAP_VERSION_EXACT} and {MAP_VERSION}); rebuild the map",
            )
        except DataError as err:
            if version == versions[-1] or "map format version" not in err.problem:
                raise
    raise AssertionError("unreachable")


def _load_npy(path: Path, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """The array of ``path``, memory-mapped read-only (its pages are read when used)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(path, f"not a readable .npy array ({err})") from err
    if array.shape != shape:
        raise DataError(path, f"expected shape {shape}, found {array.shape}")
    if array.dtype != dtype:
        raise DataError(path, f"expected {np.dtype(dtype).name} values, found {array.dtype}")
    return array
