"""Evaluation report: trajectory and recall plots, retrieval examples, and an HTML page tying them.

Plots are drawn with matplotlib's Agg canvas (no screen, no pyplot global state). Every file is
written atomically. The caller supplies the example images as arrays (see
:class:`RetrievalExample`); :func:`select_examples` says which queries are worth showing.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from liploc.atomic import atomic_write, atomic_write_text
from liploc.retrieval.metrics import RetrievalResult, format_percent

SUCCESS_COLOR = "#1a9850"
FAILURE_COLOR = "#d73027"
UNCOUNTED_COLOR = "#4575b4"
DATABASE_COLOR = "#b0b0b0"
_DPI = 110


@dataclass(frozen=True, eq=False)
class RetrievalExample:
    """One query to show beside its best retrieved range images.

    Attributes:
        query_index: row of the query in the :class:`RetrievalResult`.
        query_image: (H, W, 3) uint8 camera image of the query.
        retrieved_images: range images of ``result.retrieved[query_index, :len(retrieved_images)]``
            in rank order, each (h, w) or (h, w, 3); uint8 is shown on a fixed 0..255 grey scale.
        label: caption of the query (e.g. its frame id); default ``query <index>``.
    """

    query_index: int
    query_image: np.ndarray
    retrieved_images: Sequence[np.ndarray]
    label: str | None = None


def select_examples(result: RetrievalResult, count: int = 4) -> list[int]:
    """Query indices worth showing: about half successes and half failures at the main threshold.

    Deterministic: queries spread evenly along each group (so along the drive), counted queries only.
    """
    main = result.main
    counted = np.flatnonzero(main.counted)
    good = counted[main.success[counted]]
    bad = counted[~main.success[counted]]
    n_bad = min(len(bad), count // 2)
    n_good = min(len(good), count - n_bad)
    n_bad = min(len(bad), count - n_good)

    def spread(ids: np.ndarray, n: int) -> list[int]:
        if n <= 0:
            return []
        return [int(ids[i]) for i in np.linspace(0, len(ids) - 1, n).round().astype(int)]

    return sorted(spread(good, n_good) + spread(bad, n_bad))


def write_report(
    out_dir: str | Path,
    result: RetrievalResult,
    query_xy: np.ndarray,
    db_xy: np.ndarray,
    examples: Sequence[RetrievalExample] = (),
    run_info: Mapping[str, Any] | None = None,
    title: str = "LIP-Loc retrieval evaluation",
    sequence_result: RetrievalResult | None = None,
) -> dict[str, Path]:
    """Write the report's PNGs and ``index.html`` into ``out_dir``; return {name: path}.

    Args:
        out_dir: folder for the report (created).
        result: the evaluation to report.
        query_xy, db_xy: (Q, 2) and (N, 2) ground-plane positions used for the evaluation.
        examples: queries to show with their top retrieved range images (may be empty).
        run_info: extra key/value lines for the page (run folder, checkpoint, protocol...);
            ``result.info`` is shown too.
        title: page and figure title.
        sequence_result: the same queries localized by sequence matching: its recall rows and
            trajectory are shown beside the single-image ones.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    query_xy = np.asarray(query_xy, dtype=np.float64)
    db_xy = np.asarray(db_xy, dtype=np.float64)
    if query_xy.shape != (result.num_queries, 2) or db_xy.ndim != 2 or db_xy.shape[1:] != (2,):
        raise ValueError(
            f"expected query_xy ({result.num_queries}, 2) and db_xy (N, 2), "
            f"got {query_xy.shape} and {db_xy.shape}"
        )
    for ex in examples:  # refuse bad examples before writing anything
        _check_example(ex, result)
    written: dict[str, Path] = {}
    written["trajectory"] = _save(plot_trajectory(result, query_xy, db_xy), out_dir / "trajectory.png")
    if sequence_result is not None:
        fig = plot_trajectory(sequence_result, query_xy, db_xy, label=_sequence_label(sequence_result))
        written["trajectory_sequence"] = _save(fig, out_dir / "trajectory_sequence.png")
    written["recall_curve"] = _save(plot_recall_curve(result), out_dir / "recall_curve.png")
    if examples:
        written["examples"] = _save(
            plot_examples(result, query_xy, db_xy, examples), out_dir / "examples.png"
        )
    page = out_dir / "index.html"
    images = {k: p.name for k, p in written.items()}
    atomic_write_text(page, render_html(result, images, run_info, title, sequence_result=sequence_result))
    written["html"] = page
    return written


def _save(fig: Figure, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=_DPI))
    return path


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _sequence_label(result: RetrievalResult) -> str:
    seq = result.info.get("sequence_matching", {})
    odo = ", odometry" if seq.get("odometry") else ""
    return f"sequence of {seq.get('seq_len', '?')} images{odo}"


