"""Import of checkpoints saved by the LIP-Loc authors' trainer as a liploc run folder.

The authors' trainer (lidar-image-pretrain-VPR, ``trainer.py``) saves ``torch.save(model.state_dict())``
of its ``CLIPModelV1.Model``: ``encoder_camera.model.*`` and ``encoder_lidar.model.*`` (timm
backbones built with ``num_classes=0``), ``projection_camera.*`` and ``projection_lidar.*`` (the
projection heads: ``projection``, ``fc``, ``layer_norm``); its ViT models (``CLIPModelV1_vit``) add
``encoder_*.fc``, a Linear 384 -> 2048 after the ViT. The model retrieves by the raw dot product of
un-normalised embeddings, on inputs resized with OpenCV's INTER_LINEAR and ImageNet-normalised.

:func:`import_lip_loc` reads such a file with ``torch.load(weights_only=True)`` only (never runs
code from the file), infers the backbone from the keys and shapes, maps every tensor onto liploc's
:class:`~liploc.models.TwoTowerModel` (every tensor of the file used, every tensor of the model
filled, shapes equal), and writes a run folder (``config.yaml``, ``checkpoints/best.safetensors``
with its JSON, ``summary.json``) with the paper-exact settings, which ``liploc evaluate``,
``liploc map build`` and ``liploc localize`` use as they are.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from liploc.atomic import atomic_write_text
from liploc.checksums import file_size_and_sha256
from liploc.config import Config, config_from_dict, save_config
from liploc.errors import DataError, LiplocError

# The authors' module names -> liploc's (TwoTowerModel attribute names).
PREFIX_MAP: tuple[tuple[str, str], ...] = (
    ("encoder_camera.model.", "image_encoder."),
    ("encoder_lidar.model.", "lidar_encoder."),
    ("encoder_camera.fc.", "image_fc."),
    ("encoder_lidar.fc.", "lidar_fc."),
    ("projection_camera.", "image_head."),
    ("projection_lidar.", "lidar_head."),
)
REQUIRED_PREFIXES = (
    "encoder_camera.model.",
    "encoder_lidar.model.",
    "projection_camera.",
    "projection_lidar.",
)

CANDIDATE_BACKBONES: tuple[str, ...] = (
    "resnet50",
    "vit_small_patch16_224",
    "resnet18",
    "resnet34",
    "resnet101",
    "resnet152",
    "resnet50d",
    "vit_tiny_patch16_224",
    "vit_base_patch16_224",
    "test_resnet",
    "test_vit",
)
"""timm architectures tried, in this order, when ``--backbone`` is not given: the authors' two
(ResNet-50 and ViT-S/16) first. The first whose tensor names and shapes equal the file's wins."""

PAPER_SETTINGS: dict[str, Any] = {
    "data": {
        "image_size": [224, 224],
        "normalize": "imagenet",
        "resize": "opencv",
        "lidar_input": "range",
        "augment": True,
        "augment_lidar": True,
    },
    "projection": {"crop": "paper", "empty_value": 251.0, "max_range": 50.0, "range_scale": 5.1},
    "loss": {"kind": "soft-target", "temperature": 1.0, "learnable_temperature": False},
    "train": {
        "epochs": 100,
        "batch_size": 32,
        "lr_head": 1.0e-3,
        "lr_image_encoder": 1.0e-5,
        "lr_lidar_encoder": 1.0e-4,
        "weight_decay": 1.0e-3,
        "encoder_weight_decay": 0.0,
        "scheduler": "plateau",
        "plateau_patience": 1,
        "plateau_factor": 0.8,
        # fp32 as the reference code: bf16 autocast would move raw embeddings enough to change
        # some retrievals of an imported model.
        "precision": "fp32",
    },
    "eval": {"protocol": "same-sequence", "thresholds_m": [20.0, 10.0]},
}
"""The reference code's settings (``configs/kitti_*_paper.yaml`` hold the same), written into the
imported run's config so that evaluating it reproduces the authors' inputs and retrieval."""


@dataclass(frozen=True)
class ImportedCheckpoint:
    """What an import wrote and found."""

    run_dir: Path
    checkpoint: Path
    image_backbone: str
    lidar_backbone: str
    backbone_inferred: bool
    encoder_fc_dim: int | None
    embed_dim: int
    num_tensors: int
    source_sha256: str


