"""Checkpoints: tensors in a safetensors file, everything else in a JSON file beside it.

``run/last.safetensors`` holds tensors only; ``run/last.json`` holds the caller's metadata (config,
step, metrics, the structure of optimizer and scheduler states...) plus the size and sha256 of the
safetensors file, which loading verifies. Nothing is ever unpickled. Both files are written
atomically (temporary file + rename).

Nested states that mix tensors and plain values (optimizer and scheduler ``state_dict()``, RNG
states) split with :func:`state_to_tensors` into named tensors and a JSON-compatible skeleton, and
join again with :func:`tensors_to_state`::

    tensors, skeleton = state_to_tensors({"model": model.state_dict(), "optimizer": opt.state_dict()})
    save_checkpoint(path, tensors, {"step": step, "state": skeleton})
    tensors, meta = load_checkpoint(path)
    state = tensors_to_state(tensors, meta["state"])   # {"model": {...}, "optimizer": {...}}
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file
from torch import Tensor

from liploc.atomic import atomic_write, atomic_write_text
from liploc.checksums import file_size_and_sha256
from liploc.errors import DataError

FORMAT = "liploc-checkpoint"
FORMAT_VERSION = 1

_TENSOR = "__tensor__"
_NDARRAY = "__ndarray__"
_TUPLE = "__tuple__"
_ITEMS = "__items__"


def metadata_path(path: str | Path) -> Path:
    """The JSON file beside the checkpoint ``path`` (``x.safetensors`` -> ``x.json``)."""
    return Path(path).with_suffix(".json")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"checkpoint metadata: {type(value).__name__} is not JSON-serialisable")


def _tensors_for_file(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU tensors that share no storage (safetensors refuses shared storage)."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in tensors.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"checkpoint tensor '{name}' is a {type(tensor).__name__}, not a Tensor")
        t = tensor.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() and key in seen:
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        out[name] = t
    return out


def save_checkpoint(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> None:
    """Write ``tensors`` to ``path`` (``.safetensors``) and ``metadata`` plus the file's size and
    sha256 to ``path.with_suffix('.json')``, each atomically.

    ``metadata`` must be JSON-serialisable (Paths, numpy scalars and one-element tensors are
    converted); this is checked before anything is written.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: checkpoint files end in .safetensors")
    metadata_text = json.dumps(dict(metadata), default=_json_default)  # fail before writing
    prepared = _tensors_for_file(tensors)
    written: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        save_file(prepared, str(tmp))
        written["size"], written["sha256"] = file_size_and_sha256(tmp)

    atomic_write(path, write)
    record = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "file": path.name,
        "size": written["size"],
        "sha256": written["sha256"],
        "metadata": json.loads(metadata_text),
    }
    atomic_write_text(metadata_path(path), json.dumps(record, indent=1) + "\n")


def _read_record(path: Path) -> dict[str, Any]:
    json_path = metadata_path(path)
    if not json_path.is_file():
        raise DataError(
            json_path,
            f"metadata file of checkpoint {path.name} is missing (a checkpoint is a .safetensors "
            "file with its .json beside it)",
        )
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(json_path, f"checkpoint metadata is not readable JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataError(json_path, f'not a liploc checkpoint record (no "format": "{FORMAT}")')
    if record.get("version") != FORMAT_VERSION:
        raise DataError(json_path, f"checkpoint format version {record.get('version')} is not supported")
    for key, kind in (("size", int), ("sha256", str), ("metadata", dict)):
        if not isinstance(record.get(key), kind):
            raise DataError(json_path, f"checkpoint record lacks a valid '{key}'")
    return record


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata saved with the checkpoint ``path`` (reads the JSON only; no verification)."""
    return _read_record(Path(path))["metadata"]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict]:
    """Verify and load a checkpoint written by :func:`save_checkpoint` -> (tensors, metadata).

    The JSON must exist and parse, and the file's size and sha256 must match it; otherwise a
    DataError names the file and the problem. Tensors are read with safetensors (no pickle).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    record = _read_record(path)
    json_name = metadata_path(path).name
    data = path.read_bytes()  # one read: what is verified is what is loaded
    if len(data) != record["size"]:
        raise DataError(
            path,
            f"checkpoint is {len(data)} bytes but {json_name} records {record['size']} "
            "(truncated or replaced file)",
        )
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise DataError(path, f"checkpoint content does not match the sha256 in {json_name} (corrupted file)")
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError) as err:
        raise DataError(path, f"not a readable safetensors file ({err})") from None
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, record["metadata"]


def strip_prefix(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors whose name starts with ``prefix``, with the prefix removed (e.g. ``"model."``)."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _is_plain_key(key: Any) -> bool:
    return isinstance(key, str) and not key.startswith("__")


def state_to_tensors(state: Any, prefix: str = "") -> tuple[dict[str, Tensor], Any]:
    """Split a nested state into (named tensors, JSON-compatible skeleton).

    Handles dicts (any str/int/float/bool keys), lists, tuples, tensors, numpy arrays and plain
    scalars. Tensors are named by their path joined with dots (``optimizer.state.0.exp_avg``), so a
    model state dict under key ``model`` keeps its usual names behind ``model.``.
    """
    tensors: dict[str, Tensor] = {}

    def name_for(path: list[str]) -> str:
        name = prefix + ".".join(path)
        if name in tensors:
            raise ValueError(f"two tensors of the state map to the same name '{name}'")
        return name

    def encode(value: Any, path: list[str]) -> Any:
        if isinstance(value, Tensor):
            name = name_for(path)
            tensors[name] = value
            return {_TENSOR: name}
        if isinstance(value, np.ndarray):
            name = name_for(path)
            tensors[name] = torch.from_numpy(
                np.ascontiguousarray(value).astype(value.dtype.newbyteorder("="))
            )
            return {_NDARRAY: name, "dtype": value.dtype.str}
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, tuple):
            return {_TUPLE: [encode(v, [*path, str(i)]) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, [*path, str(i)]) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            if all(_is_plain_key(k) for k in value):
                return {k: encode(v, [*path, k]) for k, v in value.items()}
            items = []
            for k, v in value.items():
                if not isinstance(k, (str, int, float, bool)) and k is not None:
                    raise TypeError(f"state key {k!r} at '{'.'.join(path)}' is not a plain value")
                items.append([k, encode(v, [*path, str(k)])])
            return {_ITEMS: items}
        raise TypeError(f"state value at '{'.'.join(path)}' has unsupported type {type(value).__name__}")

    return tensors, encode(state, [])


def tensors_to_state(tensors: Mapping[str, Tensor], skeleton: Any) -> Any:
    """Inverse of :func:`state_to_tensors`: rebuild the nested state from tensors and skeleton."""

    def decode(node: Any) -> Any:
        if isinstance(node, list):
            return [decode(v) for v in node]
        if not isinstance(node, dict):
            return node
        if _TENSOR in node:
            return _tensor(node[_TENSOR])
        if _NDARRAY in node:
            return _tensor(node[_NDARRAY]).numpy().astype(np.dtype(node["dtype"]))
        if "__float__" in node:
            return float(node["__float__"])
        if _TUPLE in node:
            return tuple(decode(v) for v in node[_TUPLE])
        if _ITEMS in node:
            return {k: decode(v) for k, v in node[_ITEMS]}
        return {k: decode(v) for k, v in node.items()}

    def _tensor(name: str) -> Tensor:
        if name not in tensors:
            raise KeyError(f"checkpoint lacks tensor '{name}' named in its metadata")
        return tensors[name]

    return decode(skeleton)
