"""Checkpoints: tensors in a safetensors file, everything else in a JSON manifest beside it.

A checkpoint is known by its logical path, e.g. ``run/checkpoints/last.safetensors``. Its manifest
``last.json`` holds the caller's metadata (config, step, metrics, the structure of optimizer and
scheduler states...) plus the name, size and sha256 of the weights file it vouches for, which
loading verifies. Nothing is ever unpickled.

A save is one atomic step: the weights go to a new file named by their content
(``last.<sha256[:12]>.safetensors``, written and fsynced under a temporary name), then the
manifest is renamed into place. A kill at any instant leaves either the old manifest with its
weights or the new one with its weights, never a mixed pair; readers retry when a save moves on
under them. The previous manifest is kept as ``last.prev.json`` (with its weights) so that
:func:`load_newest_checkpoint` can fall back to it when the newest is damaged. ``last.safetensors``
itself is a hard link to the current weights, for tools that open the file directly.

Nested states that mix tensors and plain values (optimizer and scheduler ``state_dict()``, RNG
states) split with :func:`state_to_tensors` into named tensors and a JSON-compatible skeleton, and
join again with :func:`tensors_to_state`::

    tensors, skeleton = state_to_tensors({"model": model.state_dict(), "optimizer": opt.state_dict()})
    save_checkpoint(path, tensors, {"step": step, "state": skeleton})
    tensors, meta = load_checkpoint(path)
    state = tensors_to_state(tensors, meta["state"])   # {"model": {...}, "optimizer": {...}}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import _TYPES as _SAFETENSORS_DTYPES
from safetensors.torch import load as load_safetensors_bytes
from torch import Tensor

from liploc.atomic import (
    atomic_write_bytes,
    atomic_write_text,
    file_mode,
    fsync_dir,
    reporting_full_disk,
    sweep_temporary_files,
)
from liploc.errors import DataError
from liploc.faults import fault_point
from liploc.versioned_json import read_versioned_json

FORMAT = "liploc-checkpoint"
FORMAT_VERSION = 1

_TENSOR = "__tensor__"
_NDARRAY = "__ndarray__"
_TUPLE = "__tuple__"
_ITEMS = "__items__"


def metadata_path(path: str | Path) -> Path:
    """The JSON manifest of the checkpoint ``path`` (``x.safetensors`` -> ``x.json``)."""
    return Path(path).with_suffix(".json")


def previous_metadata_path(path: str | Path) -> Path:
    """The manifest of the checkpoint saved before the current one (``x.safetensors`` -> ``x.prev.json``)."""
    return Path(path).with_suffix(".prev.json")


def checkpoint_exists(path: str | Path) -> bool:
    """Whether a checkpoint (its manifest, or a bare weights file) is at the logical ``path``."""
    return metadata_path(path).is_file() or Path(path).is_file()


_GENERATION = re.compile(r"^(?P<stem>.+)\.[0-9a-f]{12}\.safetensors$")


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
    """Save ``tensors`` and ``metadata`` as the checkpoint ``path`` (``.safetensors``), atomically.

    ``metadata`` must be JSON-serialisable (Paths, numpy scalars and one-element tensors are
    converted); this is checked before anything is written. The weights are streamed to disk and
    hashed as they are written (never copied whole in memory, never read back). A full disk
    raises DiskFullError naming the file and the bytes needed; the previous checkpoint stays
    intact and nothing is left behind.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: checkpoint files end in .safetensors")
    metadata_text = json.dumps(dict(metadata), default=_json_default)  # fail before writing
    prepared = _tensors_for_file(tensors)
    keep = _referenced_weights(path)
    # Streamed to a temporary file and hashed as it is written, then renamed by its content.
    tmp = _temporary_name(path.parent, path.name)
    weights = tmp
    try:
        with reporting_full_disk(
            path.with_name(f"{path.stem}.<sha256>.safetensors"), _safetensors_size(prepared)
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            written = _stream_safetensors(tmp, prepared)
            weights = path.with_name(f"{path.stem}.{written['sha256'][:12]}.safetensors")
            os.replace(tmp, weights)  # the same content twice (an unchanged best) gets the same name
        fault_point("checkpoint.weights_written")
        record = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "file": weights.name,
            "size": written["size"],
            "sha256": written["sha256"],
            "metadata": json.loads(metadata_text),
        }
        record_text = json.dumps(record, indent=1) + "\n"
        manifest = metadata_path(path)
        _keep_previous(path, weights.name)
        fault_point("checkpoint.previous_kept")
        with reporting_full_disk(manifest, len(record_text)):
            atomic_write_text(manifest, record_text)
            fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if weights.name not in keep:
            weights.unlink(missing_ok=True)
        raise
    fault_point("checkpoint.manifest_renamed")
    _link_alias(weights, path)
    fault_point("checkpoint.alias_linked")
    _remove_unreferenced(path)


