"""Which network embeds the queries of a map: torch, or onnxruntime on an ONNX export.

``liploc localize --backend auto`` asks :func:`choose_backend`; :func:`open_localizer` opens the
map with the backend chosen. Both import torch or onnxruntime only when they open one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from liploc.errors import ConfigError
from liploc.localization.map_folder import MapFolder

if TYPE_CHECKING:
    from liploc.localization.localize import Localizer
    from liploc.localization.onnx_localizer import OnnxLocalizer

Backend = Literal["torch", "onnx"]


def choose_backend(
    map_dir: str | Path,
    onnx_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    sequence: bool = False,
) -> Backend:
    """``--backend auto``: onnx where it gives the poses torch gives without loading torch (on a
    CPU, with the map's own model, single images, a map embedded in fp32 as the export runs),
    else torch. An export named by ``--onnx DIR`` is what the user asked for: onnx, and a
    ConfigError (not a silent torch) when DIR holds no export or another option needs torch.

    Sequence matching stays on torch: the onnx network matches torch's poses within 1e-4 but not
    bit for bit, and the sequence matching imports torch anyway.
    """
    from liploc.interop.onnx_encoder import SPEC_FILE

    folder = MapFolder(map_dir)
    if onnx_dir is not None:
        if not (Path(onnx_dir) / SPEC_FILE).is_file():
            raise ConfigError(
                f"--onnx {onnx_dir}: no ONNX export there (no {SPEC_FILE}); make one with "
                f"`liploc export RUN --out {onnx_dir}`, or leave --onnx out"
            )
        if checkpoint is not None:
            raise ConfigError("--onnx and --checkpoint: give one (--checkpoint runs the torch backend)")
        if device not in ("auto", "cpu"):
            raise ConfigError(f"--onnx runs on the CPU; --device {device} needs --backend torch")
        return "onnx"
    if (
        checkpoint is not None
        or sequence
        or device not in ("auto", "cpu")
        or not (folder.onnx_dir / SPEC_FILE).is_file()
    ):
        return "torch"
    try:
        precision = folder.read_manifest().get("embedding_precision")
        if precision is None:
            # A map that did not record it: torch embeds its queries with the model's
            # train.precision as it resolves on a CPU (auto backend only runs there).
            from liploc.config import resolved_precision

            train = folder.read_checkpoint_metadata()["metadata"]["config"].get("train", {})
            precision = resolved_precision(train.get("precision", "auto"), cuda_bf16=False)
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return "torch"  # which reports what is wrong with the map
    return "onnx" if precision == "fp32" else "torch"


def open_localizer(
    map_dir: str | Path,
    backend: Backend,
    *,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    onnx_dir: str | Path | None = None,
    sequence: bool = False,
) -> Localizer | OnnxLocalizer:
    """The map and its query network on ``backend`` (torch: the map's model copy or
    ``checkpoint``, on ``device``; onnx: the export in ``onnx_dir``, default ``MAP/model/onnx``).

    Both have ``localize(image_files, k)``. With ``sequence`` it is a ``Localizer``, which also
    has ``localize_sequence`` (onnx: the export's network in it, whose sequence matching imports
    torch).
    """
    if backend == "onnx":
        onnx = _open_onnx(map_dir, checkpoint, onnx_dir)
        return onnx.sequence_localizer() if sequence else onnx
    from liploc.localization.localize import Localizer

    return Localizer.open(map_dir, checkpoint, device)


def _open_onnx(
    map_dir: str | Path, checkpoint: str | Path | None, onnx_dir: str | Path | None
) -> OnnxLocalizer:
    if checkpoint is not None:
        raise ConfigError("--checkpoint is for the torch backend; give --onnx DIR for onnx")
    from liploc.localization.onnx_localizer import OnnxLocalizer

    return OnnxLocalizer.open(map_dir, onnx_dir)
