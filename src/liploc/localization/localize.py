"""LiDAR maps from a trained model, and localization of camera images against them.

A map folder (see :mod:`liploc.localization.lidar_map`) holds the LiDAR embeddings, poses and faiss index of
one or more sequences, plus a copy of the model checkpoint that made them (``model/``), so that a
deployed map is self-contained: ``liploc localize MAP IMAGE`` needs nothing else. A query embedded
by another model (``--checkpoint`` of another run) is refused by the map's fingerprint check.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from liploc.config import Config
from liploc.errors import ConfigError, DataError, LiplocError
from liploc.localization.index import IndexKind
from liploc.localization.lidar_map import LidarMap, Match
from liploc.localization.map_folder import MapFolder
from liploc.localization.map_growth import embed_map_scans, one_world, posed_map_frames, preprocessing_id
from liploc.localization.sequences import MapTrack, SequenceMatcher, SequenceSettings

if TYPE_CHECKING:
    from rich.console import Console


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
    onnx: bool = True,
    index_kind: IndexKind = "auto",
    max_memory: int | None = None,
) -> LidarMap | None:
    """Embed every posed LiDAR scan of ``sequences`` and save a self-contained map folder at ``out``;
    returns the map (None on the ranks other than 0 of a distributed build).

    ``precision`` (``fp32``, ``bf16``, ``fp16``; None: the checkpoint's ``train.precision`` on the
    device) is recorded in the map; localization embeds its queries with the same one. The map, with
    its copy of the checkpoint in ``model/``, appears in one atomic step; an existing map at ``out``
    is replaced only with ``force``.

    With ``onnx``, ``model/onnx`` holds an ONNX export of the camera tower (checked against torch),
    so that ``liploc localize`` answers without loading torch and timm (0.4 s from a cold start
    instead of 4 s on a small CPU); a model the exporter cannot handle leaves a map without one,
    and says so. Geometry-bridge maps record the camera calibration of their drives, with which
    queries are back-projected (by torch, or by the export fed the camera's pixel rays).

    ``index_kind`` and ``max_memory`` (bytes) choose the search index (see
    :func:`liploc.localization.index.choose_kind`); the map records it. Every sequence must be in
    one world frame (a map's poses are compared with each other): sequences of different worlds
    are refused, naming two of them, before the model is loaded.

    Under ``torchrun`` (a process group of several ranks, :mod:`liploc.runtime.process_group`),
    every rank calls this with the same arguments: each embeds one contiguous share of the frames,
    cut at whole batches of ``batch_size`` (so each batch is the one a single process would
    embed), the shares are gathered in rank order on rank 0 alone (the other ranks never hold
    the whole map's embeddings), and rank 0 alone builds the index and writes
    the map (the one a single process writes, byte for byte); it alone prints. The other ranks
    wait for it to say it wrote the map and return None (the map is on rank 0's disk, which may be
    another node's), or raise if it failed.
    """
    # Imported here: localization (below) needs none of evaluation's modules, and starts faster.
    from liploc.datasets import open_dataset
    from liploc.datasets.base import require_sequences
    from liploc.datasets.sequence_names import resolve_sequence_name
    from liploc.runtime.device import embedding_precision, pick_device
    from liploc.runtime.process_group import get_rank, get_world_size, local_rank, shard_range
    from liploc.runtime.run_folder import load_model_from_checkpoint

    rank, world_size = get_rank(), get_world_size()
    if rank != 0:
        console = None  # rank 0 speaks for the job
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(f"{out}: a map (or other files) already exists there; pass --force to replace it")
    reader = open_dataset(data_root, layout)
    sequences = [resolve_sequence_name(s, reader.sequences(), data_root) for s in sequences]  # "8" -> "08"
    require_sequences(reader, data_root, list(sequences))
    world = one_world(reader, sequences)
    model, config = load_model_from_checkpoint(checkpoint)
    frames = posed_map_frames(reader, data_root, sequences, console)
    dev = pick_device(device, local_rank())
    precision = precision or embedding_precision(config, dev)
    start, stop = shard_range(len(frames), rank, world_size, multiple=batch_size)
    emb = embed_map_scans(model, frames[start:stop], config, dev, batch_size, precision, console)
    if world_size > 1:
        gathered = _gather_shards(emb)
        if gathered is None:  # not rank 0: it alone holds every rank's rows, and writes the map
            _await_main_rank()
            return None
        emb = gathered
    with _telling_the_other_ranks(world_size > 1):
        return _build_and_save(
            emb,
            frames,
            checkpoint=checkpoint,
            out=out,
            model=model,
            config=config,
            sequences=sequences,
            world=world,
            precision=precision,
            console=console,
            onnx=onnx,
            index_kind=index_kind,
            max_memory=max_memory,
        )


def _build_and_save(
    emb: np.ndarray,
    frames: Sequence[Any],
    *,
    checkpoint: str | Path,
    out: Path,
    model: Any,
    config: Config,
    sequences: Sequence[str],
    world: str | None,
    precision: str,
    console: Console | None,
    onnx: bool,
    index_kind: IndexKind,
    max_memory: int | None,
) -> LidarMap:
    """The map of ``frames`` (embedded as ``emb``) with its index, saved with the model at ``out``."""
    from liploc.datasets.frame import frame_times
    from liploc.runtime.checkpoint import copy_checkpoint
    from liploc.runtime.run_folder import resolve_checkpoint

    lidar_map = LidarMap.build(
        emb,
        np.stack([f.pose for f in frames]),
        [(f.sequence, f.index) for f in frames],
        model.fingerprint(),
        config.model.model_dump(mode="json"),
        timestamps=frame_times(frames),
        embedding_precision=precision,
        index_kind=index_kind,
        max_memory=max_memory,
        world=world,
        preprocessing=preprocessing_id(config),
        camera=map_camera(frames, console) if config.model.method == "bridge" else None,
    )
    # The checkpoint travels with the map (inside it before the swap) so that a deployed map is
    # self-contained and never seen without its model.
    ckpt = resolve_checkpoint(checkpoint)

    def add_model(folder: Path) -> None:
        copy_checkpoint(ckpt, MapFolder(folder).checkpoint)
        if onnx:
            _export_camera_tower(folder, console)

    out = lidar_map.save(out, add_files=add_model)
    if console is not None:
        console.print(f"map of {len(lidar_map)} scans ({', '.join(sequences)}) written to {out}")
    return lidar_map


def _gather_shards(emb: np.ndarray) -> np.ndarray | None:
    """Every rank's embeddings, in rank order (the frames' order), on rank 0; None on the others."""
    from liploc.runtime.process_group import collective_device, gather_uneven_to_main

    rows = torch.from_numpy(np.ascontiguousarray(emb)).to(collective_device())
    gathered = gather_uneven_to_main(rows)
    return None if gathered is None else gathered.cpu().numpy()


class _MainRankFailed(LiplocError):
    """Rank 0 of a distributed ``map build`` did not write the map (it says why)."""


@contextmanager
def _telling_the_other_ranks(distributed: bool) -> Iterator[None]:
    """Rank 0: run the body, then tell the waiting ranks (:func:`_await_main_rank`) whether the map
    was written, also when it failed, so that they never wait for a map that will not come."""
    ok = False
    try:
        yield
        ok = True
    finally:
        if distributed:
            _broadcast_flag(ok)


def _await_main_rank() -> None:
    """Wait until rank 0 says it wrote the map (:class:`_MainRankFailed` if it failed)."""
    if not _broadcast_flag(False):
        raise _MainRankFailed("rank 0 did not write the map (its error says why)")


def _broadcast_flag(value: bool) -> bool:
    """Rank 0's ``value`` on every rank."""
    import torch.distributed as dist

    from liploc.runtime.process_group import collective_device

    flag = torch.tensor([int(value)], dtype=torch.int32, device=collective_device())
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def map_camera(frames: Sequence[Any], console: Console | None = None) -> dict[str, Any]:
    """The camera of a bridge map's drives (the first frame's calibration, full image size): what
    back-projects its queries. Drives whose calibration differs are named (one rig should make a map)."""
    from liploc.errors import DataError

    calib = frames[0].calib
    if calib.image_size is None:
        raise DataError(frames[0].image_path, "calibration has no image size; a bridge map needs it")
    P = np.asarray(calib.P, dtype=np.float64)
    P = np.hstack([P, np.zeros((3, 1))]) if P.shape == (3, 3) else P
    T = np.asarray(calib.T_cam_lidar, dtype=np.float64)
    others = sorted(
        {
            f.sequence
            for f in frames
            if f.calib is not calib
            and (
                tuple(f.calib.image_size or ()) != tuple(calib.image_size)
                or not np.allclose(np.asarray(f.calib.P)[:, :3], P[:, :3], rtol=1e-3, atol=1e-3)
                or not np.allclose(np.asarray(f.calib.T_cam_lidar), T, atol=1e-3)
            )
        }
    )
    if others:
        message = (
            f"drives {', '.join(others)} have another camera calibration than {frames[0].sequence}'s; "
            f"the map's queries are back-projected with {frames[0].sequence}'s"
        )
        if console is not None:
            console.print(f"[yellow]warning:[/] {message}")
        else:
            warnings.warn(message, UserWarning, stacklevel=3)
    return {"P": P.tolist(), "T_cam_lidar": T.tolist(), "image_size": [int(v) for v in calib.image_size]}


def _export_camera_tower(map_dir: Path, console: Console | None) -> None:
    """The map's ONNX export of its camera tower (``model/onnx``), or a warning why there is none."""
    from liploc.interop.onnx_export import export_onnx

    folder = MapFolder(map_dir)
    try:
        try:
            export_onnx(folder.checkpoint, folder.onnx_dir, towers=("image",))
        except SystemError:
            # CPython 3.11's AST constructor is not thread-safe ("AST constructor recursion depth
            # mismatch" when another thread parses code while torch.export does): seen once in a
            # map build beside a thread loading maps. A second try gives the export.
            export_onnx(folder.checkpoint, folder.onnx_dir, towers=("image",))
    except OSError:
        raise  # a full disk is the map's failure, not the export's
    except Exception as err:  # the exporter's many failure types; the map works without
        message = f"no ONNX export in the map ({type(err).__name__}: {err}); `liploc localize` will use torch"
        if console is not None:
            console.print(f"[yellow]warning:[/] {message}")
        else:
            warnings.warn(message, UserWarning, stacklevel=3)


class ImageEmbedder(Protocol):
    """The seam between :class:`Localizer` and the network: a batch of camera images, already
    preprocessed to the model's input size, in -> unit-norm embeddings out.

    Another backend (ONNX Runtime, a remote service) replaces :class:`TorchImageEmbedder` by
    implementing this and passing it as ``Localizer(..., embedder=...)``.
    """

    fingerprint: str
    """Identity of the model whose camera tower this is (:meth:`TwoTowerModel.fingerprint`)."""

    def embed(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) images in the 0..255 scale (uint8 or float) -> (B, D) float32 unit-norm."""
        ...


class TorchImageEmbedder:
    """:class:`ImageEmbedder` running a torch camera tower resident on ``device``: normalisation
    on the device, channels-last, autocast on CUDA, as evaluation embeds queries."""

    def __init__(
        self,
        tower: nn.Module,
        config: Config,
        device: torch.device,
        fingerprint: str,
        precision: str | None = None,
    ) -> None:
        from liploc.runtime.device import autocast_dtype, precision_dtype
        from liploc.runtime.inputs import build_transforms

        self.fingerprint = fingerprint
        self.device = device
        self.channels_last = config.train.channels_last
        self.tower = tower.eval().to(device)
        if self.channels_last:
            self.tower.to(memory_format=torch.channels_last)
        self.transform = build_transforms(config.data, train=False, model=config.model).image
        # A map's precision when given: queries must be embedded as the map was.
        self.dtype = (
            precision_dtype(precision) if precision else autocast_dtype(config.train.precision, device)
        )
        self.normalize = config.model.normalize

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> np.ndarray:
        from liploc.localization.embedding import embed_batch

        x = self.transform.on_device(images, None, self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return embed_batch(self.tower.encode_image, x, self.dtype, self.normalize).cpu().numpy()


ImageInput = str | Path | np.ndarray
"""A query: an image file, or an already decoded uint8 (H, W, 3) RGB array."""


@dataclass
class Localizer:
    """A map and the model whose camera tower embeds queries for it (the Python API of ``localize``).

    Keeps the camera tower resident; the model's fingerprint is known from the start (computed
    once by :meth:`open`), so a query costs its preprocessing, the forward pass and the search.
    """

    lidar_map: LidarMap
    model: nn.Module | None
    """The camera tower (anything with ``encode_image``; :meth:`open` loads an ImageTower); None
    when ``embedder`` runs the network elsewhere (ONNX Runtime) and ``fingerprint`` is given."""
    config: Config
    device: Any
    fingerprint: str = ""
    """The model's fingerprint; empty: computed once here from ``model`` (a TwoTowerModel)."""
    max_batch: int = 32
    """Images embedded per forward pass; more are split into batches of this size."""
    embedder: ImageEmbedder | None = None
    """Image batch -> embeddings; default: :class:`TorchImageEmbedder` of ``model``."""

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.model is None and (self.embedder is None or not self.fingerprint):
            raise ValueError("a Localizer needs the model, or an embedder and the model's fingerprint")
        if not self.fingerprint:
            self.fingerprint = self.model.fingerprint()  # type: ignore[operator,union-attr]
        self.device = torch.device(self.device)
        if self.embedder is None:
            assert self.model is not None
            self.embedder = TorchImageEmbedder(
                self.model, self.config, self.device, self.fingerprint, self.lidar_map.embedding_precision
            )

    @classmethod
    def open(
        cls,
        map_dir: str | Path,
        checkpoint: str | Path | None = None,
        device: str = "auto",
        max_batch: int = 32,
    ) -> Localizer:
        """Load a map folder and the camera tower of its model (the map's own copy unless
        ``checkpoint`` is given); the LiDAR tower is never built."""
        from liploc.runtime.device import pick_device

        map_dir = Path(map_dir)
        lidar_map = LidarMap.load(map_dir)
        if checkpoint is None:
            checkpoint = MapFolder(map_dir).checkpoint
            if not checkpoint.is_file():
                raise DataError(map_dir, "map has no model/ copy; pass the checkpoint that built it")
        tower, config, fingerprint = load_image_tower_from_checkpoint(checkpoint)
        if config.model.method == "bridge":
            tower = calibrated_tower(tower, lidar_map, config)
        return cls(lidar_map, tower, config, pick_device(device), fingerprint, max_batch)

    def preprocess(self, image: ImageInput) -> np.ndarray:
        """uint8 (3, H, W) model-size input of one query (decoded and resized as in training)."""
        from liploc.datasets import load_image
        from liploc.runtime.inputs import camera_image_input

        array = load_image(Path(image)) if not isinstance(image, np.ndarray) else image
        if array.ndim != 3 or array.shape[2] != 3:
            raise DataError(
                Path(str(image)) if not isinstance(image, np.ndarray) else Path("<array>"),
                f"expected an (H, W, 3) RGB image, got shape {array.shape}",
            )
        return camera_image_input(array, self.config)

    def embed(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(N, D) float32 unit-norm embeddings of the queries, at most ``max_batch`` per forward."""
        assert self.embedder is not None
        parts = []
        for start in range(0, len(images), self.max_batch):
            chunk = images[start : start + self.max_batch]
            batch = torch.from_numpy(np.stack([self.preprocess(image) for image in chunk]))
            parts.append(self.embedder.embed(batch))
        if not parts:
            return np.zeros((0, self.lidar_map.dim), dtype=np.float32)
        return np.concatenate(parts)

    def localize(self, images: Sequence[ImageInput], k: int = 5) -> list[list[Match]]:
        """Top-``k`` map entries (poses and scores) for each camera image (file or RGB array)."""
        assert self.embedder is not None
        emb = self.embed(images)
        return self.lidar_map.localize(emb, k, query_fingerprint=self.embedder.fingerprint)

    def localize_sequence(
        self,
        images: Sequence[ImageInput],
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
        assert self.embedder is not None
        lm.check_query_model(self.embedder.fingerprint)
        emb = self.embed(images)
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


def load_image_tower_from_checkpoint(checkpoint: str | Path) -> tuple[nn.Module, Config, str]:
    """(camera tower, training config, full model fingerprint) of a checkpoint or run folder.

    The fingerprint is that of the whole two-tower model (what maps record), computed once from
    the checkpoint's tensors; only the camera tower is built, without random initialisation (a
    geometry-bridge model is built whole: its ``encode_image`` needs the calibration, see
    :func:`calibrated_tower`).
    """
    from liploc.config import config_from_dict
    from liploc.models import architecture_of, inference_config, load_image_tower, state_fingerprint
    from liploc.runtime.checkpoint import load_checkpoint, strip_prefix
    from liploc.runtime.run_folder import MODEL_PREFIX, resolve_checkpoint

    file = resolve_checkpoint(checkpoint)
    tensors, metadata = load_checkpoint(file)
    config_dict = metadata.get("config") if isinstance(metadata, dict) else None
    if not isinstance(config_dict, dict):
        raise DataError(file, "checkpoint metadata holds no training configuration ('config')")
    config = config_from_dict(config_dict, source=f"{file} (config)")
    model_cfg = inference_config(config.model)
    state = strip_prefix(tensors, MODEL_PREFIX)
    try:
        tower = load_image_tower(model_cfg, state)
    except (KeyError, RuntimeError) as err:
        raise DataError(file, f"weights do not match the camera tower of its config ({err})") from None
    return tower, config, state_fingerprint(architecture_of(model_cfg), state)


def calibrated_tower(model: nn.Module, lidar_map: LidarMap, config: Config) -> nn.Module:
    """A geometry-bridge model's camera side with the map's camera filled in (queries come from
    the rig that made the map), its calibration scaled to the model's ``depth_size``."""
    from liploc.datasets.frame import Calibration
    from liploc.lidar.back_projection import calibration_for_depth
    from liploc.models import CalibratedImageTower

    if lidar_map.camera is None:
        raise DataError(
            Path("<map>"),
            f"this {lidar_map.method} map records no camera calibration; a geometry-bridge model "
            "needs it to embed queries",
        )
    calib = Calibration.from_json(lidar_map.camera)
    scaled = calibration_for_depth(calib, tuple(config.model.bridge.depth_size))  # type: ignore[arg-type]
    return CalibratedImageTower(
        model,  # type: ignore[arg-type]
        torch.as_tensor(np.asarray(scaled.P, dtype=np.float64)),
        torch.as_tensor(np.asarray(scaled.T_cam_lidar, dtype=np.float64)),
    )


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
