"""Caches that cannot lie: checksummed preprocessing and embedding caches, the shared cache, its CLI."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import numpy as np
import pytest
import tiny_runs
from corridor_world import corridor_fixture
from tiny_runs import TINY
from typer.testing import CliRunner

from liploc.cli import app
from liploc.config import Config
from liploc.localization.embedding import EmbeddingCache
from liploc.runtime.data_roots import split_frames
from liploc.runtime.frame_dataset import PairDataset

corridor = corridor_fixture(12, 6)


def tiny_config(root: Path, *overrides: str) -> Config:
    return tiny_runs.tiny_config(root, "data.image_size=[32, 32]", *overrides)


def _flip_data_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[200] ^= 0x5A  # inside the array data, after the 128-byte .npy header
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_preprocessing_cache_is_rebuilt_and_reported(
    corridor: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(corridor)
    frames = split_frames(cfg.data, "train")
    truth = PairDataset(frames, cfg).preprocessed(3, "image")
    PairDataset(frames, cfg, cache_dir=tmp_path).preprocessed(3, "image")
    [entry] = list(tmp_path.rglob("*.npy"))
    _flip_data_byte(entry)
    fresh = PairDataset(frames, cfg, cache_dir=tmp_path)
    with pytest.warns(UserWarning, match=str(entry.name)):
        again = fresh.preprocessed(3, "image")
    assert np.array_equal(again, truth)
    assert np.array_equal(PairDataset(frames, cfg, cache_dir=tmp_path).preprocessed(3, "image"), truth)


def test_a_tampered_embedding_cache_is_rebuilt(corridor: Path, tmp_path: Path) -> None:
    cfg = tiny_config(corridor)
    frames = split_frames(cfg.data, "train")
    made = np.eye(len(frames), 8, dtype=np.float32)
    cache = EmbeddingCache(tmp_path, "ab" * 32)
    emb, cached = cache.get_or_make(frames, "lidar", lambda: made.copy())
    assert not cached
    [entry] = list(tmp_path.rglob("*.npy"))
    swapped = np.load(entry)
    swapped[[0, 1]] = swapped[[1, 0]]  # two rows swapped: every ranking changes
    np.save(entry, swapped)
    with pytest.warns(UserWarning, match=entry.name):
        emb, cached = cache.get_or_make(frames, "lidar", lambda: made.copy())
    assert not cached and np.array_equal(emb, made)
    _flip_data_byte(entry)
    emb, cached = EmbeddingCache(tmp_path, "ab" * 32).get_or_make(frames, "lidar", lambda: made.copy())
    assert not cached and np.array_equal(emb, made)
    emb, cached = EmbeddingCache(tmp_path, "ab" * 32).get_or_make(frames, "lidar", lambda: made.copy())
    assert cached and np.array_equal(emb, made)


def test_swapped_preprocessing_entries_are_refused_and_rebuilt(corridor: Path, tmp_path: Path) -> None:
    # Fault found from outside: the entries of frames 0 and 5 swapped passed their checksums and
    # were used silently. A checksum covers the entry's key too.
    cfg = tiny_config(corridor)
    frames = split_frames(cfg.data, "train")
    truth = [PairDataset(frames, cfg).preprocessed(i, "image") for i in (0, 5)]
    cached = PairDataset(frames, cfg, cache_dir=tmp_path)
    paths = [cached.cache.path_for(frames[i].image_path, "image") for i in (0, 5)]
    for i in (0, 5):
        cached.preprocessed(i, "image")
    a, b = (p.read_bytes() for p in paths)
    paths[0].write_bytes(b)
    paths[1].write_bytes(a)
    fresh = PairDataset(frames, cfg, cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="another entry's"):
        again = [fresh.preprocessed(i, "image") for i in (0, 5)]
    assert all(np.array_equal(x, y) for x, y in zip(again, truth, strict=True))


def test_an_entry_of_the_wrong_shape_with_a_valid_checksum_is_rebuilt(corridor: Path, tmp_path: Path) -> None:
    # Fault found from outside: such an entry crashed evaluate with "stack expects each tensor to
    # be equal size". Entries are checked against the shape the settings give.
    from liploc.checked_array import write_checked

    cfg = tiny_config(corridor)
    frames = split_frames(cfg.data, "train")
    truth = PairDataset(frames, cfg).preprocessed(2, "lidar")
    cached = PairDataset(frames, cfg, cache_dir=tmp_path)
    write_checked(cached.cache.path_for(frames[2].scan_path, "lidar"), np.zeros((3, 16, 16), np.uint8))
    with pytest.warns(UserWarning, match=r"shape \(3, 16, 16\), not \(3, 32, 32\)"):
        again = cached.preprocessed(2, "lidar")
    assert np.array_equal(again, truth)


def test_an_image_embedding_entry_copied_over_the_lidar_entry_is_refused(
    corridor: Path, tmp_path: Path
) -> None:
    # Fault found from outside: evaluate then matched images with themselves (R@1 45 % -> 100 %).
    cfg = tiny_config(corridor)
    frames = split_frames(cfg.data, "train")
    cache = EmbeddingCache(tmp_path, "cd" * 32)
    lidar = np.eye(len(frames), 8, dtype=np.float32)
    cache.put(frames, "lidar", lidar)
    cache.put(frames, "image", np.eye(len(frames), 8, k=1, dtype=np.float32))
    [image_entry] = [p for p in tmp_path.rglob("*.npy") if "-image-" in p.name]
    [lidar_entry] = [p for p in tmp_path.rglob("*.npy") if "-lidar-" in p.name]
    lidar_entry.write_bytes(image_entry.read_bytes())
    with pytest.warns(UserWarning, match=lidar_entry.name):
        assert cache.get(frames, "lidar") is None


def test_a_failed_embedding_cache_write_costs_only_speed(
    corridor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(corridor)
    frames = split_frames(cfg.data, "train")

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    made = np.eye(len(frames), 8, dtype=np.float32)
    emb, cached = EmbeddingCache(tmp_path, "cd" * 32).get_or_make(frames, "image", lambda: made)
    assert not cached and np.array_equal(emb, made)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no half-written leftovers


def test_the_preprocessing_cache_is_shared_between_runs(
    corridor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from liploc.training.train import train

    monkeypatch.setenv("LIPLOC_CACHE_DIR", str(tmp_path / "user-cache"))
    # Scans moved sideways are made anew each time, not cached: without them, one epoch caches all.
    cfg = tiny_config(corridor, "train.epochs=1", "train.batch_size=4", "data.lidar_sideways_m=0")
    train(cfg, tmp_path / "a", progress=False)
    entries = sorted((tmp_path / "user-cache").rglob("*.npy"))
    assert len(entries) == 2 * 18  # both modalities of every training and validation frame
    assert not (tmp_path / "a" / "cache").exists()
    stamps = [p.stat().st_mtime_ns for p in entries]
    train(cfg, tmp_path / "b", progress=False)
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "user-cache").rglob("*.npy"))] == stamps


def test_cache_warm_info_and_clear(corridor: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cache = tmp_path / "cache"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(TINY.read_text() + "\n")
    stale = cache / "0123456789abcdef" / "image" / ".x.npy.k2j3.tmp"  # a killed writer's, 2 h old
    young = stale.with_name(".y.npy.a1b2.tmp")  # a live writer's
    stale.parent.mkdir(parents=True)
    for path in (stale, young):
        path.write_bytes(b"x" * 10)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    res = runner.invoke(
        app,
        [
            "cache",
            "warm",
            str(cfg_file),
            "--data-root",
            str(corridor),
            "--cache-dir",
            str(cache),
            "--workers",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(list(cache.rglob("*.npy"))) == 2 * 18
    assert "36" in res.output
    assert not stale.exists() and young.exists()
    res = runner.invoke(app, ["cache", "info", "--cache-dir", str(cache)])
    assert res.exit_code == 0, res.output
    assert "36 entries" in res.output and ("KiB" in res.output or "MiB" in res.output)
    res = runner.invoke(app, ["cache", "clear", "--cache-dir", str(cache)])
    assert res.exit_code == 0, res.output
    assert "freed" in res.output
    assert list(cache.rglob("*.npy")) == []
