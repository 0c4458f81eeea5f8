"""Evaluation protocols, embeddings kept in the run, reports, maps and localization on a toy world."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from corridor_world import write_corridor
from typer.testing import CliRunner

from liploc.cli import app
from liploc.config import load_config
from liploc.errors import ConfigError, DataError, ModelMismatchError
from liploc.retrieval.evaluate import evaluate
from liploc.retrieval.localize import Localizer, build_map
from liploc.training.train import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _train_run(root: Path, out: Path, seed: int, steps: int) -> Path:
    cfg = load_config(
        CONFIG,
        [
            f"data.datasets=[{{root: '{root}', train: ['00'], val: ['01']}}]",
            "data.image_size=[32, 32]",
            f"train.max_steps={steps}",
            f"train.seed={seed}",
            "train.batch_size=16",
        ],
    )
    train(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corridor")
    write_corridor(root, "00", 64, seed=1)
    write_corridor(root, "01", 24, seed=2)
    write_corridor(root, "02", 40, seed=3)
    write_corridor(root, "03", 40, seed=4)
    runs = tmp_path_factory.mktemp("runs")
    return {
        "root": root,
        "run": _train_run(root, runs / "a", seed=0, steps=6),
        "other_run": _train_run(root, runs / "b", seed=1, steps=2),
    }


def test_same_sequence_writes_metrics_report_and_embeddings(world: dict[str, Path]) -> None:
    out = evaluate(world["run"], world["root"], "02", protocol="same-sequence", num_examples=2)
    assert out.out_dir == world["run"] / "eval" / "02-same-sequence"
    data = json.loads((out.out_dir / "metrics.json").read_text())
    main = data["thresholds"][0]
    assert main["threshold_m"] == 20.0
    assert data["num_queries"] == 40 and data["db_size"] == 40
    # The corridor steps 1 m per frame: a 20 m radius holds up to 41 of the 40 scans.
    assert 0.0 <= main["recall"]["1"] <= main["recall"]["5"] <= main["recall"]["10"] <= 1.0
    assert main["chance"]["1"] > 0.3
    assert (out.out_dir / "report" / "index.html").is_file()
    assert (out.out_dir / "report" / "examples.png").is_file()
    q = np.load(out.out_dir / "query_embeddings.npy")
    assert q.shape[0] == 40
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-4)
    cached = list((world["run"] / "embeddings").rglob("*.npy"))
    assert len(cached) == 2  # image and lidar embeddings of sequence 02, kept for re-evaluation
    # A second evaluation (another threshold) reuses them and gives the same retrievals.
    again = evaluate(world["run"], world["root"], "02", thresholds_m=[5.0], num_examples=0)
    np.testing.assert_array_equal(again.result.retrieved, out.result.retrieved)
    assert again.result.main.threshold_m == 5.0
    assert len(list((world["run"] / "embeddings").rglob("*.npy"))) == 2


def test_cross_drive_uses_the_other_drive_as_database(world: dict[str, Path]) -> None:
    out = evaluate(
        world["run"], world["root"], "02", protocol="cross-drive", map_sequence="03", num_examples=0
    )
    assert out.result.db_size == 40
    assert out.result.info["map_sequence"] == "03"
    with pytest.raises(ConfigError, match="map-sequence"):
        evaluate(world["run"], world["root"], "02", protocol="cross-drive")


def test_revisit_excludes_the_same_time_scans(world: dict[str, Path]) -> None:
    # The corridor never comes back: with a 30 s window (300 frames at 10 Hz) nothing is left to find.
    out = evaluate(world["run"], world["root"], "02", protocol="revisit", num_examples=0)
    assert out.result.main.num_counted == 0
    assert out.result.main.num_without_positive == 40
    # A 1.05 s window leaves scans 11+ frames away: positives within 20 m exist again.
    short = evaluate(
        world["run"], world["root"], "02", protocol="revisit", revisit_window_s=1.05, num_examples=0
    )
    assert short.result.main.num_counted == 40
    assert np.all(np.abs(short.result.retrieved[:, 0] - np.arange(40)) > 10)


def test_unknown_sequence_and_protocol(world: dict[str, Path]) -> None:
    with pytest.raises(DataError, match="no sequence '42'"):
        evaluate(world["run"], world["root"], "42")
    with pytest.raises(ConfigError, match="unknown protocol"):
        evaluate(world["run"], world["root"], "02", protocol="nearest")


def test_map_build_localize_and_refuse_other_model(world: dict[str, Path], tmp_path: Path) -> None:
    map_dir = tmp_path / "map02"
    lidar_map = build_map(world["run"], world["root"], ["02"], map_dir)
    assert len(lidar_map) == 40
    assert (map_dir / "model" / "model.safetensors").is_file()
    image = world["root"] / "sequences" / "02" / "image_2" / "000007.png"
    loc = Localizer.open(map_dir)
    matches = loc.localize([image], k=3)[0]
    assert [m.rank for m in matches] == [1, 2, 3]
    assert matches[0].score >= matches[1].score >= matches[2].score
    assert matches[0].pose.shape == (4, 4)
    # The Python API agrees with the evaluation's retrieval for the same image.
    ev = evaluate(world["run"], world["root"], "02", num_examples=0)
    assert matches[0].map_index == ev.result.retrieved[7, 0]
    with pytest.raises(ModelMismatchError, match="built with model"):
        Localizer.open(map_dir, checkpoint=world["other_run"]).localize([image])


def test_cli_evaluate_map_localize(world: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "evaluate",
            str(world["run"]),
            "--data-root",
            str(world["root"]),
            "--sequence",
            "03",
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Recall" in res.output or "R@1" in res.output
    assert (tmp_path / "ev" / "metrics.json").is_file()
    map_dir = tmp_path / "m"
    res = runner.invoke(
        app,
        [
            "map",
            "build",
            str(world["run"]),
            "--data-root",
            str(world["root"]),
            "--sequence",
            "03",
            "--out",
            str(map_dir),
        ],
    )
    assert res.exit_code == 0, res.output
    image = world["root"] / "sequences" / "03" / "image_2" / "000003.png"
    res = runner.invoke(app, ["localize", str(map_dir), str(image), "--json", "-k", "2"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert len(payload[0]["matches"]) == 2
    assert set(payload[0]["matches"][0]) >= {"x", "y", "score", "pose", "frame"}
    res = runner.invoke(app, ["localize", str(map_dir), str(image), "--checkpoint", str(world["other_run"])])
    assert res.exit_code == 1
    assert "built with model" in res.output


def test_evaluate_with_sequence_matching_adds_rows_files_and_report(
    world: dict[str, Path], tmp_path: Path
) -> None:
    single = evaluate(world["run"], world["root"], "02", num_examples=0, out_dir=tmp_path / "single")
    out = evaluate(
        world["run"], world["root"], "02", num_examples=0, out_dir=tmp_path / "seq", seq_len=5, odometry=True
    )
    assert single.sequence_result is None
    seq = out.sequence_result
    assert seq is not None
    # The single-image figures are unchanged by asking for sequences too.
    assert np.array_equal(out.result.retrieved, single.result.retrieved)
    assert seq.num_queries == 40 and seq.main.num_counted == out.result.main.num_counted
    info = json.loads((out.out_dir / "sequence_metrics.json").read_text())["info"]["sequence_matching"]
    assert info["seq_len"] == 5 and info["odometry"] is True
    assert 3.0 <= info["window_m"] <= 5.0  # 4 steps of 1 m along the corridor
    page = (out.out_dir / "report" / "index.html").read_text()
    assert "Trajectory, sequence matching" in page and "sequence of 5 images, odometry" in page
    assert (out.out_dir / "report" / "trajectory_sequence.png").is_file()


def test_cli_evaluate_seq_len_and_localize_sequence(world: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["evaluate", str(world["run"]), "--data-root", str(world["root"]), "--sequence", "03"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "ev"), "--seq-len", "4"])
    assert res.exit_code == 0, res.output
    assert "single" in res.output and "seq L=4" in res.output
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "ev2"), "--odometry"])
    assert res.exit_code == 1 and "--seq-len" in res.output

    map_dir = tmp_path / "m"
    build_map(world["run"], world["root"], ["03"], map_dir)
    images = [world["root"] / "sequences" / "03" / "image_2" / f"{i:06d}.png" for i in range(10, 16)]
    loc = Localizer.open(map_dir)
    result = loc.localize_sequence(images, k=3, travelled_m=[1.0] * 5)
    assert [m.rank for m in result.matches] == [1, 2, 3]
    assert len(result.path) == 6
    assert result.path[-1] is not None and result.path[-1].map_index == result.matches[0].map_index
    with pytest.raises(ConfigError, match="6 images need 5 travelled distances"):
        loc.localize_sequence(images, travelled_m=[1.0, 1.0])

    cmd = ["localize", str(map_dir), *map(str, images), "--sequence", "--json", "-k", "2"]
    res = runner.invoke(app, [*cmd, "--travelled", "1,1,1,1,1"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert payload["image"] == str(images[-1]) and len(payload["matches"]) == 2
    assert len(payload["path"]) == 6 and {"x", "y", "frame"} <= set(payload["path"][-1])
    res = runner.invoke(app, [*cmd, "--travelled", "1,x"])
    assert res.exit_code == 1 and "--travelled" in res.output
    res = runner.invoke(app, ["localize", str(map_dir), str(images[0]), "--travelled", "1"])
    assert res.exit_code == 1 and "--sequence" in res.output
