"""benchmarks/accuracy.py: its figures, its table and JSON, on a very small town (issue 21)."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from liploc.datasets import Frame
from liploc.evaluation.metrics import score_retrieval
from liploc.training.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_benchmark() -> Any:
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", BENCHMARKS / "accuracy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


acc = _load_benchmark()


def test_wilson_interval_by_hand() -> None:
    # 8 of 10, z = 1.96: centre (0.8 + z^2/20) / (1 + z^2/10), half-width
    # z sqrt(0.8 * 0.2 / 10 + z^2 / 400) / (1 + z^2/10): the textbook (0.4902, 0.9433).
    z = acc.Z_95
    denom = 1 + z * z / 10
    centre = (0.8 + z * z / 20) / denom
    half = z * math.sqrt(0.016 + z * z / 400) / denom
    lo, hi = acc.wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert acc.wilson_interval(0, 20)[0] == 0.0 and acc.wilson_interval(20, 20)[1] == 1.0
    assert all(math.isnan(v) for v in acc.wilson_interval(0, 0))


def test_summary_pools_hits_and_spreads_seeds() -> None:
    seed0 = acc.Outcomes(np.array([True, True, False, False]), np.full(4, 0.1))
    seed1 = acc.Outcomes(np.array([True, True, True, False, True, True]), np.full(6, 0.2))
    fig = acc.summarize([seed0, seed1])
    assert fig["recall_at_1_per_seed"] == [0.5, pytest.approx(5 / 6)]
    assert fig["recall_at_1_mean"] == pytest.approx((0.5 + 5 / 6) / 2)
    assert fig["recall_at_1_std"] == pytest.approx(np.std([0.5, 5 / 6], ddof=1))
    assert (fig["hits"], fig["queries"], fig["queries_per_seed"]) == (7, 10, [4, 6])
    assert fig["wilson95"] == list(acc.wilson_interval(7, 10))
    assert fig["chance_at_1"] == pytest.approx((4 * 0.1 + 6 * 0.2) / 10)
    assert acc.summarize([seed0])["recall_at_1_std"] is None  # one seed: no spread


def _frame(x: float, y: float, yaw: float, index: int) -> Frame:
    pose = np.eye(4)
    pose[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    pose[:2, 3] = (x, y)
    return Frame("q", index, Path("i.png"), Path("s.bin"), pose, None)  # type: ignore[arg-type]


def test_lane_split_by_sideways_offset() -> None:
    # The map drives along +x at y = 0; a query 3 m to its left, one 3.2 m to its right (the
    # opposite direction's lane), one 1 m off (same lane, wandering): two are one lane over.
    database = [_frame(3.0 * i, 0.0, 0.0, i) for i in range(10)]
    queries = [_frame(6.1, 3.0, 0.0, 0), _frame(12.0, -3.2, math.pi, 1), _frame(15.2, 1.0, 0.0, 2)]
    offsets = acc.sideways_offsets(queries, database)
    assert offsets == pytest.approx([3.0, -3.2, 1.0])
    over = np.abs(offsets) > acc.OTHER_LANE_M
    assert over.tolist() == [True, True, False]


def test_outcomes_keep_the_counted_queries_of_a_subset() -> None:
    # 4 map scans 10 m apart on a line; 4 queries, the last with no scan within 5 m (not counted).
    db_xy = np.array([[0.0, 0], [10, 0], [20, 0], [30, 0]])
    q_xy = np.array([[0.0, 1], [10, 3], [21, 0], [45, 0]])
    retrieved = np.array([[0, 1, 2, 3], [2, 1, 0, 3], [2, 0, 1, 3], [3, 0, 1, 2]])
    result = score_retrieval(retrieved, None, q_xy, db_xy, [5.0], [1], curve_k=4)
    every = acc.outcomes(result, 5.0, own_scan_removed=False)
    assert every.hits.tolist() == [True, False, True] and every.chance == pytest.approx([0.25] * 3)
    subset = acc.outcomes(result, 5.0, own_scan_removed=False, keep=[False, True, True, True])
    assert subset.hits.tolist() == [False, True]
    own_out = acc.outcomes(result, 5.0, own_scan_removed=True)  # 3 scans left to pick from
    assert own_out.chance == pytest.approx([1 / 3] * 3)


def _small_options(tmp_path: Path, shared: Path | None) -> Any:
    return acc.BenchOptions(
        out=tmp_path / "bench",
        drives=6,
        held_out_drives=4,
        frames=10,
        epochs=1,
        max_steps=2,
        seeds=1,
        ablation_seeds=1,
        latency_repeats=2,
        threads=1,
        kitti_root=shared,
        blocks=(4, 2),
        synth_extra={"image_scale": 0.1, "lidar_columns": 256, "shadows": False},
        # 2 training drives of 10 frames: no gap between training and validation frames.
        extra_overrides=(
            "data.image_size=[32, 32]",
            "data.num_workers=0",
            "train.batch_size=4",
            "data.val_gap_m=0",
        ),
    )


def test_benchmark_table_and_json_report_a_failing_method(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = acc.KITTI_POSED if acc.KITTI_POSED.is_dir() else None
    # The HTML reports' plots are most of an evaluation's time here (about 1 s each, 26 of them):
    # the benchmark reads the figures, not the reports (raising=False: the name may move).
    import liploc.evaluation.evaluate as evaluate_module

    def no_report(out: Path, *args: Any, **kwargs: Any) -> dict[str, Path]:
        return {"html": out / "index.html"}

    monkeypatch.setattr(evaluate_module, "write_report", no_report, raising=False)

    def train_fn(config: Any, run_dir: Path) -> Any:
        if config.name.startswith("accuracy-crashes"):
            raise RuntimeError("the towers do not fit")
        return train(config, run_dir, progress=False)

    methods = {
        "liploc": acc.METHODS["liploc"],
        "lip-loc": acc.METHODS["lip-loc"],
        "bridge": acc.METHODS["bridge"],
        "invalid": acc.Method(acc.TINY, ("model.embed_dim=-1",)),  # does not validate
        "crashes": acc.Method(acc.TINY, (), "ablation"),
        "unwritten": acc.Method(None, ()),  # named, its config not written
    }
    opts = _small_options(tmp_path, shared)
    payload = acc.run_benchmark(opts, methods, Console(file=io.StringIO()), train_fn)
    payload = json.loads(json.dumps(payload))  # JSON-ready throughout

    res = payload["methods"]
    for name in ("invalid", "unwritten"):
        assert res[name]["available"] is False and res[name]["why"].startswith("not available")
    assert "embed_dim" in res["invalid"]["why"]
    assert res["crashes"]["available"] is False and "the towers do not fit" in res["crashes"]["why"]
    expected = {f"{r.key}/{i}" for r in acc.ROWS for i in acc.INPUTS}
    if shared is not None:
        expected.add(acc.ZERO_SHOT.key)
    for name in ("liploc", "lip-loc"):
        m = res[name]
        assert m["available"] and m["seeds"] == [0] and m["train_steps"] == [2]
        assert m["localize_latency"]["median_ms"] > 0 and m["localize_latency"]["map_scans"] == 10
        assert m["localize_latency"]["onnx_median_ms"] > 0  # every method's map has its export
        assert set(m["figures"]) == expected
        for fig in m["figures"].values():
            assert {"protocol", "threshold_m", "own_scan_in_database", "input"} <= set(fig)
            lo, hi = fig["wilson95"]
            assert lo <= fig["recall_at_1_mean"] <= hi and 0 < fig["chance_at_1"] <= 1
    # The bridge's depth on the held-out drives' 40 frames against their scans; none for liploc.
    assert res["bridge"]["available"] and res["liploc"]["held_out_depth"] is None
    depth = res["bridge"]["held_out_depth"]
    assert depth["per_seed"][0]["frames"] == 40 and depth["per_seed"][0]["pixels"] > 40 * 100
    assert 0 < depth["abs_rel_mean"] < 10 and 0 < depth["rmse_m_mean"] < 80 and 0 <= depth["delta1_mean"] <= 1
    figs = res["liploc"]["figures"]
    assert (figs["paper/single"]["threshold_m"], figs["paper/single"]["own_scan_in_database"]) == (20.0, True)
    assert (
        figs["kitti-b-like/single"]["threshold_m"],
        figs["kitti-b-like/window"]["own_scan_in_database"],
    ) == (
        10.0,
        False,
    )
    assert figs["cross-drive/window"]["seq_len"] == round(20 / 3)
    # 4 held-out drives of 10 frames: 40 queries a protocol; cross-drive both ways over each pair.
    assert figs["paper/single"]["queries"] == 40
    # (in this small town every partner drives one lane over or the other way: all of them)
    assert 0 < figs["cross-drive-lane-over/single"]["queries"] <= figs["cross-drive/single"]["queries"] <= 40
    if shared is not None:
        assert figs[acc.ZERO_SHOT.key]["queries"] == 24

    console = Console(width=200, record=True, file=io.StringIO())
    console.print(acc.build_table(payload))
    text = console.export_text()
    assert "not available" in text and "failed" in text
    assert "paper (LIP-Loc)" in text and "one lane over" in text and "localize latency" in text
    assert "depth AbsRel / RMSE" in text and "no depth head" in text


def test_every_method_of_the_benchmark_has_a_config_that_builds() -> None:
    """A method whose config no longer validates (a renamed key, an unknown encoder, missing
    packaged weights) would only fail an hour into the full run."""
    for name, method in acc.METHODS.items():
        config = acc.method_config(name, method)
        assert config.model.embed_dim > 0, name
    s2r = acc.method_config("synth-to-real", acc.METHODS["synth-to-real"])
    assert s2r.model.image_weights == "efficientnet-lite0" and s2r.data.photometric.p > 0
