"""Evaluation protocols, embeddings kept in the run, reports, maps and localization on a toy world."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from corridor_world import write_corridors
from tiny_runs import train_on_00, train_tiny
from typer.testing import CliRunner

from liploc.cli import app
from liploc.errors import ConfigError, DataError, ModelMismatchError
from liploc.evaluation.evaluate import EvaluationSettings, evaluate
from liploc.localization.localize import Localizer, build_map


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = write_corridors(
        tmp_path_factory.mktemp("corridor"), ("00", 64, 1), ("01", 24, 2), ("02", 40, 3), ("03", 40, 4)
    )
    runs = tmp_path_factory.mktemp("runs")
    return {
        "root": root,
        "run": train_on_00(root, runs / "a", seed=0, steps=6, batch_size=16),
        "other_run": train_on_00(root, runs / "b", seed=1, steps=2, batch_size=16),
    }


def test_same_sequence_writes_metrics_report_and_embeddings(world: dict[str, Path]) -> None:
    out = evaluate(
        world["run"], world["root"], EvaluationSettings("02", protocol="same-sequence", num_examples=2)
    )
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
    again = evaluate(
        world["run"], world["root"], EvaluationSettings("02", thresholds_m=[5.0], num_examples=0)
    )
    np.testing.assert_array_equal(again.result.retrieved, out.result.retrieved)
    assert again.result.main.threshold_m == 5.0
    assert len(list((world["run"] / "embeddings").rglob("*.npy"))) == 2


def test_cross_drive_uses_the_other_drive_as_database(world: dict[str, Path]) -> None:
    # KITTI odometry layout: every sequence starts at the identity in its own frame, so comparing
    # positions of 02 and 03 means nothing and is refused, naming both and why.
    with pytest.raises(ConfigError, match=r"sequences 02 and 03 .*different world frames") as refused:
        evaluate(
            world["run"],
            world["root"],
            EvaluationSettings("02", protocol="cross-drive", map_sequence="03", num_examples=0),
        )
    assert "02 (own frame) vs 03 (own frame)" in str(refused.value)
    assert not (world["run"] / "eval" / "02-on-03").exists()  # nothing written for a refused run
    # Written by `liploc synth --pose-frame town`, the same files are one world: allowed.
    manifest = world["root"] / "synth.json"
    manifest.write_text('{"pose_frame": "town"}')
    try:
        out = evaluate(
            world["run"],
            world["root"],
            EvaluationSettings("02", protocol="cross-drive", map_sequence="03", num_examples=0),
        )
    finally:
        manifest.unlink()
    assert out.result.db_size == 40
    assert out.result.info["map_sequence"] == "03"
    assert out.result.info["own_scan_in_database"] is False
    with pytest.raises(ConfigError, match="map-sequence"):
        evaluate(world["run"], world["root"], EvaluationSettings("02", protocol="cross-drive"))
    with pytest.raises(ConfigError, match="exclude-self is for same-sequence"):
        evaluate(world["run"], world["root"], EvaluationSettings("02", protocol="revisit", exclude_self=True))


def test_evaluation_on_training_sequences_is_refused(world: dict[str, Path]) -> None:
    # The run trained on 00 and validated on 01.
    with pytest.raises(ConfigError, match=r"trained or validated on .*00 \(the run used train 00\)"):
        evaluate(world["run"], world["root"], EvaluationSettings("00", num_examples=0))
    with pytest.raises(ConfigError, match=r"01\[5:\] \(the run used val 01\)"):
        evaluate(world["run"], world["root"], EvaluationSettings("01[5:]", num_examples=0))
    out = evaluate(
        world["run"], world["root"], EvaluationSettings("01[5:]", num_examples=0, allow_training_data=True)
    )
    assert out.result.num_queries == 19  # frames 5-23 of the 24
    assert out.result.info["evaluated_on_training_data"] == ["01[5:] (the run used val 01)"]


def test_revisit_excludes_the_same_time_scans(world: dict[str, Path]) -> None:
    # The corridor never comes back: with a 30 s window (300 frames at 10 Hz) nothing is left to find.
    out = evaluate(world["run"], world["root"], EvaluationSettings("02", protocol="revisit", num_examples=0))
    assert out.result.main.num_counted == 0
    assert out.result.main.num_without_positive == 40
    # A 1.05 s window leaves scans 11+ frames away: positives within 20 m exist again.
    short = evaluate(
        world["run"],
        world["root"],
        EvaluationSettings("02", protocol="revisit", revisit_window_s=1.05, num_examples=0),
    )
    assert short.result.main.num_counted == 40
    assert np.all(np.abs(short.result.retrieved[:, 0] - np.arange(40)) > 10)


def test_unknown_sequence_and_protocol(world: dict[str, Path]) -> None:
    with pytest.raises(DataError, match="no sequence '42'"):
        evaluate(world["run"], world["root"], EvaluationSettings("42"))
    with pytest.raises(ConfigError, match="unknown protocol"):
        evaluate(world["run"], world["root"], EvaluationSettings("02", protocol="nearest"))


def test_map_build_localize_and_refuse_other_model(world: dict[str, Path], tmp_path: Path) -> None:
    map_dir = tmp_path / "map02"
    lidar_map = build_map(
        world["run"], world["root"], ["2"], map_dir, onnx=False
    )  # typed as "2": KITTI's "02"
    assert len(lidar_map) == 40
    assert (map_dir / "model" / "model.safetensors").is_file()
    image = world["root"] / "sequences" / "02" / "image_2" / "000007.png"
    loc = Localizer.open(map_dir)
    matches = loc.localize([image], k=3)[0]
    assert [m.rank for m in matches] == [1, 2, 3]
    assert matches[0].sequence == "02"
    assert matches[0].score >= matches[1].score >= matches[2].score
    assert matches[0].pose.shape == (4, 4)
    # The Python API agrees with the evaluation's retrieval for the same image.
    ev = evaluate(world["run"], world["root"], EvaluationSettings("02", num_examples=0))
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
    assert "same-sequence, 20 m, own scan in database" in " ".join(res.output.split())
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


# --- the literature's protocols on hand-made embeddings with known positions ----------------------
# Every sequence is a straight drive, 1 m per frame (positions = frame numbers in metres). The
# embeddings are made by hand so that each query retrieves a chosen list of scans, best first, by
# offset in metres from the query (0 = its own scan). The class of a query is its frame number % 4:
RANKED_OFFSETS = {
    0: [0, 25, 15, 5, 29, 22],  # own scan first
    1: [5, 0, 25, 15, 29, 22],  # a scan 5 m away first, own scan second
    2: [15, 25, 0, 5, 29, 22],  # 15 m first (right at 20 m only), own scan third
    3: [25, 15, 29, 27, 23, 22],  # nothing within 10 m in its top 5; 15 m second
}
# Expected, one quarter of the queries per class (every sequence has a multiple of 4 frames):
#   lip-loc (20 m, own scan in):   R@1 = classes 0, 1, 2 = 75 %;  R@5 = all = 100 %
#   kitti-a (10 m, own scan in):   R@1 = classes 0, 1    = 50 %;  R@5 = 0, 1, 2 = 75 %
#   kitti-b (10 m, own removed):   R@1 = class 1         = 25 %;  R@5 = 0, 1, 2 = 75 %
#   kitti-b keeping the own scan:  R@1 = 50 %; R@5 = 75 %
# With at most 199 scans per sequence, R@1% uses K = 1 (R@1% = R@1).
PROTOCOL_SEQUENCES = ("01", "02", "05", "06", "07", "08", "09")


def _target(index: int, offset: int, indices: set[int]) -> int:
    return index + offset if index + offset in indices else index - offset


def _hand_made_embeddings(model, frames, config, modality, **kwargs) -> np.ndarray:
    """Scans: one-hot; images: weights 6..1 on the scans of RANKED_OFFSETS (same-sequence only)."""
    position = {f.index: k for k, f in enumerate(frames)}
    out = np.zeros((len(frames), len(frames)), dtype=np.float32)
    for k, f in enumerate(frames):
        if modality == "lidar":
            out[k, k] = 1.0
            continue
        for weight, offset in zip(range(6, 0, -1), RANKED_OFFSETS[f.index % 4], strict=True):
            out[k, position[_target(f.index, offset, set(position))]] = weight
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _hand_made_sets(cache, model, sets, config, **kwargs) -> list[np.ndarray]:
    """Evaluation's embedding step (nothing kept) with the hand-made embeddings."""
    return [_hand_made_embeddings(model, frames, config, modality) for frames, modality in sets]


