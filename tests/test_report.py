"""Evaluation report: the PNGs are valid images, the HTML page holds the figures and the table."""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liploc.console import table_lines
from liploc.evaluation.metrics import score_retrieval
from liploc.evaluation.report import RetrievalExample, example_rank_name, select_examples, write_report


def loop_result():
    """A 200-scan loop; queries are the scans, every third retrieval is 40 m off."""
    angle = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    xy = 100 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    ids = np.arange(200)
    offset = np.where(ids % 3 == 0, 13, 1)  # 13 scans ~ 41 m away on the circle
    retrieved = (ids[:, None] + offset[:, None] + np.arange(25)[None, :]) % 200
    scores = np.linspace(0.9, 0.5, 25)[None, :].repeat(200, axis=0)
    result = score_retrieval(retrieved, scores, xy, xy, thresholds_m=[20.0, 10.0], ks=[1, 5, 10])
    result.info["protocol"] = "same-sequence"
    return result, xy


def test_report_writes_valid_pngs_and_html(tmp_path: Path) -> None:
    result, xy = loop_result()
    rng = np.random.default_rng(0)
    picks = select_examples(result, count=4)
    examples = [
        RetrievalExample(
            q,
            rng.integers(0, 255, size=(120, 400, 3), dtype=np.uint8),
            [rng.integers(0, 255, size=(32, 300), dtype=np.uint8) for _ in range(3)],
            label=f"00/{q:06d}",
        )
        for q in picks
    ]
    files = write_report(
        tmp_path / "report", result, xy, xy, examples, run_info={"checkpoint": "<runs/a & b>"}
    )
    assert set(files) == {"trajectory", "recall_curve", "examples", "html"}
    for name in ("trajectory", "recall_curve", "examples"):
        with Image.open(files[name]) as image:
            assert image.format == "PNG"
            image.load()  # decodes the whole file
            assert image.width > 300 and image.height > 200
    page = files["html"].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for name in ("trajectory.png", "recall_curve.png", "examples.png"):
        assert f"src='{name}'" in page
    main = result.main
    assert f"{100 * main.recall[1]:.1f}%" in page
    assert f"{100 * main.chance[1]:.1f}%" in page
    assert "same-sequence" in page
    assert "&lt;runs/a &amp; b&gt;" in page and "<runs/a" not in page  # escaped
    assert sorted(p.name for p in files["html"].parent.iterdir()) == sorted(p.name for p in files.values())


def test_report_without_examples_and_square_range_images(tmp_path: Path) -> None:
    result, xy = loop_result()
    files = write_report(tmp_path, result, xy, xy)
    assert "examples" not in files and "examples.png" not in files["html"].read_text()
    square = [RetrievalExample(5, np.zeros((60, 200, 3), np.uint8), [np.zeros((224, 224, 3), np.uint8)] * 2)]
    files = write_report(tmp_path, result, xy, xy, square)
    with Image.open(files["examples"]) as image:
        assert image.format == "PNG"


def test_select_examples_spans_best_median_and_worst() -> None:
    result, _ = loop_result()
    picks = select_examples(result, count=3)
    counted = np.flatnonzero(result.main.counted)
    errors = result.top1_error_m[counted]
    assert len(picks) == 3 == len(set(picks))
    assert result.top1_error_m[picks[0]] == errors.min()  # best
    assert result.top1_error_m[picks[-1]] == errors.max()  # worst
    assert result.top1_error_m[picks[1]] == pytest.approx(np.sort(errors)[round((len(errors) - 1) / 2)])
    assert [example_rank_name(i, 3) for i in range(3)] == ["best", "median", "worst"]


def test_report_answers_how_good_first_and_flags_chance(tmp_path: Path) -> None:
    result, xy = loop_result()
    info = {
        "protocol": "cross-drive",
        "sequence": "28",
        "map_sequence": "29",
        "trained_on": "sequences 00, 01",
    }
    page = write_report(tmp_path, result, xy, xy, run_info=info)["html"].read_text(encoding="utf-8")
    first = page.split("<p class='headline'>", 1)[1].split("</p>", 1)[0]
    assert first.startswith(f"R@1 {100 * result.main.recall[1]:.1f}% within")
    assert (
        "chance" in first and "map of another drive, 29" in first and "Trained on sequences 00, 01" in first
    )
    # The HTML table holds the very figures of the command line's table.
    for row in table_lines(result.table(title=None))[1:]:
        for value in row.split("  "):
            if value.strip():
                assert html.escape(value.strip()) in page
    noise = dataclasses.replace(result)
    noise.thresholds = [
        dataclasses.replace(t, recall={k: t.chance[1] for k in t.recall}) for t in result.thresholds
    ]
    page = write_report(tmp_path / "noise", noise, xy, xy, run_info=info)["html"].read_text(encoding="utf-8")
    assert "within noise of chance" in page.split("<h2>", 1)[0]


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    result, xy = loop_result()
    with pytest.raises(ValueError, match="query_xy"):
        write_report(tmp_path, result, xy[:10], xy)
    bad = [RetrievalExample(0, np.zeros((10, 10, 3), np.uint8), [np.zeros((2, 3, 5))])]
    with pytest.raises(ValueError, match="cannot show an image"):
        write_report(tmp_path, result, xy, xy, bad)
    with pytest.raises(ValueError, match="outside"):
        write_report(tmp_path, result, xy, xy, [RetrievalExample(999, np.zeros((10, 10, 3), np.uint8), [])])


def test_trajectory_title_names_the_method_and_the_legend_every_group() -> None:
    from liploc.evaluation.report import plot_trajectory

    result, xy = loop_result()
    fig = plot_trajectory(result, xy, xy, label="sequence of 7 images")
    title = fig.axes[0].get_title()
    assert title.startswith("sequence of 7 images: top-1 success within 20 m"), title
    legend = " ".join(t.get_text() for legend in fig.legends for t in legend.get_texts())
    assert "top-1 within 20 m" in legend and "top-1 wrong" in legend and "start" in legend
