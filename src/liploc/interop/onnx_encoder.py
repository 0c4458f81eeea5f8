"""The camera tower of an ONNX export on onnxruntime: images -> embeddings without torch.

Reads an export folder written by :mod:`liploc.interop.onnx_export` (``preprocessing.json`` and
``image_tower.onnx``), checks the graph's sha256 against the JSON, and embeds RGB arrays with the
NumPy preprocessing of :mod:`liploc.interop.camera_preprocess`. Its ``fingerprint`` is that of the
torch model the export came from, so a map refuses an export of another model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from liploc.checksums import file_size_and_sha256
from liploc.errors import DataError
from liploc.interop.camera_preprocess import CameraPreprocess
from liploc.versioned_json import read_versioned_json

# Names repeated from onnx_export so that this module does not import torch through it.
EXPORT_FORMAT = "liploc-onnx-export"
EXPORT_VERSION = 1
SPEC_FILE = "preprocessing.json"
GRAPH_FINGERPRINT_KEY = "liploc_model_fingerprint"
"""Metadata entry of each exported graph naming the model it was made from: a graph swapped for
another model's (with preprocessing.json's checksum rewritten) is refused by the graph's own word."""


def read_export_spec(folder: str | Path) -> dict[str, Any]:
    """The ``preprocessing.json`` of an export folder, checked for format and version."""
    folder = Path(folder)
    path = folder / SPEC_FILE
    if not folder.is_dir():
        raise DataError(
            folder, "ONNX export folder not found (make one with `liploc export RUN --format onnx`)"
        )
    return read_versioned_json(
        path,
        fmt=EXPORT_FORMAT,
        version=EXPORT_VERSION,
        missing="missing: this folder is not a liploc ONNX export",
        unreadable="unreadable export description",
        other_format=f"not a liploc ONNX export description (format is not {EXPORT_FORMAT!r})",
        other_version="export version {version} is not supported; export again",
    )


def _plain_name(name: str, spec_path: Path) -> str:
    """A file name of the export folder itself: no folder part, not absolute (``../../etc/passwd``
    in preprocessing.json is refused, not followed)."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise DataError(spec_path, f"names the graph {name!r}, which is not a file of the export folder")
    return name


def _camera_inputs(
    rays_spec: Mapping[str, Any] | None, camera: Mapping[str, Any] | None, folder: Path
) -> dict[str, np.ndarray]:
    """The pixel-ray inputs of a geometry-bridge export for ``camera`` (none for other exports)."""
    if rays_spec is None:
        return {}
    if camera is None:
        raise DataError(
            folder,
            "the export of a geometry-bridge model embeds the images of one camera; open it with "
            "the map it belongs to (the map records the camera), e.g. `liploc localize MAP --backend onnx`",
        )
    from liploc.datasets.frame import Calibration
    from liploc.lidar.back_projection import calibration_for_depth, camera_rays

    h, w = (int(v) for v in rays_spec["depth_size_hw"])
    scaled = calibration_for_depth(Calibration.from_json(camera), (h, w))
    rays, origin = camera_rays(scaled.P, scaled.T_cam_lidar, h, w)
    names = list(rays_spec["inputs"])
    return {names[0]: rays, names[1]: origin}


class OnnxImageEncoder:
    """Camera images (H, W, 3) uint8 RGB -> (N, D) float32 unit-norm embeddings on onnxruntime."""

    backend = "onnx"

    def __init__(
        self, folder: str | Path, *, threads: int | None = None, camera: Mapping[str, Any] | None = None
    ) -> None:
        """Load ``folder``'s image tower; ``threads``: onnxruntime intra-op threads (default: its own).

        ``camera``: the calibration of the camera whose images it embeds (a map's
        :attr:`~liploc.localization.lidar_map.LidarMap.camera`: ``P``, ``T_cam_lidar``,
        ``image_size``), which the export of a geometry-bridge model needs for its pixel rays.
        """
        import onnxruntime as ort

        self.folder = Path(folder)
        spec = read_export_spec(self.folder)
        try:
            image = spec["image"]
            self.fingerprint: str = str(spec["model_fingerprint"])
            self.embed_dim = int(spec["embed_dim"])
            graph = self.folder / _plain_name(str(image["file"]), self.folder / SPEC_FILE)
            expected_sha = str(image["sha256"])
            self.input_name = str(image["input_name"])
            self.preprocess = CameraPreprocess.from_spec(image)
            self.camera_inputs = _camera_inputs(image.get("camera_rays"), camera, self.folder)
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(self.folder / SPEC_FILE, f"export description lacks an entry ({err})") from err
        if not graph.is_file():
            raise DataError(graph, "missing ONNX graph of the image tower")
        if file_size_and_sha256(graph)[1] != expected_sha:
            raise DataError(graph, "checksum does not match preprocessing.json: corrupt or changed")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for bad graphs
            raise DataError(graph, f"onnxruntime cannot load the graph ({err})") from None
        # The graph names its model itself: a graph of another model (with preprocessing.json's
        # checksum rewritten to match it) is refused here, not used with the JSON's fingerprint.
        stamped = self.session.get_modelmeta().custom_metadata_map.get(GRAPH_FINGERPRINT_KEY)
        if stamped is None:
            raise DataError(
                graph, "the graph does not name its model (an export older than this liploc); export again"
            )
        if stamped != self.fingerprint:
            raise DataError(
                graph,
                f"the graph is of model {stamped[:12]}, but preprocessing.json says {self.fingerprint[:12]}",
            )
        self.device = "onnxruntime (CPU)"

    def init_thread(self) -> None:
        """Nothing to do: onnxruntime's threads are the session's own."""

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """The graph's (3, H, W) float32 input of one RGB image."""
        return self.preprocess(image)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float32 embeddings of RGB ``images``, re-normalised to unit length."""
        return self.embed_prepared([self.preprocess(image) for image in images])

    def embed_prepared(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float32 unit-norm embeddings of inputs made by :meth:`prepare`."""
        if not len(inputs):
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        batch = np.stack(inputs)
        feed = {self.input_name: batch, **self.camera_inputs}
        emb = self.session.run(None, feed)[0].astype(np.float32, copy=False)
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norm, np.float32(1e-12))