def _safetensors_header(tensors: Mapping[str, Tensor]) -> bytes:
    """The length-prefixed JSON header of a safetensors file of ``tensors`` (data in name order)."""
    dtype_names = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}
    header: dict[str, Any] = {}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in dtype_names:
            raise TypeError(f"checkpoint tensor '{name}' has dtype {t.dtype}, which safetensors cannot store")
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": dtype_names[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return len(text).to_bytes(8, "little") + text


def _safetensors_size(tensors: Mapping[str, Tensor]) -> int:
    return len(_safetensors_header(tensors)) + sum(t.numel() * t.element_size() for t in tensors.values())


def _stream_safetensors(path: Path, tensors: Mapping[str, Tensor]) -> dict[str, Any]:
    """Write ``tensors`` as a safetensors file, hashing the bytes as they are written (no copy of
    the whole file in memory, no reading back) -> {"size", "sha256"}."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "wb") as f:
        os.chmod(path, file_mode())
        head = _safetensors_header(tensors)
        for chunk in (head, *(_raw_bytes(tensors[name]) for name in sorted(tensors))):
            digest.update(chunk)
            f.write(chunk)
            size += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


def _raw_bytes(tensor: Tensor) -> memoryview:
    """The little-endian bytes of a contiguous CPU tensor, without copying."""
    flat = tensor.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return (
        memoryview(flat.view(torch.uint8).numpy()) if flat.dtype != torch.uint8 else memoryview(flat.numpy())
    )


def _referenced_weights(path: Path) -> set[str]:
    """Names of the weights files the current and previous manifests of ``path`` vouch for."""
    names = set()
    for manifest in (metadata_path(path), previous_metadata_path(path)):
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            names.add(str(json.loads(manifest.read_text(encoding="utf-8"))["file"]))
    return names


def _keep_previous(path: Path, new_weights: str) -> None:
    """Make the current manifest (when it is sound, and its weights are not the new ones) the
    previous one, atomically (a hard link): the fallback then holds other weights."""
    manifest = metadata_path(path)
    try:
        record = _read_record_at(manifest, path)
    except DataError:
        return  # no current checkpoint, or a damaged one: keep the older previous one
    if record["file"] == new_weights or not (path.parent / str(record["file"])).is_file():
        return
    tmp = _temporary_name(path.parent, f"{path.stem}.prev.json")
    try:
        with reporting_full_disk(previous_metadata_path(path)):
            try:
                os.link(manifest, tmp)
            except OSError:
                tmp.write_bytes(manifest.read_bytes())  # file systems without hard links
            os.replace(tmp, previous_metadata_path(path))
    finally:
        tmp.unlink(missing_ok=True)


def _temporary_name(folder: Path, name: str) -> Path:
    """A fresh ``.NAME.<random>.tmp`` path in ``folder`` (swept after a kill)."""
    return folder / f".{name}.{secrets.token_hex(4)}.tmp"


def _link_alias(weights: Path, path: Path) -> None:
    """Point ``path`` (e.g. ``last.safetensors``) at the current weights, for tools that open it."""
    tmp = _temporary_name(path.parent, path.name)
    try:
        os.link(weights, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # no hard links here: loading goes through the manifest anyway
    finally:
        tmp.unlink(missing_ok=True)


def _remove_unreferenced(path: Path) -> None:
    """Delete weights files of ``path``'s checkpoint that no manifest vouches for any more."""
    keep = _referenced_weights(path)
    for entry in path.parent.glob(f"{path.stem}.*.safetensors"):
        match = _GENERATION.match(entry.name)
        if match and match["stem"] == path.stem and entry.name not in keep:
            entry.unlink(missing_ok=True)


def sweep_checkpoint_folder(folder: str | Path) -> list[Path]:
    """Remove what killed saves left in a checkpoint folder: temporary files (ours and
    safetensors') and weights files no manifest vouches for. Call it holding the run's lock."""
    folder = Path(folder)
    removed = sweep_temporary_files(folder)
    if not folder.is_dir():
        return removed
    stems = {m["stem"] for e in folder.iterdir() if (m := _GENERATION.match(e.name))}
    for stem in stems:
        logical = folder / f"{stem}.safetensors"
        keep = _referenced_weights(logical)
        for entry in folder.glob(f"{stem}.*.safetensors"):
            match = _GENERATION.match(entry.name)
            if match and match["stem"] == stem and entry.name not in keep:
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def _read_record(path: Path) -> dict[str, Any]:
    return _read_record_at(metadata_path(path), path)


