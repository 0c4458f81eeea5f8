"""Map folders: atomic rebuilds with the model inside, --force, permissions, leftovers."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from corridor_world import write_corridors
from state_observer import observe_file_changes
from tiny_runs import train_tiny
from typer.testing import CliRunner

from liploc.cli import app
from liploc.errors import LiplocError
from liploc.localization.lidar_map import LidarMap
from liploc.localization.localize import Localizer, build_map


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = write_corridors(tmp_path_factory.mktemp("corridor"), ("00", 32, 1), ("01", 8, 2), ("02", 12, 3))
    run = train_tiny(
        tmp_path_factory.mktemp("runs") / "a",
        f"{{root: '{root}', train: ['00'], val: ['01']}}",
        *("data.num_workers=0", "train.max_steps=1"),
    )
    return {"root": root, "run": run}


def test_a_reader_sees_the_old_or_the_new_map_at_every_instant_of_a_rebuild(
    world: dict[str, Path], tmp_path: Path
) -> None:
    map_dir = tmp_path / "maps" / "m"
    build_map(world["run"], world["root"], ["01"], map_dir)
    loads: list[int] = []

    def check(event: str) -> None:
        loc = Localizer.open(map_dir)  # manifest, every file's checksum and the model copy
        loads.append(len(loc.lidar_map))

    # Another drive replaces the map (02 and 01 together are refused: each is its own world).
    with observe_file_changes(check) as events:
        build_map(world["run"], world["root"], ["02"], map_dir, force=True)
    assert len(events) >= 2 and loads[0] == 8 and loads[-1] == 12
    assert set(loads) == {8, 12}
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["m"]


def test_a_polling_reader_never_fails_while_a_map_is_rebuilt(world: dict[str, Path], tmp_path: Path) -> None:
    map_dir = tmp_path / "m"
    build_map(world["run"], world["root"], ["02"], map_dir)
    done = threading.Event()
    errors: list[str] = []
    loads = [0]

    def poll() -> None:
        while not done.is_set():
            try:
                LidarMap.load(map_dir, verify=False)
                if not (map_dir / "model" / "model.safetensors").is_file():
                    errors.append("no model copy")
                loads[0] += 1
            except (LiplocError, OSError) as err:
                errors.append(repr(err))

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for _ in range(3):
            build_map(world["run"], world["root"], ["02"], map_dir, force=True)
    finally:
        done.set()
        reader.join()
    assert errors == [] and loads[0] > 0


def test_map_build_needs_force_to_replace_a_map_and_follows_the_umask(
    world: dict[str, Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    args = ["map", "build", str(world["run"]), "--data-root", str(world["root"]), "--sequence", "02"]
    args += ["--out", str(tmp_path / "m"), "--device", "cpu"]
    old = os.umask(0o022)
    try:
        assert runner.invoke(app, args).exit_code == 0
        before = (tmp_path / "m" / "manifest.json").read_bytes()
        res = runner.invoke(app, args)
        assert res.exit_code == 1 and "--force" in res.output
        assert (tmp_path / "m" / "manifest.json").read_bytes() == before
        res = runner.invoke(app, [*args, "--force"])
        assert res.exit_code == 0, res.output
    finally:
        os.umask(old)
    for path in [tmp_path / "m", *(tmp_path / "m").rglob("*")]:
        want = 0o755 if path.is_dir() else 0o644
        assert path.stat().st_mode & 0o777 == want, path


def test_stale_temporary_map_folders_are_swept(world: dict[str, Path], tmp_path: Path) -> None:
    dead_pid = 2**22 + 12345  # above pid_max: no such process
    stale = tmp_path / f".m.{dead_pid}.x1y2.tmp"
    (stale / "model").mkdir(parents=True)
    (stale / "embeddings.npy").write_bytes(b"x" * 100)
    build_map(world["run"], world["root"], ["02"], tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_map_build_and_evaluate_is_an_error_line(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    args = ["map", "build", str(world["run"]), "--data-root", str(world["root"]), "--sequence", "02"]
    args += ["--out", str(tmp_path / "m"), "--device", "cpu"]
    assert runner.invoke(app, args).exit_code == 0
    before = (tmp_path / "m" / "manifest.json").read_bytes()
    monkeypatch.setattr(np, "save", _no_space)  # the map's arrays cannot be written
    res = runner.invoke(app, [*args, "--force"])
    assert res.exit_code == 1 and res.exc_info[0] is SystemExit, res.output
    assert "error:" in res.output and "could not write" in res.output and "bytes needed" in res.output
    assert (tmp_path / "m" / "manifest.json").read_bytes() == before  # the old map stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left
    monkeypatch.undo()

    monkeypatch.setattr(os, "replace", _no_space)  # no file of the evaluation can be renamed into place
    ev = ["evaluate", str(world["run"]), "--data-root", str(world["root"]), "--sequence", "02"]
    res = runner.invoke(app, [*ev, "--out", str(tmp_path / "ev"), "--device", "cpu"])
    assert res.exit_code == 1 and res.exc_info[0] is SystemExit, res.output
    assert "error:" in res.output and "could not write" in res.output
    monkeypatch.undo()
    assert not [p for p in (tmp_path / "ev").rglob("*") if p.name.endswith(".tmp")]
