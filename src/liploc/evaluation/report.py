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
from liploc.evaluation.metrics import RetrievalResult, format_percent

# Okabe-Ito colours (safe for the common colour-vision deficiencies); every group also has its own
# marker shape, so the plots read in grey print too.
SUCCESS_COLOR = "#0072B2"  # blue, circles
FAILURE_COLOR = "#D55E00"  # vermillion, crosses
UNCOUNTED_COLOR = "#CC79A7"  # reddish purple, triangles
DATABASE_COLOR = "#c8c8c8"
START_COLOR = "#009E73"  # bluish green star
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
    """Query indices worth showing: the best, the median and the worst top-1 error, and between.

    ``count`` queries at evenly spaced quantiles of the top-1 error of the counted queries (best
    first), so that the examples show the whole range of what the model does across the drive.
    Deterministic; ties go to the earlier query.
    """
    counted = np.flatnonzero(result.main.counted)
    if count <= 0 or len(counted) == 0:
        return []
    errors = np.nan_to_num(result.top1_error_m[counted], nan=np.inf)
    ranked = counted[np.argsort(errors, kind="stable")]
    picks = np.linspace(0, len(ranked) - 1, min(count, len(ranked))).round().astype(int)
    return [int(ranked[i]) for i in dict.fromkeys(picks.tolist())]


def example_rank_name(position: int, count: int) -> str:
    """``best``, ``median``, ``worst`` or a percentile for example ``position`` of ``count``."""
    if count == 1 or position == 0:
        return "best"
    if position == count - 1:
        return "worst"
    fraction = position / (count - 1)
    return "median" if abs(fraction - 0.5) < 1e-9 else f"percentile {round(100 * fraction)}"


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
    """Database in grey; queries by top-1 success (blue circles) or failure (vermillion crosses).

    The start of the query drive is a star and arrows show its direction; a thin line joins each
    failed query to the place its top-1 scan was taken, so that confusions between places show.
    ``label`` names the method in the title (e.g. sequence matching).
    """
    main = result.main
    span = np.ptp(np.vstack([query_xy, db_xy]), axis=0) if len(db_xy) else np.array([1.0, 1.0])
    aspect = float(np.clip((span[0] + 1) / (span[1] + 1), 0.6, 1.8))
    fig = _new_figure(6.4 * min(1.0, aspect) + 1.6, 6.4 / max(1.0, aspect) + 1.2)
    ax = fig.add_subplot()
    ax.scatter(db_xy[:, 0], db_xy[:, 1], s=14, c=DATABASE_COLOR, lw=0, label=f"database scans ({len(db_xy)})")
    failed = np.flatnonzero(main.counted & ~main.success)
    top1 = result.retrieved[:, 0] if result.retrieved.size else np.full(result.num_queries, -1)
    links = [(query_xy[q], db_xy[top1[q]]) for q in failed if top1[q] >= 0]
    if links:
        from matplotlib.collections import LineCollection

        ax.add_collection(
            LineCollection(
                links, colors=FAILURE_COLOR, linewidths=0.6, alpha=0.45, label="failure -> retrieved place"
            )
        )
    groups = [
        (~main.counted, UNCOUNTED_COLOR, "^", 14, "no positive, not counted"),
        (main.counted & main.success, SUCCESS_COLOR, "o", 10, f"top-1 within {main.threshold_m:g} m"),
        (main.counted & ~main.success, FAILURE_COLOR, "x", 16, "top-1 wrong"),
    ]
    for mask, color, marker, size, legend in groups:  # failures drawn last so that they stay visible
        if mask.any():
            ax.scatter(
                *query_xy[mask].T,
                s=size,
                c=color,
                marker=marker,
                linewidths=1.0 if marker == "x" else 0,
                label=f"{legend} ({int(mask.sum())})",
            )
    _mark_start_and_direction(ax, query_xy)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.grid(alpha=0.3)
    recall_1 = format_percent(main.recall.get(1, math.nan))
    chance_1 = format_percent(main.chance.get(1, math.nan))
    what = f"{label}: " if label else ""
    ax.set_title(f"{what}top-1 success within {main.threshold_m:g} m: R@1 {recall_1} (chance {chance_1})")
    fig.legend(loc="outside lower center", fontsize=8, markerscale=1.8, ncol=2, frameon=False)
    return fig