def _some(keys: list[str], shown: int = 4) -> str:
    return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")


def _unpickler_detail(message: str) -> str:
    """The WeightsUnpickler's own reason inside torch's long message, lower case."""
    _, _, detail = message.partition("WeightsUnpickler error:")
    return detail.strip().splitlines()[0] if detail.strip() else ""


def _names_code(path: Path) -> bool:
    """Whether a file that is not a torch zip is a pickle naming a class or function (read with
    pickletools, which runs nothing); random bytes are not."""
    import pickletools

    if zipfile.is_zipfile(path):
        return False
    try:
        with open(path, "rb") as f:
            for opcode, _, _ in pickletools.genops(f):
                if opcode.name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ"):
                    return True
    except (ValueError, EOFError, OSError, UnicodeDecodeError, KeyError, IndexError):
        return False
    return False


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``torch.save``-d state dict, loaded with ``weights_only=True``.

    Raises DataError naming the file when it is missing, truncated or corrupt, not a torch file,
    a pickle that refers to code (a whole pickled model, or anything else ``weights_only``
    refuses), or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it was not written with; what matters is below.
            warnings.simplefilter("ignore", UserWarning)
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        # torch's message says "weights only load failed" for random bytes too: only a pickle
        # that names a global (a class or function) refers to code.
        if "unsupported global" in str(err).lower() or _names_code(path):
            raise DataError(
                path,
                "refused: the pickle refers to code (liploc loads checkpoints with "
                "torch.load(weights_only=True) and never runs code from a file; save the model's "
                f"state_dict instead). torch said: {first}",
            ) from None
        raise DataError(path, f"not a torch.save file ({_unpickler_detail(str(err)) or first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, EOFError) or any(
            s in text.lower() for s in ("central directory", "truncat", "failed reading", "unexpected eof")
        ):
            raise DataError(path, f"truncated or corrupt torch file ({text})") from None
        raise DataError(path, f"not a readable torch.save file ({text})") from None
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]  # trainers that wrap the state dict
    if not isinstance(loaded, Mapping):
        raise DataError(
            path, f"holds a {type(loaded).__name__}, not a state_dict (a mapping of names to tensors)"
        )
    bad = [str(k) for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise DataError(path, f"is not a state_dict: {len(bad)} entries are not named tensors ({_some(bad)})")
    # DataParallel / torch.compile wrappers prefix every key.
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in loaded.items()}