def _read_record_at(json_path: Path, path: Path) -> dict[str, Any]:
    record = read_versioned_json(
        json_path,
        fmt=FORMAT,
        version=FORMAT_VERSION,
        missing=f"metadata file of checkpoint {path.name} is missing (a checkpoint is a .safetensors "
        "file with its .json beside it)",
        unreadable="checkpoint metadata is not readable JSON",
        other_format=f'not a liploc checkpoint record (no "format": "{FORMAT}")',
        other_version="checkpoint format version {version} is not supported",
    )
    for key, kind in (("size", int), ("sha256", str), ("metadata", dict)):
        if not isinstance(record.get(key), kind):
            raise DataError(json_path, f"checkpoint record lacks a valid '{key}'")
    return record


def _weights_of(path: Path, record: dict[str, Any]) -> Path:
    """The weights file a manifest vouches for: the file it names beside it, else ``path``
    (a checkpoint copied under another name keeps its manifest's old file name)."""
    named = path.parent / Path(str(record.get("file", path.name))).name
    return named if named.is_file() else path


def _naming(problem: str, weights: Path, path: Path) -> str:
    """``problem``, naming the content-named weights file when it is not ``path`` itself."""
    return problem if weights == path else f"{problem} [weights file {weights.name}]"


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _load_verified(
    path: Path, json_path: Path, device: str | torch.device
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load the weights ``json_path`` vouches for; retried when a save replaces the manifest
    between reading it and reading the weights (a reader never returns a mixed pair)."""
    attempts = 5
    for attempt in range(attempts):
        before = _stat_key(json_path)
        record = _read_record_at(json_path, path)
        weights = _weights_of(path, record)
        try:
            data = weights.read_bytes()  # one read: what is verified is what is loaded
            problem = None
        except FileNotFoundError:
            data, problem = b"", "checkpoint file not found"
        json_name = json_path.name
        if problem is None and len(data) != record["size"]:
            problem = (
                f"checkpoint is {len(data)} bytes but {json_name} records {record['size']} "
                "(truncated or replaced file)"
            )
        elif problem is None and hashlib.sha256(data).hexdigest() != record["sha256"]:
            problem = f"checkpoint content does not match the sha256 in {json_name} (corrupted file)"
        if problem is None:
            break
        if attempt + 1 < attempts and _stat_key(json_path) != before:
            continue  # a save moved on while we read: read the new manifest
        raise DataError(path, _naming(problem, weights, path))
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError) as err:
        raise DataError(path, _naming(f"not a readable safetensors file ({err})", weights, path)) from None
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, record["metadata"]


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata saved with the checkpoint ``path`` (reads the JSON only; no verification)."""
    return _read_record(Path(path))["metadata"]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict]:
    """Verify and load a checkpoint written by :func:`save_checkpoint` -> (tensors, metadata).

    The manifest must exist and parse, and the weights' size and sha256 must match it; otherwise a
    DataError names the file and the problem. Tensors are read with safetensors (no pickle).
    """
    path = Path(path)
    if not checkpoint_exists(path):
        raise DataError(path, "checkpoint file not found")
    return _load_verified(path, metadata_path(path), device)


def load_newest_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict, str | None]:
    """Like :func:`load_checkpoint`, but falls back to the previous checkpoint when the newest is
    damaged -> (tensors, metadata, note): ``note`` says what was skipped and why (None when the
    newest loaded). Raises the newest one's DataError when neither loads."""
    path = Path(path)
    try:
        return (*load_checkpoint(path, device), None)
    except DataError as newest_error:
        previous = previous_metadata_path(path)
        if not previous.is_file():
            raise
        try:
            tensors, metadata = _load_verified(path, previous, device)
        except DataError:
            raise newest_error from None
        note = (
            f"the newest checkpoint {path.name} is damaged ({newest_error}); fell back to the previous "
            f"checkpoint ({previous.name}, step {metadata.get('step', '?')})"
        )
        return tensors, metadata, note


def copy_checkpoint(source: str | Path, target: str | Path) -> None:
    """Copy the checkpoint ``source`` (verified) to the logical path ``target``: its weights as
    ``target`` itself and a manifest naming them, each written atomically."""
    source, target = Path(source), Path(target)
    record = _read_record(source)
    _load_verified(source, metadata_path(source), "cpu")  # refuse to copy a damaged checkpoint
    data = _weights_of(source, record).read_bytes()
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise DataError(source, "checkpoint changed while it was copied; try again")
    atomic_write_bytes(target, data)
    record = {**record, "file": target.name}
    atomic_write_text(metadata_path(target), json.dumps(record, indent=1) + "\n")


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