def plot_trajectory(
    result: RetrievalResult, query_xy: np.ndarray, db_xy: np.ndarray, label: str | None = None
) -> Figure:
    """Database positions in grey, queries green/red by top-1 success at the main threshold."""
    main = result.main
    span = np.ptp(np.vstack([query_xy, db_xy]), axis=0) if len(db_xy) else np.array([1.0, 1.0])
    aspect = float(np.clip((span[0] + 1) / (span[1] + 1), 0.6, 1.8))
    fig = _new_figure(6.4 * min(1.0, aspect) + 1.6, 6.4 / max(1.0, aspect) + 0.8)
    ax = fig.add_subplot()
    ax.scatter(db_xy[:, 0], db_xy[:, 1], s=14, c=DATABASE_COLOR, lw=0, label=f"database ({len(db_xy)})")
    groups = [
        (~main.counted, UNCOUNTED_COLOR, "no positive, not counted"),
        (main.counted & main.success, SUCCESS_COLOR, f"top-1 within {main.threshold_m:g} m"),
        (main.counted & ~main.success, FAILURE_COLOR, "top-1 wrong"),
    ]
    for mask, color, label in groups:  # failures drawn last so that they stay visible
        if mask.any():
            ax.scatter(*query_xy[mask].T, s=4, c=color, lw=0, label=f"{label} ({int(mask.sum())})")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.grid(alpha=0.3)
    recall_1 = format_percent(main.recall.get(1, math.nan))
    what = f"{label}: " if label else ""
    ax.set_title(f"{what}Queries by top-1 success at {main.threshold_m:g} m: R@1 = {recall_1}")
    ax.legend(loc="best", fontsize=8, markerscale=2.5, framealpha=0.85)
    return fig


def plot_recall_curve(result: RetrievalResult) -> Figure:
    """Recall@K for K = 1..curve_k, one line per threshold, chance level dashed."""
    fig = _new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    curve_k = len(result.main.recall_curve)
    ks = np.arange(1, curve_k + 1)
    for i, t in enumerate(result.thresholds):
        color = colors[i % len(colors)]
        ax.plot(ks, 100 * t.recall_curve, "-o", ms=3, color=color, label=f"{t.threshold_m:g} m")
        ax.plot(
            ks, 100 * t.chance_curve, "--", lw=1, color=color, alpha=0.7, label=f"chance, {t.threshold_m:g} m"
        )
    k1 = result.k_one_percent
    if k1 <= curve_k:
        ax.axvline(k1, color="grey", ls=":", lw=1)
        ax.annotate(
            f"1% of database (K={k1})",
            (k1, 2),
            xytext=(3, 0),
            textcoords="offset points",
            rotation=90,
            fontsize=8,
            color="grey",
            ha="left",
            va="bottom",
        )
    ax.set_xlim(0.5, curve_k + 0.5)
    ax.set_ylim(0, 100)
    ax.set_xlabel("K (retrieved LiDAR scans)")
    ax.set_ylabel("Recall@K (%)")
    ax.set_title(f"Recall@K over {result.main.num_counted} queries, database of {result.db_size}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    return fig


def plot_examples(
    result: RetrievalResult,
    query_xy: np.ndarray,
    db_xy: np.ndarray,
    examples: Sequence[RetrievalExample],
) -> Figure:
    """Each example query beside its retrieved range images, framed green (correct) or red."""
    main = result.main
    n_ret = max(len(e.retrieved_images) for e in examples)
    aspects = [im.shape[1] / im.shape[0] for e in examples for im in e.retrieved_images] or [1.0]
    stacked = float(np.median(aspects)) >= 2.0  # wide range crops stack beside the query image
    q_aspect = float(np.median([e.query_image.shape[1] / e.query_image.shape[0] for e in examples]))
    row_h = 2.2
    if stacked:
        r_aspect = float(np.median(aspects))
        width = row_h * q_aspect + row_h / max(n_ret, 1) * r_aspect + 0.3
    else:
        width = row_h * (q_aspect + n_ret) + 0.3
    fig = _new_figure(min(width, 16.0), row_h * len(examples) + 0.4)
    fig.suptitle(
        f"Queries and their top retrieved LiDAR range images (correct within {main.threshold_m:g} m)"
    )
    rows = fig.subfigures(len(examples), 1, squeeze=False)[:, 0]
    for sub, ex in zip(rows, examples, strict=True):
        _check_example(ex, result)
        if stacked:
            grid = sub.add_gridspec(max(n_ret, 1), 2, width_ratios=[q_aspect, r_aspect / max(n_ret, 1)])
            q_ax = sub.add_subplot(grid[:, 0])
            r_axes = [sub.add_subplot(grid[j, 1]) for j in range(len(ex.retrieved_images))]
        else:
            grid = sub.add_gridspec(1, 1 + n_ret, width_ratios=[q_aspect] + [1.0] * n_ret)
            q_ax = sub.add_subplot(grid[0, 0])
            r_axes = [sub.add_subplot(grid[0, 1 + j]) for j in range(len(ex.retrieved_images))]
        _show(q_ax, ex.query_image)
        q = ex.query_index
        q_ax.set_title(ex.label or f"query {q}", fontsize=9)
        for rank, (ax, image) in enumerate(zip(r_axes, ex.retrieved_images, strict=True), 1):
            _show(ax, image)
            if rank > result.retrieved.shape[1] or result.retrieved[q, rank - 1] < 0:
                continue
            db_i = int(result.retrieved[q, rank - 1])
            dist = float(np.hypot(*(db_xy[db_i] - query_xy[q])))
            ok = dist <= main.threshold_m
            color = SUCCESS_COLOR if ok else FAILURE_COLOR
            score = result.scores[q, rank - 1]
            score_text = "" if not np.isfinite(score) else f"  cos {score:.2f}"
            caption = f"#{rank}  scan {db_i}  {dist:.1f} m{score_text}"
            ax.set_title(caption, fontsize=8, color=color, loc="left" if stacked else "center", pad=3)
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(color)
                spine.set_linewidth(3)
    return fig


def _check_example(ex: RetrievalExample, result: RetrievalResult) -> None:
    if not 0 <= ex.query_index < result.num_queries:
        raise ValueError(f"example query_index {ex.query_index} is outside 0..{result.num_queries - 1}")
    for image in (ex.query_image, *ex.retrieved_images):
        shape = np.shape(image)
        if not (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))) or 0 in shape:
            raise ValueError(f"cannot show an image of shape {shape}; expected (h, w) or (h, w, 3)")