def _group(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _check_layout(path: Path, state: Mapping[str, Tensor]) -> None:
    missing = [p for p in REQUIRED_PREFIXES if not any(k.startswith(p) for k in state)]
    if missing:
        raise DataError(
            path,
            "is not a LIP-Loc checkpoint: it has no "
            + ", ".join(f"{p}*" for p in missing)
            + f" tensors (its keys look like {_some(sorted(state))})",
        )
    known = tuple(p for p, _ in PREFIX_MAP)
    stray = sorted(k for k in state if not k.startswith(known))
    if stray:
        raise DataError(
            path,
            f"holds {len(stray)} tensors outside a LIP-Loc model ({_some(stray)}); refusing rather "
            "than dropping them",
        )


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _timm_shapes(name: str, in_chans: int) -> dict[str, tuple[int, ...]] | None:
    import timm

    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
    except Exception:  # a candidate timm cannot build with these arguments just does not match
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _in_chans(backbone: Mapping[str, Tensor]) -> int:
    # The first 4-d weight (in state-dict order) is the stem: its second axis is the input channels.
    for v in backbone.values():
        if v.ndim == 4:
            return int(v.shape[1])
    return 3


def _difference(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> str:
    from liploc.models.encoders import key_problems  # timm loads only when it is needed

    parts = key_problems(expected, found, "{n} tensors missing ({keys})", "{n} unexpected ({keys})", 4)
    shape = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if shape:
        k = shape[0]
        parts.append(
            f"{len(shape)} of other shapes (e.g. {k}: {found[k]} in the file, {expected[k]} in timm)"
        )
    return "; ".join(parts)


def infer_backbone(path: Path, tower: str, backbone: Mapping[str, Tensor], requested: str | None) -> str:
    """The timm architecture whose tensors (names and shapes) equal ``backbone``'s.

    With ``requested`` only that name is checked (a DataError says how it differs); otherwise
    :data:`CANDIDATE_BACKBONES` are tried in order.
    """
    found = _shapes(backbone)
    chans = _in_chans(backbone)
    if requested is not None:
        from liploc.models import check_model_name

        check_model_name(requested, "--backbone")
        expected = _timm_shapes(requested, chans)
        if expected is None:
            raise LiplocError(f"--backbone: timm cannot build '{requested}'")
        if expected != found:
            raise DataError(
                path,
                f"the {tower} encoder is not timm's '{requested}': {_difference(expected, found)}",
            )
        return requested
    for name in CANDIDATE_BACKBONES:
        if _timm_shapes(name, chans) == found:
            return name
    raise DataError(
        path,
        f"cannot tell the {tower} encoder's timm architecture from its {len(found)} tensors "
        f"({_some(list(found))}); none of {', '.join(CANDIDATE_BACKBONES)} matches. Pass "
        "--backbone <timm model name>",
    )


def _linear_dims(path: Path, state: Mapping[str, Tensor], prefix: str) -> tuple[int, int]:
    weight = state.get(prefix + "weight")
    if weight is None or weight.ndim != 2 or (prefix + "bias") not in state:
        raise DataError(path, f"{prefix}weight/bias: expected a Linear layer")
    return int(weight.shape[1]), int(weight.shape[0])


def model_config_for(
    path: Path,
    state: Mapping[str, Tensor],
    image_backbone: str,
    lidar_backbone: str,
    normalized: bool = False,
) -> dict[str, Any]:
    """The liploc ``model`` section describing the checkpoint's network (``normalized``: the
    reference's ``CLIPModelV1Norm``, else its ``CLIPModelV1`` with raw dot-product retrieval)."""
    fc_dims = {}
    for tower in ("camera", "lidar"):
        key = f"encoder_{tower}.fc."
        if any(k.startswith(key) for k in state):
            fc_dims[tower] = _linear_dims(path, state, key)
    if fc_dims and len(fc_dims) != 2:
        raise DataError(
            path, f"only the {next(iter(fc_dims))} encoder has an fc layer; LIP-Loc's have both or none"
        )
    if fc_dims and fc_dims["camera"][1] != fc_dims["lidar"][1]:
        raise DataError(
            path, f"the encoders' fc layers differ in width ({fc_dims['camera']} vs {fc_dims['lidar']})"
        )
    head_dims = {t: _linear_dims(path, state, f"projection_{t}.projection.") for t in ("camera", "lidar")}
    if head_dims["camera"][1] != head_dims["lidar"][1]:
        raise DataError(
            path, f"the projection heads differ in width ({head_dims['camera']} vs {head_dims['lidar']})"
        )
    lidar_chans = _in_chans(_group(state, "encoder_lidar.model."))
    return {
        "image_encoder": image_backbone,
        "lidar_encoder": lidar_backbone,
        "pretrained": False,
        "embed_dim": head_dims["camera"][1],
        "head_dropout": 0.1,
        "lidar_in_chans": lidar_chans,
        "encoder_fc_dim": fc_dims["camera"][1] if fc_dims else None,
        "normalize": normalized,
    }


def paper_config(model: dict[str, Any], name: str) -> Config:
    """A full liploc configuration of the paper's pipeline around the ``model`` section."""
    data = json.loads(json.dumps(PAPER_SETTINGS))
    data["name"] = name
    data["model"] = model
    return config_from_dict(data, source="LIP-Loc import settings")


def _their_name(ours: str) -> str:
    for theirs, prefix in PREFIX_MAP:
        if ours.startswith(prefix):
            return theirs + ours[len(prefix) :]
    return ours


def convert_state_dict(
    path: Path, state: Mapping[str, Tensor], target: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """The file's tensors under liploc's names, each checked against the model's ``target`` state.

    Every tensor of the file must land on a model tensor of the same shape and every model tensor
    must be filled; floating tensors take the model's dtype.
    """
    out: dict[str, Tensor] = {}
    source: dict[str, str] = {}  # liploc name -> the file's name, for messages
    for key, value in state.items():
        for theirs, ours in PREFIX_MAP:
            if key.startswith(theirs):
                out[ours + key[len(theirs) :]] = value
                source[ours + key[len(theirs) :]] = key
                break
    unused = sorted(source[k] for k in out if k not in target)
    unfilled = sorted(k for k in target if k not in out)
    if unused or unfilled:
        parts = []
        if unused:
            parts.append(f"{len(unused)} tensors of the file have no place in the model ({_some(unused)})")
        if unfilled:
            theirs = [_their_name(k) for k in unfilled]
            parts.append(f"{len(unfilled)} tensors of the model are missing from the file ({_some(theirs)})")
        raise DataError(path, "; ".join(parts))
    for key, value in out.items():
        want = target[key]
        if tuple(value.shape) != tuple(want.shape):
            raise DataError(
                path, f"{key}: shape {tuple(value.shape)} in the file, {tuple(want.shape)} in the model"
            )
        if value.is_floating_point() != want.is_floating_point():
            raise DataError(path, f"{key}: dtype {value.dtype} in the file, {want.dtype} in the model")
        out[key] = value.to(want.dtype).contiguous()
    return out


def import_lip_loc(
    checkpoint: str | Path,
    out: str | Path,
    *,
    backbone: str | None = None,
    name: str | None = None,
    normalized: bool = False,
) -> ImportedCheckpoint:
    """Turn the authors' ``checkpoint`` (.pth) into the liploc run folder ``out``.

    Args:
        checkpoint: a ``torch.save`` of the authors' model state dict.
        out: run folder to create (refused when it already holds a checkpoint).
        backbone: timm name of both encoders' backbone; None: inferred from the keys and shapes.
        name: the run's config name (default: the checkpoint's file stem).
        normalized: the checkpoint is of the reference's ``CLIPModelV1Norm``, which L2-normalises
            its embeddings (same tensors as ``CLIPModelV1``, so the file cannot tell).
    """
    from liploc.models import create_model
    from liploc.runtime.checkpoint import save_checkpoint
    from liploc.runtime.run_folder import MODEL_PREFIX, RunFolder

    path = Path(checkpoint)
    run = RunFolder(Path(out))
    for existing in (run.best_checkpoint, run.last_checkpoint):
        if existing.exists():
            raise DataError(existing, "already exists; import into a new run folder (--out)")
    state = read_state_dict(path)
    _check_layout(path, state)
    image_backbone = infer_backbone(path, "camera", _group(state, "encoder_camera.model."), backbone)
    lidar_backbone = infer_backbone(path, "LiDAR", _group(state, "encoder_lidar.model."), backbone)
    model_section = model_config_for(path, state, image_backbone, lidar_backbone, normalized)
    config = paper_config(model_section, name or f"lip-loc-{path.stem}")
    model = create_model(config.model)
    tensors = convert_state_dict(path, state, model.state_dict())
    model.load_state_dict(tensors, strict=True)
    model.eval()

    fingerprint = model.fingerprint()
    size, sha256 = file_size_and_sha256(path)
    source = {"file": str(path.resolve()), "size": size, "sha256": sha256, "format": "lip-loc-state-dict"}
    run.root.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        run.best_checkpoint,
        {MODEL_PREFIX + k: v for k, v in model.state_dict().items()},
        {
            "config": config.model_dump(mode="json"),
            "step": 0,
            "model_fingerprint": fingerprint,
            "imported_from": source,
            "torch_version": torch.__version__,
        },
    )
    save_config(config, run.config)
    result = ImportedCheckpoint(
        run_dir=run.root,
        checkpoint=run.best_checkpoint,
        image_backbone=image_backbone,
        lidar_backbone=lidar_backbone,
        backbone_inferred=backbone is None,
        encoder_fc_dim=model_section["encoder_fc_dim"],
        embed_dim=model_section["embed_dim"],
        num_tensors=len(tensors),
        source_sha256=sha256,
    )
    summary = {
        "imported_from": source,
        "image_backbone": image_backbone,
        "lidar_backbone": lidar_backbone,
        "backbone_inferred": backbone is None,
        "encoder_fc_dim": result.encoder_fc_dim,
        "embed_dim": result.embed_dim,
        "tensors": len(tensors),
        "model_fingerprint": fingerprint,
        "reference_model": "CLIPModelV1Norm" if normalized else "CLIPModelV1",
        "settings": (
            "paper-exact: "
            + ("cosine retrieval of L2-normalised embeddings" if normalized else "raw dot-product retrieval")
            + ", OpenCV INTER_LINEAR resizing, ImageNet normalisation, empty range pixels 251, "
            "soft-target loss at temperature 1"
        ),
    }
    atomic_write_text(run.summary, json.dumps(summary, indent=1) + "\n")
    return result
