"""``liploc export RUN --format onnx``: both towers as ONNX graphs with a dynamic batch.

The export folder holds::

    image_tower.onnx     camera image (N, 3, H, W) float32 -> L2-normalised embedding (N, D)
    lidar_tower.onnx     LiDAR input (N, C, H, W) float32 -> L2-normalised embedding (N, D)
    preprocessing.json   how each input is made from files, the model's fingerprint (so that a
                         map refuses another model's queries), the sha256 of each graph, and the
                         largest difference to torch measured at export

A geometry-bridge model's graphs take what its towers need beside: the camera tower the pixel
rays of the camera (``rays`` (1, h*w, 3) and ``ray_origin`` (1, 3), of the one rig whose images
it embeds: a map's), and the LiDAR tower the scan's BEV raster (``bev`` (N, C', rows, cols)), with
the range image only when fused; the depth, back-projection and rasterisation run inside the
camera's graph.

Each graph is checked against torch with onnxruntime before anything is written: an export whose
outputs differ by more than ``PARITY_TOLERANCE`` is refused. The folder is replaced atomically.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liploc.atomic import dir_mode, reporting_full_disk
from liploc.atomic_folder import real_folder, replace_folder, scratch_path, sweep_folder_leftovers
from liploc.checksums import file_size_and_sha256
from liploc.errors import DataError, LiplocError
from liploc.interop.onnx_encoder import EXPORT_FORMAT, EXPORT_VERSION, GRAPH_FINGERPRINT_KEY, SPEC_FILE
from liploc.lidar.back_projection import camera_rays
from liploc.models import GeometryBridgeModel
from liploc.models.geometry_bridge import bev_shape
from liploc.models.two_tower import TowerModel

TOWER_FILES = {"image": "image_tower.onnx", "lidar": "lidar_tower.onnx"}
PARITY_TOLERANCE = 1e-4
"""Largest absolute difference between torch and onnxruntime embeddings an export may have."""
RAY_ROUNDING = 1e-6
"""Relative change of a bridge camera's rays that stands for float rounding in the parity check.
A back-projected point within rounding of a BEV cell edge lands in either cell, in torch as in
onnxruntime: seen on one of three bridge models, 2.5e-4 between the two, while onnxruntime's
output was torch's for the rays x (1 + 1e-6) to 7e-7. The export is compared with torch's outputs
for the rays as given and so scaled, the closest counting."""
OPSET = 18


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    folder: Path
    fingerprint: str
    max_abs_diff: dict[str, float]


def export_onnx(
    run: str | Path,
    out: str | Path,
    *,
    towers: Sequence[str] = ("image", "lidar"),
    batch_for_check: int = 3,
) -> OnnxExport:
    """Export the image and LiDAR towers (or those of ``towers``) of a run folder or checkpoint
    to ``out``.

    Raises:
        LiplocError: the export does not match torch within ``PARITY_TOLERANCE``.
        DataError: ``out`` exists and is not an export folder, or the checkpoint is unreadable.
    """
    from liploc.runtime.inputs import build_transforms
    from liploc.runtime.run_folder import load_model_from_checkpoint, resolve_checkpoint

    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SPEC_FILE).is_file())):
        raise DataError(out, "exists and is not a liploc ONNX export folder; refusing to overwrite it")
    checkpoint = resolve_checkpoint(run)
    model, config = load_model_from_checkpoint(checkpoint)
    model = model.float().eval()
    fingerprint = model.fingerprint()
    transforms = build_transforms(config.data, train=False, model=config.model)
    unknown = sorted(set(towers) - set(TOWER_FILES))
    if unknown or not towers:
        raise ValueError(f"towers: {unknown or 'none'}; choose from {sorted(TOWER_FILES)}")
    modules = tower_graphs(model, config)
    out = real_folder(out)  # through a symlink: replace the export it points to
    with reporting_full_disk(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    sweep_folder_leftovers(out)  # what killed exports left
    tmp = scratch_path(out, "tmp")
    try:
        with reporting_full_disk(tmp):
            tmp.mkdir(mode=0o700)
            tmp.chmod(dir_mode())  # a folder as mkdir makes it under the umask
            diffs = _write_export(
                modules,
                towers,
                tmp,
                model=model,
                fingerprint=fingerprint,
                checkpoint=checkpoint,
                config=config,
                transforms=transforms,
                batch_for_check=batch_for_check,
            )
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return OnnxExport(out, fingerprint, diffs)


def _write_export(
    modules: dict[str, TowerGraph],
    towers: Sequence[str],
    tmp: Path,
    *,
    model: TowerModel,
    fingerprint: str,
    checkpoint: Path,
    config: Any,
    transforms: Any,
    batch_for_check: int,
) -> dict[str, float]:
    """Write the graphs and ``preprocessing.json`` of an export into ``tmp``; the largest
    difference to torch of each tower."""
    h, w = config.data.image_size
    diffs: dict[str, float] = {}
    for name in towers:
        graph = modules[name]
        path = tmp / TOWER_FILES[name]
        _export_tower(graph, path)
        _stamp_fingerprint(path, fingerprint)
        diffs[name] = _parity(graph, path, batch_for_check)
        if diffs[name] > PARITY_TOLERANCE:
            raise LiplocError(
                f"ONNX export of the {name} tower differs from torch by {diffs[name]:.2e} "
                f"(more than {PARITY_TOLERANCE:g}); not written"
            )
    spec = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "model_fingerprint": fingerprint,
        "embed_dim": model.embed_dim,
        "method": config.model.method,
        "source_checkpoint": str(checkpoint),
        "opset": OPSET,
        "torch_version": torch.__version__,
        "parity": {"tolerance": PARITY_TOLERANCE, "max_abs_diff": diffs},
    }
    if "image" in towers:
        spec["image"] = {
            **_tower_spec(tmp, "image", modules["image"]),
            "source": "camera image file, decoded to RGB (8 bits per channel)",
            "resize": {
                "size_hw": [h, w],
                "mode": "bilinear",
                "half_pixel_centers": True,
                "antialias": False,
                "round_to_uint8": True,
            },
            "scale": 1.0 / 255.0,
            "mean": _list(transforms.image.mean),
            "std": _list(transforms.image.std),
            "order": "decode -> resize -> round to uint8 -> x / 255 -> (x - mean) / std -> NCHW",
        }
        if "rays" in modules["image"].names:
            depth_h, depth_w = config.model.bridge.depth_size
            spec["image"]["camera_rays"] = {
                "inputs": ["rays", "ray_origin"],
                "depth_size_hw": [depth_h, depth_w],
                "how": "liploc.lidar.back_projection.camera_rays of the camera's P and T_cam_lidar, "
                "P scaled from the camera image to depth_size_hw; (1, h*w, 3) and (1, 3) float32",
            }
    if "lidar" in towers:
        spec["lidar"] = {
            **_tower_spec(tmp, "lidar", modules["lidar"]),
            "source": "LiDAR scan (KITTI .bin float32 x, y, z, intensity)",
        }
        if "lidar" in modules["lidar"].names:  # a BEV-only bridge's graph reads no range image
            spec["lidar"].update(
                {
                    "lidar_input": config.data.lidar_input,
                    "projection": config.projection.model_dump(mode="json"),
                    "resize": {"size_hw": [h, w], "mode": "bilinear", "half_pixel_centers": True},
                    "scale": 1.0 / 255.0,
                    "mean": _list(transforms.lidar.mean),
                    "std": _list(transforms.lidar.std),
                    "order": "scan -> liploc.lidar projection (see projection) -> resize -> x / 255 -> "
                    "(x - mean[i % 3]) / std[i % 3] per channel i",
                }
            )
        if "bev" in modules["lidar"].names:
            spec["lidar"]["bev"] = {
                "bridge": config.model.bridge.model_dump(mode="json"),
                "how": "scan -> depth image in the camera at bridge.depth_size "
                "(liploc.lidar.camera_depth) -> BEV raster (liploc.models.geometry_bridge.depth_image_bev)",
            }
    spec["config"] = config.model_dump(mode="json")
    (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
    for name in (*(TOWER_FILES[t] for t in towers), SPEC_FILE):
        with open(tmp / name, "rb+") as f:
            os.fsync(f.fileno())
    return diffs


class Tower(torch.nn.Module):
    """One tower of a model as a module of its own: its inputs by name (those the model reads) ->
    unit-norm embeddings. A geometry bridge's camera tower also takes the camera's pixel rays, its
    LiDAR tower the scan's BEV raster."""

    def __init__(self, model: TowerModel, modality: str) -> None:
        super().__init__()
        self.model = model
        self.modality = modality

    def forward(
        self,
        image: torch.Tensor | None = None,
        rays: torch.Tensor | None = None,
        ray_origin: torch.Tensor | None = None,
        lidar: torch.Tensor | None = None,
        bev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        model = self.model
        if not isinstance(model, GeometryBridgeModel):
            return model.encode_image(image) if self.modality == "image" else model.encode_lidar(lidar)
        if self.modality == "image":
            # With the rays given, the calibration matrices are not read.
            given = (rays, ray_origin) if rays is not None and ray_origin is not None else None
            return model.encode_image(image, P=None, T_cam_lidar=None, rays=given)  # type: ignore[arg-type]
        return model.encode_lidar(lidar, bev=bev)  # type: ignore[arg-type]


@dataclass(frozen=True)
class GraphInput:
    """One input of an exported graph: its name, its shape after the batch, and whether the batch
    is dynamic (images, scans) or one (the camera's rays: one rig)."""

    name: str
    shape: tuple[int, ...]
    batched: bool = True


@dataclass(frozen=True)
class TowerGraph:
    """A tower to export and the inputs of its graph, in order."""

    tower: Tower
    inputs: tuple[GraphInput, ...]

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.inputs]