def _show(ax: Any, image: np.ndarray) -> None:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        vmin, vmax = (0, 255) if image.dtype == np.uint8 else (None, None)
        ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto")
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        ax.imshow(image, interpolation="antialiased", aspect="auto")
    else:
        raise ValueError(f"cannot show an image of shape {image.shape}; expected (h, w) or (h, w, 3)")
    ax.set_xticks([])
    ax.set_yticks([])


# --- HTML --------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f3f3f3; }
td.key, th.key { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.note { color: #555; font-size: 0.92em; }
"""


def render_html(
    result: RetrievalResult,
    images: Mapping[str, str],
    run_info: Mapping[str, Any] | None = None,
    title: str = "LIP-Loc retrieval evaluation",
    sequence_result: RetrievalResult | None = None,
) -> str:
    """The report page: run info, recall table with chance level, and the images (relative paths)."""
    esc = html.escape
    info = {**result.info, **(run_info or {})}
    info.setdefault("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    info_rows = "".join(
        f"<tr><td class='key'>{esc(str(k))}</td><td class='key'>{esc(str(v))}</td></tr>"
        for k, v in info.items()
    )
    ks = result.ks
    head = "".join(f"<th>R@{k}</th>" for k in ks)
    rows = []
    runs = [("", t) for t in result.thresholds]
    if sequence_result is not None:  # single and sequence rows side by side, per threshold
        seq_label = esc(f" ({_sequence_label(sequence_result)})")
        runs = [
            row
            for t, ts in zip(result.thresholds, sequence_result.thresholds, strict=True)
            for row in ((" (single image)", t), (seq_label, ts))
        ]
    for what, t in runs:
        err = "n/a" if math.isnan(t.median_error_m) else f"{t.median_error_m:.1f} / {t.mean_error_m:.1f}"
        rows.append(
            "<tr>"
            f"<td>{t.threshold_m:g} m{what}</td><td>{t.num_counted} / {result.num_queries}</td>"
            f"<td>{t.num_without_positive}</td>"
            + "".join(f"<td>{format_percent(t.recall[k])}</td>" for k in ks)
            + f"<td>{format_percent(t.recall_one_percent)}</td>"
            f"<td>{format_percent(t.chance[1])}</td><td>{format_percent(t.chance_one_percent)}</td>"
            f"<td>{err}</td></tr>"
        )
    excluded_rule = "left out of recall and errors" if result.exclude_no_positive else "counted as failures"
    notes = (
        f"A retrieved LiDAR scan is correct when its ground-plane (x, y) position lies within the "
        f"threshold of the query's. Recall@1% uses K = {result.k_one_percent} (1% of the "
        f"{result.db_size} database scans, rounded). Queries with no database scan within the "
        f"threshold are {excluded_rule}. Chance is the expected recall of a uniformly random "
        f"retrieval. Errors are the top-1 ground-plane distances (median / mean) of the counted queries."
    )
    figures = [
        ("trajectory", "Trajectory", "Database scans in grey, queries coloured by top-1 success."),
        (
            "trajectory_sequence",
            "Trajectory, sequence matching",
            "The same queries localized with the images before them (sequence matching).",
        ),
        ("recall_curve", "Recall@K", "One line per threshold; dashed: chance level."),
        ("examples", "Examples", "Queries with their best retrieved range images (green: correct)."),
    ]
    sections = "".join(
        f"<h2>{heading}</h2><p class='note'>{esc(caption)}</p>"
        f"<img src='{esc(images[name])}' alt='{esc(heading)}'>"
        for name, heading, caption in figures
        if name in images
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1>"
        f"<table>{info_rows}</table>"
        "<h2>Recall</h2><table><tr><th>threshold</th><th>queries counted</th><th>no positive</th>"
        f"{head}<th>R@1% (K={result.k_one_percent})</th><th>chance R@1</th><th>chance R@1%</th>"
        f"<th>top-1 error, m</th></tr>{''.join(rows)}</table>"
        f"<p class='note'>{esc(notes)}</p>{sections}</body></html>\n"
    )
