"""What the service serves: a map, the image encoder of its model (torch or onnxruntime), and the
map's own data (trajectory, metadata, range images of its scans).

``MapService.open`` loads everything once; requests then only embed and search. The encoder's
fingerprint is checked against the map's at start, so a service never answers with another
model's embeddings.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from liploc.config import Config, ProjectionConfig
from liploc.errors import ConfigError, DataError, LiplocError
from liploc.localization.lidar_map import LidarMap, Match
from liploc.localization.map_folder import MANIFEST

if TYPE_CHECKING:
    from liploc.localization.localize import SequenceLocalization

Backend = Literal["torch", "onnx"]
RANGE_CACHE_SIZE = 256
"""Range-image PNGs kept in memory (oldest dropped first)."""


class QueryEncoder(Protocol):
    """RGB images -> unit-norm embeddings of the map's model.

    ``embed`` is ``embed_prepared`` of each image's ``prepare``; the service splits them so that
    the per-image work (resizing to the network's input) runs in the request's decode thread, in
    parallel, and a batch only runs the network.
    """

    backend: str
    fingerprint: str
    device: Any

    def init_thread(self) -> None:
        """Prepare the calling thread (a worker of the service) to run this encoder's code."""
        ...

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """The network input of one (H, W, 3) uint8 RGB image (thread-safe, no network)."""
        ...

    def embed_prepared(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float32 unit-norm embeddings of inputs made by :meth:`prepare`."""
        ...

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float32 embeddings of (H, W, 3) uint8 RGB images."""
        ...


class TorchImageEncoder:
    """The camera tower of a torch model, through the resident :class:`Localizer`: the same
    preprocessing, precision (the map's), normalisation and bounded batches as ``liploc localize``."""

    backend = "torch"

    def __init__(self, localizer: Any) -> None:
        self.localizer = localizer
        self.device = localizer.device
        self.fingerprint: str = localizer.fingerprint  # computed once, when the Localizer opened

    def init_thread(self) -> None:
        # OpenMP's thread count is per thread, and faiss has an OpenMP runtime of its own: in a
        # new thread both default to every core whatever torch.set_num_threads said in the main
        # thread, and faiss's team then spins in its barrier after every search (a third of the
        # server's CPU on 2 cores). Give this thread the process's torch setting, for both.
        import faiss
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return self.localizer.preprocess(image)

    def embed_prepared(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        loc = self.localizer
        parts = [
            loc.embedder.embed(torch.from_numpy(np.stack(inputs[start : start + loc.max_batch])))
            for start in range(0, len(inputs), loc.max_batch)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, loc.lidar_map.dim), dtype=np.float32)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.localizer.embed(list(images))


class UnknownFrame(LookupError):
    """A frame id that is not in the map."""


@dataclass(eq=False)
class MapService:
    """A loaded map with its query encoder, and what the map page shows of it."""

    map_dir: Path
    lidar_map: LidarMap
    encoder: QueryEncoder
    projection: ProjectionConfig
    data_root: Path | None = None
    layout: str = "auto"
    config: Config | None = None
    """The model's training configuration (its preprocessing), for sequence localization."""
    _sequencer: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _range_cache: dict[tuple[str, int], bytes] = field(default_factory=dict, repr=False)
    _dataset: Any = field(default=None, repr=False)
    _open_options: dict[str, Any] | None = field(default=None, repr=False)
    """The options :meth:`open` was given (:meth:`reopen` uses them again); None when made by hand."""

    @classmethod
    def open(
        cls,
        map_dir: str | Path,
        *,
        backend: Backend = "torch",
        device: str = "auto",
        checkpoint: str | Path | None = None,
        onnx_dir: str | Path | None = None,
        data_root: str | Path | None = None,
        layout: str = "auto",
        threads: int | None = None,
    ) -> MapService:
        """Load the map and its query encoder (``torch``: the map's model copy or ``checkpoint``;
        ``onnx``: an ONNX export, default ``MAP/model/onnx``). ``data_root``: the dataset the map
        was built from, for the range images of its scans (optional). ``threads``: CPU threads
        of the onnx backend's forward pass (torch's are the process's, set by ``serve``)."""

        map_dir = Path(map_dir)
        if backend == "onnx":
            if checkpoint is not None:
                raise ConfigError("--checkpoint is for the torch backend; give --onnx DIR for onnx")
            from liploc.localization.onnx_localizer import OnnxLocalizer, export_config

            loc = OnnxLocalizer.open(map_dir, onnx_dir, threads=threads)
            config = export_config(loc.encoder.folder)
            lidar_map, encoder = loc.lidar_map, loc.encoder
        elif backend == "torch":
            if onnx_dir is not None:
                raise ConfigError("--onnx is for the onnx backend (--backend onnx)")
            from liploc.localization.localize import Localizer

            torch_loc = Localizer.open(map_dir, checkpoint, device)
            config = torch_loc.config
            lidar_map = torch_loc.lidar_map
            encoder = TorchImageEncoder(torch_loc)
        else:
            raise ConfigError(f"unknown backend '{backend}' (torch or onnx)")
        lidar_map.check_query_model(encoder.fingerprint)
        if data_root is not None and not Path(data_root).is_dir():
            raise DataError(data_root, "dataset folder not found (--data-root)")
        return cls(
            map_dir,
            lidar_map,
            encoder,
            config.projection,
            Path(data_root) if data_root is not None else None,
            layout,
            config,
            _open_options={
                "backend": backend,
                "device": device,
                "checkpoint": checkpoint,
                "onnx_dir": onnx_dir,
                "data_root": data_root,
                "layout": layout,
                "threads": threads,
            },
        )

    def reopen(self) -> MapService:
        """A new service over this one's map folder, loaded again with the same options (the map
        as it is on disk now: after a ``liploc map add``, with the added drives). This one is
        unchanged.

        Raises:
            ConfigError: this service was not made by :meth:`open`.
            DataError, ModelMismatchError: the map folder does not load now (it names why).
        """
        if self._open_options is None:
            raise ConfigError(
                "this service was not opened from its map folder (MapService.open): it cannot reload"
            )
        return MapService.open(self.map_dir, **self._open_options)

    @property
    def name(self) -> str:
        """The map folder's name."""
        return self.map_dir.resolve().name

    def localize(self, images: Sequence[np.ndarray], k: int) -> list[list[Match]]:
        """Top-``k`` matches of each RGB image (one forward pass for all of them)."""
        return self.localize_prepared([self.encoder.prepare(image) for image in images], k)

    def localize_prepared(self, inputs: Sequence[np.ndarray], k: int) -> list[list[Match]]:
        """Top-``k`` matches of each network input made by ``encoder.prepare`` (one forward pass)."""
        emb = self.encoder.embed_prepared(inputs)
        return self.lidar_map.localize(emb, k, query_fingerprint=self.encoder.fingerprint)

    def sequence_input(self, image: np.ndarray) -> np.ndarray:
        """An (H, W, 3) uint8 RGB image resized to the network's input, as the Localizer resizes
        its queries: :meth:`localize_sequence` gives the same answer for it as for ``image``
        (the Localizer's resize of an image already at the input size changes nothing), and a
        request keeps a few kilobytes per image instead of its decoded pixels. Thread-safe."""
        from liploc.runtime.inputs import camera_image_input

        if self.config is None:
            raise ConfigError("sequence localization needs the model's configuration")
        return np.ascontiguousarray(camera_image_input(image, self.config).transpose(1, 2, 0))

    def localize_sequence(
        self, images: Sequence[np.ndarray], k: int, travelled_m: Sequence[float] | None = None
    ) -> SequenceLocalization:
        """The last of ``images`` (RGB, in driving order; full size or :meth:`sequence_input`)
        localized by sequence matching over all of them, with the best path
        (:meth:`Localizer.localize_sequence`; ``travelled_m``: metres between consecutive images,
        or None). Not thread-safe: the service runs it on its batch thread, between batches."""
        if self._sequencer is None:
            if isinstance(self.encoder, TorchImageEncoder):
                self._sequencer = self.encoder.localizer
            else:
                if self.config is None:
                    raise ConfigError("sequence localization needs the model's configuration")
                from liploc.localization.onnx_localizer import onnx_sequence_localizer

                self._sequencer = onnx_sequence_localizer(self.lidar_map, self.encoder, self.config)
        return self._sequencer.localize_sequence(list(images), k, travelled_m=travelled_m)

    # --- the map itself ----------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """Frames, extent, model and creation time of the map."""
        m = self.lidar_map
        xy = m.xy
        sequences: dict[str, dict[str, int]] = {}
        for seq, idx in zip(m.sequences, m.frame_indices.tolist(), strict=True):
            entry = sequences.setdefault(seq, {"frames": 0, "first": idx, "last": idx})
            entry["frames"] += 1
            entry["first"] = min(entry["first"], idx)
            entry["last"] = max(entry["last"], idx)
        manifest = self.map_dir / MANIFEST
        created = dt.datetime.fromtimestamp(manifest.stat().st_mtime, tz=dt.timezone.utc)
        return {
            "name": self.name,
            "frames": len(m),
            "sequences": [{"name": s, **v} for s, v in sequences.items()],
            "extent_m": {
                "x_min": float(xy[:, 0].min()),
                "x_max": float(xy[:, 0].max()),
                "y_min": float(xy[:, 1].min()),
                "y_max": float(xy[:, 1].max()),
            },
            "embedding_dim": m.dim,
            "method": m.method,
            "index_kind": m.index.kind,
            "model": {"fingerprint": m.model_fingerprint, "config": m.model_config},
            "created": created.isoformat(timespec="seconds"),
            "backend": self.encoder.backend,
            "device": str(self.encoder.device),
            "range_images": self.data_root is not None,
        }

    def trajectory(self) -> dict[str, Any]:
        """Positions, headings and frame ids of every map entry, in map order."""
        m = self.lidar_map
        yaw = np.arctan2(m.poses[:, 1, 0], m.poses[:, 0, 0])
        return {
            "x": np.round(m.poses[:, 0, 3], 3).tolist(),
            "y": np.round(m.poses[:, 1, 3], 3).tolist(),
            "yaw": np.round(yaw, 4).tolist(),
            "sequence": list(m.sequences),
            "frame": m.frame_indices.tolist(),
        }

    @functools.cached_property
    def _rows(self) -> dict[tuple[str, int], int]:
        frames = zip(self.lidar_map.sequences, self.lidar_map.frame_indices.tolist(), strict=True)
        return {(s, i): row for row, (s, i) in enumerate(frames)}

    def row_of(self, sequence: str, frame: int) -> int:
        """Map row of frame ``sequence/frame``; UnknownFrame when the map does not hold it."""
        row = self._rows.get((sequence, frame))
        if row is None:
            seqs = sorted(set(self.lidar_map.sequences))
            raise UnknownFrame(
                f"the map has no frame {sequence}/{frame:06d} (its sequences: {', '.join(seqs)}; "
                f"{len(self.lidar_map)} frames)"
            )
        return row

    def frame_info(self, sequence: str, frame: int) -> Match:
        """The map entry of ``sequence/frame`` (as a Match of rank 0 and score 1)."""
        row = self.row_of(sequence, frame)
        t = float(self.lidar_map.timestamps[row])
        return Match(
            rank=0,
            score=1.0,
            map_index=row,
            sequence=sequence,
            frame_index=frame,
            timestamp=None if np.isnan(t) else t,
            pose=self.lidar_map.poses[row].copy(),
        )

    def range_image_png(self, sequence: str, frame: int) -> bytes:
        """PNG of the scan's range image (the crop the model sees), coloured by inverse range."""
        self.row_of(sequence, frame)
        if self.data_root is None:
            raise DataError(self.map_dir, "started without --data-root: the map's scans are not available")
        with self._lock:  # the cache and the dataset reader are shared by request threads
            png = self._range_cache.get((sequence, frame))
            if png is None:
                png = self._range_png(sequence, frame)
                if len(self._range_cache) >= RANGE_CACHE_SIZE:
                    self._range_cache.pop(next(iter(self._range_cache)))
                self._range_cache[(sequence, frame)] = png
            return png

    def _range_png(self, sequence: str, frame: int) -> bytes:
        import matplotlib
        from PIL import Image

        from liploc.datasets import load_scan, open_dataset
        from liploc.lidar import RangeProjector, crop_range_image

        if self._dataset is None:
            self._dataset = open_dataset(self.data_root, self.layout)
        frame_obj = self._dataset.frame(sequence, frame)
        projector = RangeProjector(self.projection)
        image = projector.project(load_scan(frame_obj.scan_path))
        try:
            window = projector.crop_window(frame_obj.calib)
            ranges = crop_range_image(image.range, window)
        except LiplocError:  # a crop needing calibration the frame lacks: show the whole panorama
            ranges = image.range
        valid = ranges > 0
        inverse = np.zeros_like(ranges)
        inverse[valid] = 1.0 / ranges[valid]
        if valid.any():
            lo, hi = np.percentile(inverse[valid], [2, 98])
            inverse = np.clip((inverse - lo) / max(hi - lo, 1e-6), 0, 1)
        rgba = matplotlib.colormaps["turbo"](inverse)
        rgba[~valid] = (0.08, 0.08, 0.1, 1.0)
        pixels = (rgba[..., :3] * 255).astype(np.uint8)
        # Rows are few (64) and columns many: stretch rows so the crop reads as an image.
        pixels = np.repeat(pixels, max(1, 256 // (4 * pixels.shape[0]) + 1), axis=0)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return buf.getvalue()
