"""Encoders: timm backbones returning globally pooled features, optionally from a local weights file."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from liploc.errors import ConfigError, DataError, LiplocError
from liploc.models.packaged_weights import (
    PACKAGED_WEIGHTS,
    check_architecture,
    is_packaged_weights,
    load_packaged_backbone,
)

# Prefixes timm accepts for hub models; such names are not in timm.list_models().
_HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:", "timm/")


def check_model_name(name: str, setting: str = "model") -> None:
    """Raise ConfigError unless ``name`` (optionally ``arch.tag``) is a timm architecture.

    The message lists near matches from ``timm.list_models()``.
    """
    if name.startswith(_HUB_PREFIXES):
        return
    architecture = name.split(".", 1)[0]
    if timm.is_model(architecture):
        return
    names = timm.list_models()
    near = difflib.get_close_matches(architecture, names, n=8, cutoff=0.6)
    near += [n for n in timm.list_models(f"*{architecture}*") if n not in near][: 8 - len(near)]
    hint = f"; near matches: {', '.join(near)}" if near else ""
    raise ConfigError(f"{setting}: unknown timm model '{name}'{hint}")


def feature_dim(encoder: nn.Module) -> int:
    """Width of the pooled features a timm model with ``num_classes=0`` returns."""
    # Models with a pre-logits stage (e.g. MambaOut) return head_hidden_size, not num_features.
    width = getattr(encoder, "head_hidden_size", None) or getattr(encoder, "num_features", None)
    if not isinstance(width, int) or width <= 0:
        raise ConfigError(f"timm model {type(encoder).__name__} does not report its feature width")
    return width


def _classifier_names(encoder: nn.Module) -> tuple[str, ...]:
    classifier = (getattr(encoder, "pretrained_cfg", None) or {}).get("classifier")
    if classifier is None:
        return ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def _some(keys: list[str], shown: int = 5) -> str:
    return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")


def key_problems(
    expected: Iterable[str], found: Iterable[str], missing: str, unexpected: str, shown: int
) -> list[str]:
    """What the state dict keys ``found`` lack and have too many of against ``expected``: the
    ``missing`` and the ``unexpected`` template filled in (``{n}``: how many keys, ``{keys}``: the
    first ``shown`` of them, sorted), for the parts that are not empty."""
    expected, found = set(expected), set(found)
    parts = []
    for template, keys in ((missing, sorted(expected - found)), (unexpected, sorted(found - expected))):
        if keys:
            parts.append(template.format(n=len(keys), keys=_some(keys, shown)))
    return parts


def read_backbone_weights(path: Path, encoder: nn.Module, name: str) -> dict[str, Tensor]:
    """Read a safetensors state dict for the timm backbone ``encoder`` (built with ``num_classes=0``).

    Classifier weights in the file are dropped. Every backbone key must be present and no other key
    may be (a different architecture); otherwise a DataError names the file and the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            path,
            f"encoder weights file not found (for timm model '{name}'); the setting takes a safetensors "
            f"file or a packaged weights name ({', '.join(PACKAGED_WEIGHTS)})",
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(path, f"not a readable safetensors file ({err})") from None
    # DDP / torch.compile wrappers prefix the keys; strip them as timm does.
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    for classifier in _classifier_names(encoder):
        for key in [k for k in state if k.startswith(classifier + ".")]:
            del state[key]
    problems = key_problems(
        encoder.state_dict(), state, "missing {n} backbone keys ({keys})", "{n} unexpected keys ({keys})", 5
    )
    if problems:
        raise DataError(path, f"does not hold weights of timm model '{name}': {'; '.join(problems)}")
    return state


def create_encoder(
    name: str,
    *,
    pretrained: bool = False,
    weights: Path | str | None = None,
    in_chans: int = 3,
    extra_args: dict[str, Any] | None = None,
    setting: str = "model",
) -> tuple[nn.Module, int]:
    """A timm backbone with global pooling and no classifier, and its feature width.

    ``weights`` (a local safetensors state dict of the timm backbone, or the name of packaged
    weights such as ``efficientnet-lite0``, see :mod:`liploc.models.packaged_weights`) takes
    precedence over ``pretrained`` (timm's download or cache). timm adapts a 3-channel stem to
    ``in_chans`` and resizes ViT position embeddings to a different ``img_size`` in ``extra_args``.
    """
    check_model_name(name, setting)
    if is_packaged_weights(weights):
        check_architecture(str(weights), name, setting)  # before building a network for nothing
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans, **(extra_args or {})}
    try:
        encoder = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise ConfigError(f"{setting}: cannot build timm model '{name}' with {kwargs}: {err}") from None
    if is_packaged_weights(weights):
        load_packaged_backbone(encoder, str(weights), name, in_chans=in_chans, setting=setting)
    elif weights is not None:
        weights = Path(weights)
        state = read_backbone_weights(weights, encoder, name)
        # Load through timm so its checkpoint filter (e.g. position-embedding resize) and the
        # stem-channel adaptation apply; the key check above makes the load strict.
        overlay = {"state_dict": state, "source": "timm"}
        try:
            encoder = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except (RuntimeError, ValueError) as err:
            raise DataError(weights, f"weights do not fit timm model '{name}': {err}") from None
        # timm keeps the overlay in pretrained_cfg; drop the reference to the loaded tensors.
        for cfg in (getattr(encoder, "pretrained_cfg", None), getattr(encoder, "default_cfg", None)):
            if isinstance(cfg, dict):
                cfg.pop("state_dict", None)
    elif pretrained:
        try:
            encoder = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # network, hub cache and checkpoint errors alike
            raise LiplocError(
                f"{setting}: cannot load pretrained weights of timm model '{name}' ({err}); they need "
                "the network or the timm/Hugging Face cache. Give a local safetensors file or packaged "
                "weights (efficientnet-lite0 with liploc[weights]) instead (model.image_weights / "
                "model.lidar_weights) or set model.pretrained: false"
            ) from None
    return encoder, feature_dim(encoder)


@torch.no_grad()
def backbone_state_for_file(encoder: nn.Module) -> dict[str, Tensor]:
    """The encoder's state dict as contiguous CPU tensors, ready for ``safetensors.save_file``."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in encoder.state_dict().items()}
