"""``liploc export RUN --format onnx``: both towers as ONNX graphs with a dynamic batch.

The export folder holds::

    image_tower.onnx     camera image (N, 3, H, W) float32 -> L2-normalised embedding (N, D)
    lidar_tower.onnx     LiDAR input (N, C, H, W) float32 -> L2-normalised embedding (N, D)
    preprocessing.json   how each input is made from files, the model's fingerprint (so that a
                         map refuses another model's queries), the sha256 of each graph, and the
                         largest difference to torch measured at export

Each graph is checked against torch with onnxruntime before anything is written: an export whose
outputs differ by more than ``PARITY_TOLERANCE`` is refused. The folder is replaced atomically.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liploc.atomic import dir_mode, reporting_full_disk
from liploc.atomic_folder import real_folder, replace_folder, scratch_path, sweep_folder_leftovers
from liploc.checksums import file_size_and_sha256
from liploc.errors import ConfigError, DataError, LiplocError
from liploc.interop.onnx_encoder import EXPORT_FORMAT, EXPORT_VERSION, GRAPH_FINGERPRINT_KEY, SPEC_FILE
from liploc.models import TwoTowerModel

TOWER_FILES = {"image": "image_tower.onnx", "lidar": "lidar_tower.onnx"}
PARITY_TOLERANCE = 1e-4
"""Largest absolute difference between torch and onnxruntime embeddings an export may have."""
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
    if config.model.method == "bridge":
        raise ConfigError(
            f"{checkpoint}: ONNX export of geometry-bridge models (model.method bridge) is not "
            "supported: their camera tower back-projects its depth and rasterises a BEV, which "
            "the export does not cover; localize and serve them on torch (--backend auto picks it)"
        )
    model = model.float().eval()
    fingerprint = model.fingerprint()
    h, w = config.data.image_size
    lidar_channels = config.model.lidar_in_chans
    transforms = build_transforms(config.data, train=False, model=config.model)
    unknown = sorted(set(towers) - set(TOWER_FILES))
    if unknown or not towers:
        raise ValueError(f"towers: {unknown or 'none'}; choose from {sorted(TOWER_FILES)}")
    modules: dict[str, tuple[torch.nn.Module, tuple[int, int, int]]] = {
        "image": (Tower(model, "image").eval(), (3, h, w)),
        "lidar": (Tower(model, "lidar").eval(), (lidar_channels, h, w)),
    }
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
    modules: dict[str, tuple[torch.nn.Module, tuple[int, int, int]]],
    towers: Sequence[str],
    tmp: Path,
    *,
    model: TwoTowerModel,
    fingerprint: str,
    checkpoint: Path,
    config: Any,
    transforms: Any,
    batch_for_check: int,
) -> dict[str, float]:
    """Write the graphs and ``preprocessing.json`` of an export into ``tmp``; the largest
    difference to torch of each tower."""
    h, w = config.data.image_size
    lidar_channels = modules["lidar"][1][0]
    diffs: dict[str, float] = {}
    for name in towers:
        tower, chw = modules[name]
        path = tmp / TOWER_FILES[name]
        _export_tower(tower, chw, name, path)
        _stamp_fingerprint(path, fingerprint)
        diffs[name] = _parity(tower, path, chw, name, batch_for_check)
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
        "source_checkpoint": str(checkpoint),
        "opset": OPSET,
        "torch_version": torch.__version__,
        "parity": {"tolerance": PARITY_TOLERANCE, "max_abs_diff": diffs},
    }
    if "image" in towers:
        spec["image"] = {
            **_tower_spec(tmp, "image", (3, h, w)),
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
    if "lidar" in towers:
        spec["lidar"] = {
            **_tower_spec(tmp, "lidar", (lidar_channels, h, w)),
            "source": "LiDAR scan (KITTI .bin float32 x, y, z, intensity)",
            "lidar_input": config.data.lidar_input,
            "projection": config.projection.model_dump(mode="json"),
            "resize": {"size_hw": [h, w], "mode": "bilinear", "half_pixel_centers": True},
            "scale": 1.0 / 255.0,
            "mean": _list(transforms.lidar.mean),
            "std": _list(transforms.lidar.std),
            "order": "scan -> liploc.lidar projection (see projection) -> resize -> x / 255 -> "
            "(x - mean[i % 3]) / std[i % 3] per channel i",
        }
    spec["config"] = config.model_dump(mode="json")
    (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
    for name in (*(TOWER_FILES[t] for t in towers), SPEC_FILE):
        with open(tmp / name, "rb+") as f:
            os.fsync(f.fileno())
    return diffs


class Tower(torch.nn.Module):
    """One tower of a two-tower model as a module of its own: input batch -> unit-norm embeddings."""

    def __init__(self, model: TwoTowerModel, modality: str) -> None:
        super().__init__()
        self.model = model
        self.modality = modality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.modality == "image":
            return self.model.encode_image(x)
        return self.model.encode_lidar(x)


def _export_tower(tower: Tower, chw: tuple[int, int, int], name: str, path: Path) -> None:
    example = torch.randn(2, *chw)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter reports its steps on stdout; keep the CLI's output to what the user asked for.
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        torch.onnx.export(
            tower,
            (example,),
            str(path),
            input_names=[name],
            output_names=["embedding"],
            dynamic_shapes=({0: batch},),
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


def _parity(tower: Tower, path: Path, chw: tuple[int, int, int], name: str, batch: int) -> float:
    """Largest |torch - onnxruntime| over random batches of 1 and ``batch`` inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for n in (1, batch):
        x = rng.standard_normal((n, *chw)).astype(np.float32)
        with torch.no_grad():
            expected = tower(torch.from_numpy(x)).numpy()
        got = session.run(None, {name: x})[0]
        if got.shape != expected.shape:
            raise LiplocError(f"ONNX {name} tower returned {got.shape}, torch {expected.shape}")
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


def _tower_spec(folder: Path, name: str, chw: tuple[int, int, int]) -> dict[str, Any]:
    file = TOWER_FILES[name]
    return {
        "file": file,
        "sha256": file_size_and_sha256(folder / file)[1],
        "input_name": name,
        "output_name": "embedding",
        "input_shape": ["batch", *chw],
        "input_dtype": "float32",
        "output": "L2-normalised float32 embedding (batch, embed_dim)",
    }


def _list(values: tuple[float, ...] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]
