"""`liploc evaluate --preset` end to end on a `liploc synth --pose-frame first` folder (KITTI style)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import write_kitti_odometry
from tiny_runs import train_tiny
from typer.testing import CliRunner

from liploc.cli import app


@pytest.fixture(scope="module")
def kitti_style(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Nine synthetic drives 00-08 with KITTI-style poses (each from its own first pose), and a
    tiny run trained on 01 and 03 (in no preset's test split)."""
    root = tmp_path_factory.mktemp("synth")
    result = CliRunner().invoke(
        app,
        ["synth", "--out", str(root), "--pose-frame", "first", "--size", "small", "--drives", "9",
         "--frames", "2", "--spacing", "4", "--blocks", "3x2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = train_tiny(
        tmp_path_factory.mktemp("run") / "run",
        f"{{root: '{root}', train: ['01', '03'], val: []}}",
        *("data.val_fraction=0", "train.max_steps=1", "train.batch_size=4"),
    )
    return {"root": root, "run": run}


def test_synth_first_is_one_world_per_sequence(kitti_style: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["info", str(kitti_style["root"]), "--no-check-files"])
    assert result.exit_code == 0, result.output
    assert "each sequence has its own" in result.output
    refused = CliRunner().invoke(
        app,
        ["evaluate", str(kitti_style["run"]), "--data-root", str(kitti_style["root"]), "--sequence", "02",
         "--protocol", "cross-drive", "--map-sequence", "04"],
    )  # fmt: skip
    assert refused.exit_code == 1
    message = " ".join(refused.output.split())
    assert "sequences 02 and 04" in message and "different world frames" in message
    assert "Traceback" not in refused.output


@pytest.mark.parametrize(
    ("preset", "sequences", "header"),
    [
        ("kitti-b", ["00", "02", "05", "06", "07", "08"], "kitti-b, 10 m, own scan removed from database"),
        ("lip-loc", ["08"], "lip-loc, 20 m, own scan in database"),
    ],
)
def test_cli_preset_prints_one_table_per_protocol(
    kitti_style: dict[str, Path], preset: str, sequences: list[str], header: str
) -> None:
    root, run = kitti_style["root"], kitti_style["run"]
    if preset == "lip-loc":  # lip-loc tests on 08 and 09: without 09 the preset names what is missing
        missing = CliRunner().invoke(
            app, ["evaluate", str(run), "--data-root", str(root), "--preset", preset]
        )
        assert missing.exit_code == 1 and "test sequences 09 not found" in " ".join(missing.output.split())
        write_kitti_odometry(root, "09", n_frames=4)
        sequences = ["08", "09"]
    result = CliRunner().invoke(
        app, ["evaluate", str(run), "--data-root", str(root), "--preset", preset], env={"COLUMNS": "120"}
    )
    assert result.exit_code == 0, result.output
    assert header in result.output
    rows = [line for line in result.output.splitlines() if re.match(r"^\W*(\d\d|mean)\b", line)]
    assert [re.match(r"^\W*(\w+)", r)[1] for r in rows] == [*sequences, "mean"]
    if preset == "kitti-b":
        assert (
            "published R@1 on 00 (kitti-b, for reference): "
            "ModaLink 90.3, CMVM 93.1, RangeBEV 99.0, DXPR 99.85" in (" ".join(result.output.split()))
        )
    saved = json.loads((run / "eval" / preset / "protocol.json").read_text())
    assert [r["sequence"] for r in saved["rows"]] == sequences
    assert saved["protocol_label"] == header


def test_cli_preset_refuses_sequences_the_run_trained_on(kitti_style: dict[str, Path]) -> None:
    root, run = kitti_style["root"], kitti_style["run"]
    result = CliRunner().invoke(app, ["evaluate", str(run), "--data-root", str(root), "--sequence", "03"])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "03 (the run used train 03)" in message and "--allow-training-data" in message
    allowed = CliRunner().invoke(
        app, ["evaluate", str(run), "--data-root", str(root), "--sequence", "03", "--allow-training-data"]
    )
    assert allowed.exit_code == 0, allowed.output
    both = CliRunner().invoke(
        app, ["evaluate", str(run), "--data-root", str(root), "--preset", "kitti-b", "--sequence", "02"]
    )
    assert both.exit_code == 1 and "not both" in both.output
    fixed = CliRunner().invoke(
        app, ["evaluate", str(run), "--data-root", str(root), "--preset", "kitti-b", "--threshold", "5"]
    )
    assert fixed.exit_code == 1 and "--threshold: fixed by the preset kitti-b" in " ".join(
        fixed.output.split()
    )