@pytest.fixture(scope="module")
def protocol_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """KITTI odometry layout with the test sequences of every preset; a run trained on 01 only."""
    from conftest import write_kitti_odometry

    root = tmp_path_factory.mktemp("protocols")
    # 00: frames 0-59 and 3000-3059 (kitti-a tests on 00[3000:], trains on 00[0:3000]).
    write_kitti_odometry(root, "00", n_frames=3060, skip_scans=range(60, 3000), skip_images=range(60, 3000))
    for name in PROTOCOL_SEQUENCES:
        write_kitti_odometry(root, name, n_frames=60 if name != "01" else 24)
    run = train_tiny(
        tmp_path_factory.mktemp("protocol_run") / "run",
        f"{{root: '{root}', train: ['01'], val: [], test: ['02', '00[3000:]']}}",
        *("data.val_fraction=0", "train.max_steps=1", "train.batch_size=8", "eval.thresholds_m=[10.0, 20.0]"),
    )
    return {"root": root, "run": run}


@pytest.fixture
def hand_made(monkeypatch: pytest.MonkeyPatch) -> None:
    import liploc.evaluation.evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "embed_with_cache", _hand_made_sets)


@pytest.mark.parametrize(
    ("preset", "sequences", "r1", "r5", "own_scan"),
    [
        ("lip-loc", ["08", "09"], 0.75, 1.0, True),
        ("kitti-a", ["00[3000:]", "02", "05", "06", "08"], 0.5, 0.75, True),
        ("kitti-b", ["00", "02", "05", "06", "07", "08"], 0.25, 0.75, False),
    ],
)
def test_preset_recall_on_hand_made_embeddings(
    protocol_world: dict[str, Path],
    hand_made: None,
    preset: str,
    sequences: list[str],
    r1: float,
    r5: float,
    own_scan: bool,
) -> None:
    from liploc.evaluation.protocols import evaluate_protocol

    report = evaluate_protocol(
        protocol_world["run"], protocol_world["root"], preset, out_dir=protocol_world["run"] / preset
    )
    assert [row.sequence for row in report.rows] == sequences
    for row in report.rows:
        assert (row.recall[1], row.recall[5], row.recall_one_percent) == (r1, r5, r1), row.sequence
        assert row.queries == (60 if row.sequence != "00" else 120) and row.without_positive == 0
    assert report.mean()["R@1"] == pytest.approx(r1) and report.mean()["R@5"] == pytest.approx(r5)
    saved = json.loads((protocol_world["run"] / preset / "protocol.json").read_text())
    assert saved["protocol"] == preset and saved["own_scan_in_database"] is own_scan
    assert saved["threshold_m"] == (20.0 if preset == "lip-loc" else 10.0)
    assert saved["mean"]["R@1"] == pytest.approx(r1)
    per_sequence = json.loads(Path(saved["rows"][0]["metrics_file"]).read_text())
    assert per_sequence["info"]["own_scan_in_database"] is own_scan


