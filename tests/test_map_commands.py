"""`liploc map build --index` records the index kind it was asked for; `liploc map add` grows a map
through the CLI and refuses a drive of another world frame, naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from map_world import MAP_SEQUENCE, map_world  # noqa: F401  (the session's map fixture)
from typer.testing import CliRunner

from liploc.cli import app


def test_map_build_records_the_index_kind_asked_for(map_world: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "map16"
    args = ["map", "build", str(map_world["run"]), "--data-root", str(map_world["root"])]
    res = CliRunner().invoke(
        app, [*args, "--sequence", MAP_SEQUENCE, "--out", str(out), "--index", "flat-fp16", "--no-onnx"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "manifest.json").read_text())["index_kind"] == "flat-fp16"


def test_map_add_refuses_a_drive_of_another_world(map_world: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    # KITTI odometry sequences each have their own world frame: 01 cannot join a map of 02.
    grown = tmp_path / "map"
    shutil.copytree(map_world["map"], grown, symlinks=True)
    before = (grown / "manifest.json").read_bytes()
    res = CliRunner().invoke(
        app, ["map", "add", str(grown), "--data-root", str(map_world["root"]), "--sequence", "01"]
    )
    assert res.exit_code == 1, res.output
    assert "world" in res.output and "01" in res.output
    assert (grown / "manifest.json").read_bytes() == before  # the map as it was


def test_a_scan_without_its_image_is_said_left_out_by_map_build_and_evaluate(
    map_world: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    # Fault found from outside: evaluate printed "59 queries" and map build "map of 59 scans"
    # without a word on the frame they left out, while training says "left out 1".
    root = tmp_path / "data"
    shutil.copytree(map_world["root"], root)
    (root / "sequences" / MAP_SEQUENCE / "image_2" / "000007.png").unlink()
    runner = CliRunner()
    args = ["--data-root", str(root), "--sequence", MAP_SEQUENCE]
    res = runner.invoke(
        app, ["map", "build", str(map_world["run"]), *args, "--out", str(tmp_path / "m"), "--no-onnx"]
    )
    assert res.exit_code == 0, res.output
    assert f"{MAP_SEQUENCE}: 1 scans or images without their pair left out of the map" in res.output
    res = runner.invoke(app, ["evaluate", str(map_world["run"]), *args, "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert "left out 1 scans or images without their pair" in res.output