def tower_graphs(model: TowerModel, config: Any) -> dict[str, TowerGraph]:
    """The graph of each tower of ``model``: the module and its inputs."""
    h, w = config.data.image_size
    image = GraphInput("image", (3, h, w))
    lidar = GraphInput("lidar", (config.model.lidar_in_chans, h, w))
    if not isinstance(model, GeometryBridgeModel):
        return {
            "image": TowerGraph(Tower(model, "image").eval(), (image,)),
            "lidar": TowerGraph(Tower(model, "lidar").eval(), (lidar,)),
        }
    bridge = model.bridge
    depth_h, depth_w = model.depth_size
    camera = (GraphInput("rays", (depth_h * depth_w, 3), False), GraphInput("ray_origin", (3,), False))
    image_inputs = (image, *camera) if bridge.has_bev else (image,)
    lidar_inputs = ((lidar,) if bridge.has_appearance else ()) + (
        (GraphInput("bev", bev_shape(bridge)),) if bridge.has_bev else ()
    )
    return {
        "image": TowerGraph(Tower(model, "image").eval(), image_inputs),
        "lidar": TowerGraph(Tower(model, "lidar").eval(), lidar_inputs),
    }


def example_camera_rays(depth_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """float32 (1, h*w, 3) rays and (1, 3) origin of a KITTI-like front camera at ``depth_hw``:
    what the export traces and checks the camera tower with (any rig's rays fit the graph)."""
    h, w = depth_hw
    scale_u, scale_v = w / 1242.0, h / 375.0
    P = np.array(
        [[721.5 * scale_u, 0, 609.6 * scale_u, 0], [0, 721.5 * scale_v, 172.9 * scale_v, 0], [0, 0, 1, 0]]
    )
    T_cam_lidar = np.array(
        [[0, -1, 0, 0], [0, 0, -1, -0.08], [1, 0, 0, -0.27], [0, 0, 0, 1]], dtype=np.float64
    )
    return camera_rays(P, T_cam_lidar, h, w)


def _example_inputs(graph: TowerGraph, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random batched inputs (non-negative for a BEV raster) and the example camera's rays."""
    out: dict[str, np.ndarray] = {}
    for item in graph.inputs:
        if item.name in ("rays", "ray_origin"):
            continue
        x = rng.standard_normal((batch, *item.shape)).astype(np.float32)
        out[item.name] = np.abs(x) if item.name == "bev" else x
    if "rays" in graph.names:
        assert isinstance(graph.tower.model, GeometryBridgeModel)
        out["rays"], out["ray_origin"] = example_camera_rays(graph.tower.model.depth_size)
    return out


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """``name``'s warnings held back inside the block (errors still pass)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _export_tower(graph: TowerGraph, path: Path) -> None:
    example = _example_inputs(graph, 2, np.random.default_rng(0))
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter reports its steps on stdout; keep the CLI's output to what the user asked for.
    with (
        contextlib.redirect_stdout(io.StringIO()),
        torch.no_grad(),
        warnings.catch_warnings(),
        _quiet_logger("onnx_ir"),  # "attribute type is ambiguous ... defaulted to INTS", as meant
    ):
        # Two batched inputs (a fused bridge's LiDAR tower) share the one batch axis, as meant.
        warnings.filterwarnings("ignore", message="# The axis name: batch will not be used")
        torch.onnx.export(
            graph.tower,
            (),
            str(path),
            kwargs={name: torch.from_numpy(example[name]) for name in graph.names},
            input_names=graph.names,
            output_names=["embedding"],
            dynamic_shapes={i.name: {0: batch} if i.batched else None for i in graph.inputs},
            dynamo=True,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )


def _stamp_fingerprint(path: Path, fingerprint: str) -> None:
    """Record the model's fingerprint inside the ONNX graph (its metadata), rewriting the file."""
    import onnx

    graph = onnx.load(str(path))
    entry = graph.metadata_props.add()
    entry.key, entry.value = GRAPH_FINGERPRINT_KEY, fingerprint
    onnx.save(graph, str(path))


def _parity(graph: TowerGraph, path: Path, batch: int) -> float:
    """Largest |torch - onnxruntime| over random batches of 1 and ``batch`` inputs; for a bridge's
    camera graph, per input the closest of torch's outputs for its rays as given and scaled by
    ``1 -/+`` :data:`RAY_ROUNDING` (a BEV cell edge within rounding)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for n in (1, batch):
        inputs = _example_inputs(graph, n, rng)
        got = session.run(None, inputs)[0]
        variants = [inputs]
        if "rays" in graph.names:
            variants += [
                {**inputs, "rays": inputs["rays"] * np.float32(f)}
                for f in (1 - RAY_ROUNDING, 1 + RAY_ROUNDING)
            ]
        closest = np.full(n, np.inf)
        for variant in variants:
            with torch.no_grad():
                expected = graph.tower(
                    **{name: torch.from_numpy(variant[name]) for name in graph.names}
                ).numpy()
            if got.shape != expected.shape:
                raise LiplocError(f"ONNX {graph.names[0]} tower returned {got.shape}, torch {expected.shape}")
            closest = np.minimum(closest, np.abs(got - expected).reshape(n, -1).max(axis=1))
        worst = max(worst, float(closest.max()))
    return worst


def _tower_spec(folder: Path, name: str, graph: TowerGraph) -> dict[str, Any]:
    file = TOWER_FILES[name]
    return {
        "file": file,
        "sha256": file_size_and_sha256(folder / file)[1],
        "input_name": graph.names[0],
        "output_name": "embedding",
        "input_shape": ["batch", *graph.inputs[0].shape],
        "input_dtype": "float32",
        "inputs": [
            {"name": i.name, "shape": ["batch" if i.batched else 1, *i.shape], "dtype": "float32"}
            for i in graph.inputs
        ],
        "output": "L2-normalised float32 embedding (batch, embed_dim)",
    }


def _list(values: tuple[float, ...] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]
