"""Folders replaced in one step (map build --force, export): the old folder or the new, never
neither; through a symlink the folder it points to is replaced and the link stays; what killed
writers left is swept. Faults found from outside: a kill between the export's two renames left
nothing at --out, killed exports' scratch folders piled up, and map build --force through a
symlink replaced the link with a folder and left the real map on the old model."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import liploc.atomic_folder as atomic_folder
from liploc.atomic_folder import real_folder, replace_folder, scratch_path, sweep_folder_leftovers
from liploc.localization.lidar_map import LidarMap


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "content.txt").write_text(text)
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_replace_swaps_the_folders_and_removes_the_old(tmp_path: Path) -> None:
    target = _folder(tmp_path / "export", "old")
    new = _folder(scratch_path(target, "tmp"), "new")
    replace_folder(new, target)
    assert (target / "content.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_without_an_atomic_exchange_a_failed_second_rename_puts_the_old_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _folder(tmp_path / "export", "old")
    new = _folder(scratch_path(target, "tmp"), "new")
    monkeypatch.setattr(atomic_folder, "exchange", lambda a, b: False)
    real_replace = os.replace

    def failing_second(src, dst):  # the move of the old folder aside works, the new one's fails
        if Path(src) == new:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic_folder.os, "replace", failing_second)
    with pytest.raises(OSError):
        replace_folder(new, target)
    assert (target / "content.txt").read_text() == "old"


def test_through_a_symlink_the_folder_it_points_to_is_replaced_and_the_link_stays(tmp_path: Path) -> None:
    (tmp_path / "maps").mkdir()
    real = _folder(tmp_path / "maps" / "v1", "old")
    link = tmp_path / "current"
    link.symlink_to(real)
    target = real_folder(link)
    assert target == real.resolve()
    replace_folder(_folder(scratch_path(target, "tmp"), "new"), target)
    assert link.is_symlink() and (link / "content.txt").read_text() == "new"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left


def test_scratch_folders_of_dead_writers_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "export"
    dead = _folder(tmp_path / f".export.{_dead_pid()}.0a1b2c3d.tmp", "killed")
    old = _folder(tmp_path / f".export.{_dead_pid()}.0a1b2c3e.old", "killed")
    live = _folder(tmp_path / f".export.{os.getppid()}.0a1b2c3f.tmp", "running")
    other = _folder(tmp_path / f".other.{_dead_pid()}.0a1b2c40.tmp", "another target's")
    assert sorted(sweep_folder_leftovers(target)) == sorted([dead, old])
    assert live.is_dir() and other.is_dir()


def _tiny_map() -> LidarMap:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    poses = np.tile(np.eye(4), (6, 1, 1))
    poses[:, 0, 3] = np.arange(6) * 5.0
    return LidarMap.build(emb, poses, [("00", i) for i in range(6)], "fp", {"embed_dim": 8})


def test_a_map_saved_through_a_symlink_replaces_the_real_map_and_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "maps" / "v1"
    _tiny_map().save(real)
    link = tmp_path / "current"
    link.symlink_to(real)
    newer = _tiny_map()
    newer.poses[:, 1, 3] = 7.0  # another map: other poses
    newer.save(link)
    assert link.is_symlink()
    assert np.allclose(LidarMap.load(real).poses[:, 1, 3], 7.0)
    leftovers = [p.name for p in (tmp_path / "maps").iterdir() if p.name != "v1"] + [
        p.name for p in tmp_path.iterdir() if p.name not in ("maps", "current")
    ]
    assert leftovers == []
