"""Checkpoints: safetensors + JSON round trips, exact training resume, and damaged files."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from liploc.config import LossConfig
from liploc.errors import DataError
from liploc.runtime.checkpoint import (
    load_checkpoint,
    metadata_path,
    read_checkpoint_metadata,
    save_checkpoint,
    state_to_tensors,
    strip_prefix,
    tensors_to_state,
)
from liploc.training.losses import build_loss


def small_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "last.safetensors"
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor(7)}
    save_checkpoint(path, tensors, {"step": 12, "config": {"name": "x"}, "where": tmp_path})
    return path


def test_round_trip_with_recorded_size_and_hash(tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path)
    record = json.loads(metadata_path(path).read_text())
    assert record["size"] == path.stat().st_size and len(record["sha256"]) == 64
    weights = path.with_name(f"last.{record['sha256'][:12]}.safetensors")  # content-named, vouched for
    assert record["file"] == weights.name and weights.stat().st_ino == path.stat().st_ino
    tensors, metadata = load_checkpoint(path)
    torch.testing.assert_close(tensors["a"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert tensors["b"].item() == 7 and tensors["b"].shape == ()
    assert metadata == {"step": 12, "config": {"name": "x"}, "where": str(tmp_path)}
    assert read_checkpoint_metadata(path) == metadata
    # No temporary files: the weights, their manifest, and last.safetensors linked to the weights.
    assert sorted(p.name for p in path.parent.iterdir()) == [weights.name, "last.json", "last.safetensors"]


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = small_checkpoint(tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    tensors, _ = load_checkpoint(path)
    assert set(tensors) == {"a", "b"}


def test_tampered_byte_is_refused(tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # flip a bit of the tensor data: the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"last.safetensors: .*sha256 in last.json"):
        load_checkpoint(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(DataError, match=r"last.safetensors: checkpoint is \d+ bytes but last.json records"):
        load_checkpoint(path)


def test_missing_or_broken_metadata_is_refused(tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path)
    json_path = metadata_path(path)
    json_path.write_text("{ not json")
    with pytest.raises(DataError, match=r"last.json: checkpoint metadata is not readable JSON"):
        load_checkpoint(path)
    json_path.write_text(json.dumps({"size": 1}))
    with pytest.raises(DataError, match=r"last.json: not a liploc checkpoint record"):
        load_checkpoint(path)
    json_path.unlink()
    with pytest.raises(
        DataError, match=r"last.json: metadata file of checkpoint last.safetensors is missing"
    ):
        load_checkpoint(path)
    with pytest.raises(DataError, match=r"nothing.safetensors: checkpoint file not found"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_bad_arguments_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_checkpoint(tmp_path / "x.pt", {"a": torch.zeros(1)}, {})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "y.safetensors", {"a": torch.zeros(1)}, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_nested_state_round_trip_keeps_types() -> None:
    state = {
        "int_keys": {0: torch.ones(2), 3: {"step": torch.tensor(5.0)}},
        "pair": (0.9, 0.999),
        "inf": float("inf"),
        "nan": float("nan"),
        "none": None,
        "flags": [True, "text", 3],
        "array": np.arange(5, dtype=np.uint32),
        "np_scalar": np.float64(2.5),
        "__dunder": 1,
    }
    tensors, skeleton = state_to_tensors(state, prefix="s.")
    assert set(tensors) == {"s.int_keys.0", "s.int_keys.3.step", "s.array"}
    back = tensors_to_state(tensors, json.loads(json.dumps(skeleton)))
    assert list(back["int_keys"]) == [0, 3]
    torch.testing.assert_close(back["int_keys"][3]["step"], torch.tensor(5.0))
    assert back["pair"] == (0.9, 0.999) and back["inf"] == float("inf") and np.isnan(back["nan"])
    assert back["none"] is None and back["flags"] == [True, "text", 3] and back["__dunder"] == 1
    assert back["array"].dtype == np.uint32 and back["array"].tolist() == [0, 1, 2, 3, 4]
    assert back["np_scalar"] == 2.5
    with pytest.raises(TypeError, match="unsupported type"):
        state_to_tensors({"f": lambda: None})


def _train_steps(
    model: torch.nn.Module, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer, n: int
) -> None:
    for _ in range(n):
        x = torch.randn(6, 4)  # draws from the global RNG, whose state the checkpoint restores
        emb = torch.nn.functional.normalize(model(x), dim=-1)
        loss = loss_fn(emb[:, :3], emb[:, 3:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _training_objects() -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 6)
    loss_fn = build_loss(LossConfig(kind="clip", learnable_temperature=True, temperature=0.2))
    optimizer = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()], lr=1e-2, weight_decay=1e-3)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.5)
    return model, loss_fn, optimizer, scheduler


def test_training_resumes_exactly_from_a_checkpoint(tmp_path: Path) -> None:
    model, loss_fn, optimizer, scheduler = _training_objects()
    _train_steps(model, loss_fn, optimizer, 3)
    scheduler.step(1.0)
    scheduler.step(2.0)  # a bad epoch: the rate halves
    random.seed(4)
    np.random.seed(4)
    state = {
        "model": model.state_dict(),
        "loss": loss_fn.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    }
    tensors, skeleton = state_to_tensors(state)
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, tensors, {"step": 3, "state": skeleton})
    assert "model.weight" in tensors and "optimizer.state.0.exp_avg" in tensors
    # The run goes on for 2 steps ...
    _train_steps(model, loss_fn, optimizer, 2)
    expected_numpy, expected_python = np.random.rand(), random.random()

    # ... and a fresh process resumes from the checkpoint and does the same 2 steps.
    model2, loss2, optimizer2, scheduler2 = _training_objects()
    loaded, metadata = load_checkpoint(path)
    restored = tensors_to_state(loaded, metadata["state"])
    model2.load_state_dict(restored["model"])
    loss2.load_state_dict(restored["loss"])
    optimizer2.load_state_dict(restored["optimizer"])
    scheduler2.load_state_dict(restored["scheduler"])
    torch.set_rng_state(restored["rng"]["torch"])
    np.random.set_state(restored["rng"]["numpy"])
    random.setstate(restored["rng"]["python"])
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(5e-3)
    _train_steps(model2, loss2, optimizer2, 2)
    for a, b in zip(
        [*model.parameters(), *loss_fn.parameters()], [*model2.parameters(), *loss2.parameters()], strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert np.random.rand() == expected_numpy and random.random() == expected_python
    assert set(strip_prefix(loaded, "model.")) == {"weight", "bias"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_save_and_load_to_a_device(tmp_path: Path) -> None:
    path = tmp_path / "gpu.safetensors"
    save_checkpoint(path, {"w": torch.arange(4.0, device="cuda")}, {})
    tensors, _ = load_checkpoint(path, device="cuda")
    assert tensors["w"].device.type == "cuda"
    torch.testing.assert_close(tensors["w"].cpu(), torch.arange(4.0))
