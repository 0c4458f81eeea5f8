"""``liploc map add`` killed (SIGKILL) while it writes: the map folder afterwards loads and is
exactly the map before the drive or exactly the map after it, never something between (issue 25).

The kills land at the named instants of :mod:`liploc.faults` (a map's files half written, all
written, swapped in) and, by polling, as soon as the new map's scratch folder appears and as soon
as it holds a manifest. A killed run is then run again, which must give the whole "after" map.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from corridor_world import write_map_town
from tiny_runs import train_on_00

from liploc.faults import ENV
from liploc.localization.lidar_map import LidarMap
from liploc.localization.localize import build_map

REPO = Path(__file__).resolve().parents[1]
INSTANTS = ("map.embeddings_written", "map.folder_written", "map.swapped")
POLLED = ("scratch folder appears", "scratch folder holds a manifest")


def folder_state(folder: Path) -> dict[str, str]:
    """sha256 of every file of ``folder`` by relative path (the map, its model copy)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def map_add(map_dir: Path, town: dict[str, Path], kill_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    env["LIPLOC_CACHE_DIR"] = str(town["cache"])
    env.pop(ENV, None)
    if kill_at is not None:
        env[ENV] = kill_at
    command = ["map", "add", str(map_dir), "--data-root", str(town["root"]), "--sequence", "01"]
    return subprocess.Popen(
        [sys.executable, "-m", "liploc", *command, "--device", "cpu"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_when(proc: subprocess.Popen, map_dir: Path, moment: str) -> None:
    """SIGKILL ``proc`` as soon as ``moment`` is seen (polled), or let it finish if it ends first."""
    scratch = f".{map_dir.name}."
    while proc.poll() is None:
        folders = [
            p for p in map_dir.parent.iterdir() if p.name.startswith(scratch) and p.name.endswith(".tmp")
        ]
        if folders and (moment == POLLED[0] or any((f / "manifest.json").exists() for f in folders)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.0005)
    proc.wait(300)


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Drives of one world, a map of 02, and the states of the map before and after adding 01."""
    base = tmp_path_factory.mktemp("kill")
    root = write_map_town(base / "town")
    run = train_on_00(root, base / "run", seed=0, steps=1, batch_size=8)
    build_map(run, root, ["02"], base / "before", device="cpu", onnx=False)
    town = {"root": root, "before": base / "before", "after": base / "after", "cache": base / "cache"}
    shutil.copytree(town["before"], town["after"])
    done = map_add(town["after"], town)
    out, _ = done.communicate(timeout=300)
    assert done.returncode == 0, out
    return town


@pytest.mark.slow
@pytest.mark.parametrize("moment", [*INSTANTS, *POLLED])
def test_map_add_killed_while_writing_leaves_the_map_before_or_after(
    town: dict[str, Path], tmp_path: Path, moment: str
) -> None:
    before, after = folder_state(town["before"]), folder_state(town["after"])
    assert before != after and len(LidarMap.load(town["after"])) == 14
    map_dir = Path(shutil.copytree(town["before"], tmp_path / "map"))

    proc = map_add(map_dir, town, kill_at=moment if moment in INSTANTS else None)
    if moment in INSTANTS:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, out  # killed there, not finished
    else:
        kill_when(proc, map_dir, moment)
        assert proc.returncode == -signal.SIGKILL, "map add ended before the moment was seen"

    state = folder_state(map_dir)
    assert state in (before, after), f"killed at {moment}: the map is neither before nor after"
    expected = 8 if state == before else 14
    assert len(LidarMap.load(map_dir)) == expected  # every checksum, the index against the embeddings
    if moment == "map.swapped":
        assert state == after  # the exchange is the instant the map changes
    if moment in ("map.embeddings_written", "map.folder_written"):
        assert state == before

    if state == before:  # the drive is not in the map: adding it again gives the whole "after"
        again = map_add(map_dir, town)
        out, _ = again.communicate(timeout=300)
        assert again.returncode == 0, out
        assert folder_state(map_dir) == after
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".old"))]
    assert state == after or not leftovers, leftovers  # the rerun swept the killed run's scratch
