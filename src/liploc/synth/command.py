"""What ``liploc synth`` does around the library: progress bar, summary table, preview, statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from liploc.console import new_table, print_line, print_table
from liploc.errors import ConfigError
from liploc.synth.generate import generate_dataset
from liploc.synth.options import SynthOptions
from liploc.synth.summary import SynthSummary


def make_options(**values: Any) -> SynthOptions:
    """SynthOptions from command-line values; a ConfigError names each invalid option."""
    try:
        return SynthOptions(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )
        raise ConfigError(f"invalid synth options: {problems}") from None


def parse_blocks(text: str) -> tuple[int, int]:
    """``"6x4"`` -> (6, 4)."""
    try:
        x, y = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--blocks {text!r}: expected two numbers like 6x4") from None
    return x, y


def run_synth(
    out: Path,
    options: SynthOptions,
    console: Console,
    workers: int | None = None,
    force: bool = False,
    preview: bool = False,
    real_root: Path | None = None,
) -> SynthSummary:
    """Generate with a progress bar, print what was written, then the preview and statistics asked for."""
    with Progress(
        TextColumn("[bold]synth[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(str(out), total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        summary = generate_dataset(
            out,
            options,
            progress=update,
            workers=workers,
            reuse=not force,
            notify=lambda line: print_line(console, line),
        )
    print_summary(summary, console)
    if preview:
        from liploc.synth.preview import write_preview

        path = write_preview(out)
        console.print(f"preview: {path}")
    if real_root is not None:
        print_statistics(out, real_root, console)
    return summary


def print_summary(summary: SynthSummary, console: Console) -> None:
    """Table of the written sequences and one line of totals."""
    table = new_table(
        "seq",
        "role",
        "region",
        "frames",
        "length\nm",
        "variant",
        "partner",
        "shares streets with",
        title=f"{summary.root} (town seed {summary.town_seed})",
        right=("frames", "length\nm"),
    )
    table.columns[-1].no_wrap = False  # the one column that may be long: wrap it, keep the others whole
    for s in summary.sequences:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in s.shares_streets_with.items()) or "-"
        table.add_row(
            s.name, s.role, s.region, str(s.frames), f"{s.length_m:.0f}", s.variant, s.partner or "-", shares
        )
    print_table(console, table)
    width, height = summary.image_size
    if summary.reused:
        how = "reused (same options; use --force to regenerate)"
    else:
        how = f"{summary.seconds:.1f} s, {summary.frames_per_s:.1f} frames/s"
    print_line(
        console,
        f"{summary.frames_total} frames, images {width}x{height}, scans 64x{summary.lidar_columns}: {how}. "
        f"See {summary.root / 'README.md'} and synth.json.",
    )


def print_statistics(synth_root: Path, real_root: Path, console: Console) -> None:
    """Realism statistics of the synthetic scans beside those of a real folder."""
    from liploc.synth.stats import scan_statistics

    synthetic = scan_statistics(synth_root)
    real = scan_statistics(real_root)
    table = Table(title="Scans in the paper's range-image crop (upper 32 rows, front 120 degrees)")
    table.add_column("")
    table.add_column(f"synthetic ({synthetic.scans} scans)", justify="right")
    table.add_column(f"real: {real_root} ({real.layout}, {real.scans} scans)", justify="right")
    table.add_row("valid-pixel ratio", f"{synthetic.valid_ratio:.3f}", f"{real.valid_ratio:.3f}")
    table.add_row("mean range (m)", f"{synthetic.mean_range_m:.1f}", f"{real.mean_range_m:.1f}")
    table.add_row("points per scan", f"{synthetic.points_per_scan:.0f}", f"{real.points_per_scan:.0f}")
    table.add_row("mean intensity", f"{synthetic.mean_intensity:.3f}", f"{real.mean_intensity:.3f}")
    console.print(table)