def test_exclude_self_and_thresholds_change_the_recall(
    protocol_world: dict[str, Path], hand_made: None
) -> None:
    def r1_r5(threshold: float, exclude_self: bool, sequence: str = "05") -> tuple[float, float]:
        out = evaluate(
            protocol_world["run"], protocol_world["root"], EvaluationSettings(
                sequence, thresholds_m=[threshold], ks=[1, 5], exclude_self=exclude_self, num_examples=0,
            ),
        )  # fmt: skip
        return out.result.main.recall[1], out.result.main.recall[5]

    assert r1_r5(10.0, exclude_self=False) == (0.5, 0.75)
    assert r1_r5(10.0, exclude_self=True) == (0.25, 0.75)
    assert r1_r5(20.0, exclude_self=False) == (0.75, 1.0)
    # Own scan removed at 20 m: class 0 retrieves 25 m first (miss), class 2 15 m (hit).
    assert r1_r5(20.0, exclude_self=True) == (0.5, 1.0)
    # A frame range evaluates those frames only: 00[3000:] is 60 queries, 00 is 120.
    out = evaluate(
        protocol_world["run"],
        protocol_world["root"],
        EvaluationSettings("00[3000:]", thresholds_m=[10.0], num_examples=0),
    )
    assert out.result.num_queries == 60 and out.result.main.recall[1] == 0.5


