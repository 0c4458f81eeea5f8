"""Sequence matching against the distance driven, and where it fails: a finished demo's held-out drives.

Reads what ``liploc demo`` wrote (``DEMO/data``, ``DEMO/eval/<protocol>/*_embeddings.npy``), so it
runs in seconds and trains nothing. For each protocol (same-sequence: the map is the query's own
drive; cross-drive: the map is the partner drive) it localizes every query with the last L images
(sequence matching with simulated odometry, 10% noise, as ``liploc evaluate --seq-len L --odometry``)
for windows of about 3 to 60 m of travel, and prints R@1 at 10 and 20 m.

The cross-drive queries are also split by the lane they drive in relative to the map drive: the
demo's partner drive takes another lane where the street has one, so most of its images are taken
about 3 m sideways of the nearest map scan. That split shows where the errors are: queries in the
map's lane localize about as well as on the map's own drive, those one lane over worse (before the
tiny config trained with scans moved sideways, ``data.lidar_sideways_m``, much worse with any
window).

    python benchmarks/sequence_windows.py [--demo runs/demo] [--noise 0.1]

Prints the table and, as the last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from liploc.datasets import Frame, open_dataset
from liploc.evaluation.sequence_rows import simulated_odometry
from liploc.localization.sequences import MapTrack, SequenceMatcher, SequenceSettings, sequence_search
from liploc.runtime.data_roots import posed

WINDOWS = (1, 2, 4, 7, 10, 14, 20)
"""Images per window; at the demo's 3 m spacing about 3, 6, 12, 20, 30, 40 and 60 m driven."""
THRESHOLDS_M = (10.0, 20.0)
OTHER_LANE_M = 1.5
"""A query is in another lane than the map when its nearest map scan is this far sideways (half a
3 m lane)."""


def sideways_offsets(queries: list[Frame], database: list[Frame]) -> np.ndarray:
    """(Q,) metres each query lies to the left (+) or right (-) of its nearest map scan."""
    q_xy = np.stack([f.position_xy for f in queries])
    db_xy = np.stack([f.position_xy for f in database])
    nearest = np.argmin(np.linalg.norm(q_xy[:, None] - db_xy[None], axis=2), axis=1)
    left = np.stack([database[j].pose[:2, 1] for j in nearest])  # the map scan's y axis: its left
    return np.sum((q_xy - db_xy[nearest]) * left, axis=1)


def top1_errors(
    q_emb: np.ndarray,
    db_emb: np.ndarray,
    queries: list[Frame],
    database: list[Frame],
    seq_len: int,
    noise: float,
) -> np.ndarray:
    """(Q,) metres from each query to its top-1 map scan with a window of ``seq_len`` images."""
    settings = SequenceSettings(seq_len=seq_len, odometry_noise=noise)
    db_xy = np.stack([f.position_xy for f in database])
    track = MapTrack.build([f.sequence for f in database], [f.index for f in database], db_xy)
    _, top = sequence_search(
        q_emb,
        db_emb,
        SequenceMatcher(track, settings),
        1,
        segments=[f.sequence for f in queries],
        travelled_m=simulated_odometry(queries, noise),
    )
    q_xy = np.stack([f.position_xy for f in queries])
    return np.linalg.norm(db_xy[top[:, 0]] - q_xy, axis=1)


def run(demo: Path, noise: float, windows: tuple[int, ...] = WINDOWS) -> dict[str, Any]:
    """The figures of one demo folder (see the module docstring)."""
    metrics = json.loads((demo / "metrics.json").read_text())
    reader = open_dataset(demo / "data")
    out: dict[str, Any] = {"demo": str(demo), "odometry_noise": noise, "protocols": {}}
    for protocol in ("same-sequence", "cross-drive"):
        info = metrics[protocol]
        queries, _ = posed(reader.frames(info["query_sequence"]))
        database, _ = posed(reader.frames(info["map_sequence"]))
        folder = demo / "eval" / protocol
        q_emb = np.load(folder / "query_embeddings.npy")
        db_emb = np.load(folder / "database_embeddings.npy")
        if len(q_emb) != len(queries) or len(db_emb) != len(database):
            raise SystemExit(f"{folder}: embeddings do not match the drives in {demo / 'data'}")
        spacing = float(np.median(np.linalg.norm(np.diff([f.position_xy for f in database], axis=0), axis=1)))
        other_lane = np.abs(sideways_offsets(queries, database)) > OTHER_LANE_M
        rows = []
        for seq_len in windows:
            err = top1_errors(q_emb, db_emb, queries, database, seq_len, noise)
            row: dict[str, Any] = {"seq_len": seq_len, "window_m": round(seq_len * spacing)}
            for t in THRESHOLDS_M:
                row[f"r1_{t:g}m"] = float(np.mean(err <= t))
            if other_lane.any() and (~other_lane).any():
                row["r1_10m_map_lane"] = float(np.mean(err[~other_lane] <= 10.0))
                row["r1_10m_other_lane"] = float(np.mean(err[other_lane] <= 10.0))
            rows.append(row)
        out["protocols"][protocol] = {
            "queries": len(queries),
            "queries_in_other_lane": int(other_lane.sum()),
            "windows": rows,
        }
    return out


def print_table(console: Console, figures: dict[str, Any]) -> None:
    # Kept to 80 columns: the lane split's meaning goes in the caption.
    table = Table(title=f"Sequence matching vs distance driven ({figures['demo']}, odometry)")
    table.add_column("protocol", no_wrap=True, min_width=13)
    for col in ("L", "window", "R@1 20m", "R@1 10m", "10m lane", "10m other"):
        table.add_column(col, justify="right", no_wrap=True)
    for protocol, p in figures["protocols"].items():
        for row in p["windows"]:
            lane = ("r1_10m_map_lane", "r1_10m_other_lane")
            table.add_row(
                protocol,
                str(row["seq_len"]),
                f"{row['window_m']} m",
                f"{row['r1_20m']:.3f}",
                f"{row['r1_10m']:.3f}",
                *(f"{row[k]:.3f}" if k in row else "-" for k in lane),
            )
    table.caption = (
        "; ".join(
            f"{name}: {p['queries']} queries, {p['queries_in_other_lane']} more than "
            f"{OTHER_LANE_M:g} m sideways of the map's scans"
            for name, p in figures["protocols"].items()
        )
        + ". 10m lane / other: R@1 at 10 m of the queries in the map drive's lane / another lane"
    )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a finished liploc demo folder")
    parser.add_argument("--noise", type=float, default=0.1, help="relative odometry noise (1 sigma)")
    parser.add_argument(
        "--seq-lens",
        default=",".join(map(str, WINDOWS)),
        help="images per window, comma-separated (the demo's frames are 3 m apart)",
    )
    args = parser.parse_args()
    windows = tuple(int(v) for v in args.seq_lens.split(","))
    if not windows or min(windows) < 1:
        parser.error(f"--seq-lens: positive image counts, got {args.seq_lens!r}")
    if not (args.demo / "metrics.json").is_file():
        # `make bench` runs every benchmark; this one only reads a finished demo.
        print(f"skipped: no finished demo in {args.demo} (run `make demo` first)")
        print(json.dumps({"demo": str(args.demo), "skipped": "no finished demo"}))
        return
    figures = run(args.demo, args.noise, windows)
    print_table(Console(), figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