def _mark_start_and_direction(ax: Any, xy: np.ndarray) -> None:
    if len(xy) == 0:
        return
    ax.scatter(
        *xy[0], s=160, marker="*", c=START_COLOR, edgecolors="black", linewidths=0.6, zorder=5, label="start"
    )
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=1) if len(xy) > 1 else np.zeros(0)
    if steps.sum() <= 0:
        return
    # About eight arrows spread along the driven distance, each pointing along the drive.
    along = np.concatenate([[0.0], np.cumsum(steps)])
    for target in np.linspace(0, along[-1], 10)[1:-1]:
        i = int(np.searchsorted(along, target))
        i = min(max(i, 1), len(xy) - 1)
        ax.annotate(
            "",
            xy=xy[i],
            xytext=xy[i - 1],
            arrowprops={"arrowstyle": "-|>", "color": "black", "lw": 0.8, "mutation_scale": 12},
            zorder=4,
        )


def plot_recall_curve(result: RetrievalResult) -> Figure:
    """Recall@K for K = 1..curve_k, one line per threshold, chance level dashed."""
    fig = _new_figure(7.6, 4.4)
    ax = fig.add_subplot()
    colors = [SUCCESS_COLOR, FAILURE_COLOR, START_COLOR, UNCOUNTED_COLOR, "#E69F00"]
    markers = ["o", "s", "^", "D", "v"]
    curve_k = len(result.main.recall_curve)
    ks = np.arange(1, curve_k + 1)
    for i, t in enumerate(result.thresholds):
        color = colors[i % len(colors)]
        ax.plot(
            ks,
            100 * t.recall_curve,
            "-",
            marker=markers[i % len(markers)],
            ms=3,
            color=color,
            label=f"within {t.threshold_m:g} m",
        )
        ax.plot(
            ks, 100 * t.chance_curve, "--", lw=1, color=color, alpha=0.7, label=f"chance, {t.threshold_m:g} m"
        )
    k1 = result.k_one_percent
    if k1 <= curve_k:
        ax.axvline(k1, color="grey", ls=":", lw=1)
        # Above the plot area (axes coordinates in y), where no curve can run through it.
        ax.text(
            k1,
            1.01,
            f"1% of database (K={k1})",
            transform=ax.get_xaxis_transform(),
            fontsize=8,
            color="grey",
            ha="center",
            va="bottom",
        )
    ax.set_xlim(0.5, curve_k + 0.5)
    ax.set_ylim(0, 100)
    ax.set_xlabel("K (retrieved LiDAR scans)")
    ax.set_ylabel("Recall@K (%)")
    ax.set_title(f"Recall@K over {result.main.num_counted} queries, database of {result.db_size}", pad=14)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
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
    row_h = 2.4
    if stacked:
        r_aspect = float(np.median(aspects))
        width = row_h * q_aspect + row_h / max(n_ret, 1) * r_aspect + 0.3
    else:
        width = row_h * (q_aspect + n_ret) + 0.3
    # At most 10 inches wide so that the page shows it near 1:1 and the captions stay legible.
    fig = _new_figure(min(width, 10.0), row_h * len(examples) + 0.4)
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
        q_ax.set_title(ex.label or f"query {q}", fontsize=11, loc="left")
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
            verdict = "correct" if ok else "wrong"
            caption = f"#{rank} {verdict}: scan {db_i}, {dist:.1f} m away{score_text}"
            ax.set_title(caption, fontsize=10, color=color, loc="left", pad=3)
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
        # aspect "equal": a range crop is shown at its own aspect, never stretched to the axes.
        ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest", aspect="equal")
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        ax.imshow(image, interpolation="antialiased", aspect="equal")
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
.headline { font-size: 1.25em; line-height: 1.4; }
.flag { color: #D55E00; font-weight: bold; }
"""


def protocol_in_words(info: Mapping[str, Any]) -> str:
    """What the evaluation protocol of ``info`` does, in a sentence a reader of the report follows."""
    protocol = info.get("protocol")
    sequence, map_sequence = info.get("sequence", "?"), info.get("map_sequence", "?")
    if protocol == "cross-drive":
        return f"camera images of drive {sequence} looked up in a LiDAR map of another drive, {map_sequence}"
    if protocol == "revisit":
        window = info.get("revisit_window_s", "?")
        return (
            f"camera images of sequence {sequence} against its own LiDAR scans, those within {window} s "
            "of the query left out, so that only revisits of a place count"
        )
    if protocol == "same-sequence":
        return (
            f"camera images of sequence {sequence} against every LiDAR scan of the same drive, "
            "its own included"
        )
    return str(protocol or "retrieval")


def headline(result: RetrievalResult, info: Mapping[str, Any]) -> str:
    """The first line of the report: how good, against chance, under which protocol, trained on what."""
    main = result.main
    r1, chance = main.recall.get(1, math.nan), main.chance.get(1, math.nan)
    if math.isnan(r1):
        verdict = f"No query has a LiDAR scan within {main.threshold_m:g} m: recall is undefined."
    else:
        times = f", {r1 / chance:.0f} times chance" if chance > 0 and not main.near_chance else ""
        verdict = (
            f"R@1 {format_percent(r1)} within {main.threshold_m:g} m (chance {format_percent(chance)}{times})"
            f" on {main.num_counted} queries and {result.db_size} scans."
        )
        if main.near_chance:
            verdict += " This is within noise of chance: no evidence that the model localizes here."
    trained = info.get("trained_on")
    return f"{verdict} Protocol: {protocol_in_words(info)}." + (f" Trained on {trained}." if trained else "")


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
    table = result.table(title=None)  # the very figures the command line prints
    head = "".join(f"<th>{esc(str(c.header)).replace(chr(10), ' ')}</th>" for c in table.columns)

    def table_rows(source: Any, suffix: str) -> list[str]:
        cells = [[str(cell) for cell in column.cells] for column in source.columns]
        out = []
        for row in zip(*cells, strict=True):
            first, *rest = row
            out.append(
                f"<tr><td>{esc(first + suffix)}</td>" + "".join(f"<td>{esc(v)}</td>" for v in rest) + "</tr>"
            )
        return out

    if sequence_result is None:
        rows = table_rows(table, "")
    else:  # single and sequence rows side by side
        rows = table_rows(table, " (single image)") + table_rows(
            sequence_result.table(title=None), f" ({_sequence_label(sequence_result)})"
        )
    flag = f"<p class='flag'>{esc(table.caption)}</p>" if table.caption else ""
    excluded_rule = "left out of recall and errors" if result.exclude_no_positive else "counted as failures"
    notes = (
        f"A retrieved LiDAR scan is correct when its ground-plane (x, y) position lies within the "
        f"threshold of the query's. Recall@1% uses K = {result.k_one_percent} (1% of the "
        f"{result.db_size} database scans, rounded). Queries with no database scan within the "
        f"threshold are {excluded_rule}. Chance is the expected recall of a uniformly random "
        f"retrieval. The median error is the top-1 ground-plane distance of the counted queries."
    )
    figures = [
        (
            "trajectory",
            "Trajectory",
            "Database scans in grey; queries as blue circles (top-1 correct) or vermillion crosses "
            "(wrong), each wrong one joined to where its top-1 scan was taken; the star marks the "
            "start and arrows the direction of the drive.",
        ),
        (
            "trajectory_sequence",
            "Trajectory, sequence matching",
            "The same queries localized with the images before them (sequence matching).",
        ),
        ("recall_curve", "Recall@K", "One line per threshold; dashed: chance level."),
        (
            "examples",
            "Examples",
            "The best, median and worst queries by top-1 error, with their top retrieved range "
            "images at their own aspect (blue: correct, vermillion: wrong).",
        ),
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
        f"<p class='headline'>{esc(headline(result, info))}</p>"
        f"<h2>Recall</h2><table><tr>{head}</tr>{''.join(rows)}</table>{flag}"
        f"<p class='note'>{esc(notes)}</p>{sections}"
        f"<h2>Run</h2><table>{info_rows}</table></body></html>\n"
    )