def test_preset_refuses_the_runs_training_sequences(protocol_world: dict[str, Path]) -> None:
    from liploc.config import Config
    from liploc.datasets.sequence_range import parse_ranges
    from liploc.evaluation.protocols import PRESETS
    from liploc.evaluation.training_overlap import refuse_training_data

    kitti_a = Config()
    kitti_a.data.datasets[0].train = ["00[0:3000]"]
    assert refuse_training_data(kitti_a, parse_ranges(PRESETS["kitti-a"].test)) == []
    with pytest.raises(ConfigError, match=r"00 \(the run used train 00\[0:3000\]\)"):
        refuse_training_data(kitti_a, parse_ranges(PRESETS["kitti-b"].test))
    lip_loc = Config()
    lip_loc.data.datasets[0].train = list(PRESETS["lip-loc"].train)
    lip_loc.data.datasets[0].val = ["08"]
    with pytest.raises(ConfigError, match=r"08 \(the run used val 08\)") as refused:
        refuse_training_data(lip_loc, parse_ranges(PRESETS["kitti-b"].test))
    assert "00 (the run used train 00)" in str(refused.value) and "07 (the run used train 07)" in str(
        refused.value
    )
    assert "--allow-training-data" in str(refused.value)


def test_without_preset_the_configs_test_split_is_evaluated(
    protocol_world: dict[str, Path], hand_made: None
) -> None:
    from liploc.evaluation.protocols import evaluate_protocol

    # The run's config: test ['02', '00[3000:]'], eval.protocol same-sequence, thresholds [10, 20].
    report = evaluate_protocol(
        protocol_world["run"], protocol_world["root"], out_dir=protocol_world["run"] / "cfg"
    )
    assert [(r.sequence, r.queries) for r in report.rows] == [("02", 60), ("00[3000:]", 60)]
    assert [r.recall[1] for r in report.rows] == [0.5, 0.5]  # 10 m, own scan in the database
    assert report.label == "config test split: same-sequence, 10 m, own scan in database"
    saved = json.loads((protocol_world["run"] / "cfg" / "protocol.json").read_text())
    assert saved["protocol"] == "config-test" and saved["threshold_m"] == 10.0


def test_cli_evaluate_json_and_sequence_names_as_typed(world: dict[str, Path], tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app,
        [
            *["evaluate", str(world["run"]), "--data-root", str(world["root"]), "--sequence", "2"],
            *["--out", str(tmp_path / "ev"), "--json", "--threshold", "5"],
        ],
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)  # the JSON alone on stdout; the table went to stderr
    assert payload["info"]["sequence"] == "02"  # "2" means KITTI's "02"
    assert payload["thresholds"][0]["threshold_m"] == 5.0
    assert set(payload["thresholds"][0]) >= {"recall", "chance", "recall_at_1_near_chance"}
    assert Path(payload["files"]["metrics"]).is_file()


def test_failed_or_interrupted_evaluation_leaves_no_folder(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import liploc.evaluation.evaluate as evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "write_report", interrupted)
    out = tmp_path / "runs" / "eval" / "02"
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(world["run"]),
            "--data-root",
            str(world["root"]),
            "--sequence",
            "02",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 130, res.output
    assert "interrupted: evaluation stopped; nothing was written" in res.output
    assert not (tmp_path / "runs").exists()  # neither the folder nor the parents it made
    with pytest.raises(DataError, match="no sequence '42'"):
        evaluate(world["run"], world["root"], EvaluationSettings("42", out_dir=tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def test_evaluate_with_sequence_matching_adds_rows_files_and_report(
    world: dict[str, Path], tmp_path: Path
) -> None:
    single = evaluate(
        world["run"], world["root"], EvaluationSettings("02", num_examples=0, out_dir=tmp_path / "single")
    )
    out = evaluate(
        world["run"],
        world["root"],
        EvaluationSettings("02", num_examples=0, out_dir=tmp_path / "seq", seq_len=5, odometry=True),
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
    build_map(world["run"], world["root"], ["03"], map_dir, onnx=False)
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
