"""``liploc demo``: the whole pipeline on a synthetic town, on a CPU, in minutes, with no download.

1. ``liploc synth``: a small town in the KITTI odometry layout, with training drives and held-out
   drives through streets that no training drive uses (in pairs over the same streets).
2. ``liploc train`` with the tiny config (appearance: image and range-image towers).
3. ``liploc train`` with the tiny geometry bridge (image depth matched with the scan in bird's-eye
   view) on the same drives, for fewer epochs so that the demo stays within 10 minutes.
4. ``liploc evaluate`` of both on a held-out drive with the paper's protocol (same-sequence) and
   the cross-drive protocol (map from one held-out drive, queries from its partner).
5. The recall tables beside chance, ``metrics.json`` and HTML reports.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.console import Console
from rich.table import Table

from liploc.atomic import atomic_write_text
from liploc.config import Config, DatasetSplit, load_config
from liploc.console import progress_bar
from liploc.errors import ConfigError
from liploc.evaluation.evaluate import EvaluationSettings, evaluate
from liploc.synth import SynthOptions, generate_dataset
from liploc.training.data_fingerprint import DataChangedError
from liploc.training.train import TrainResult, train

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "tiny.yaml"
BRIDGE_CONFIG = DEFAULT_CONFIG.with_name("tiny_bridge.yaml")
DEMO_TORCH_THREADS = 2
"""The threads of the README's reference machine (2 cores); the demo's figures are for this count."""
BRIDGE_EPOCHS = 6
"""The bridge's epochs in the demo: what fits the demo's 10 minutes on a 2-core CPU."""
METHOD_TITLES = {"appearance": "appearance model", "bridge": "geometry bridge"}


@contextmanager
def pinned_torch_threads(threads: int) -> Iterator[None]:
    """Run torch's CPU kernels on exactly ``threads`` threads inside the block, then restore.

    With the same count (and the same CPU instruction set) training is bit-for-bit repeatable
    across machines; the default, one thread per core, makes results depend on the core count.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class DemoOptions(BaseModel):
    """What the demo generates and how long it trains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    town_seed: int = Field(7, ge=0)
    drives: int = Field(30, ge=2)
    """Drives in all; ``held_out_drives`` of them are in streets no training drive uses. Many short
    drives generalise better than a few long ones: the model must learn geometry, not places."""
    held_out_drives: int = Field(2, ge=1)
    frames: int = Field(120, ge=10)
    """Frames per drive."""
    spacing_m: float = Field(3.0, gt=0)
    """Metres driven between frames."""
    blocks: tuple[int, int] = (8, 4)
    epochs: int | None = Field(25, ge=1)
    """Training epochs (None: the config's)."""
    max_steps: int | None = Field(None, ge=1)
    torch_threads: int = Field(DEMO_TORCH_THREADS, ge=1)
    """CPU threads of torch's kernels during training and evaluation, the same on every machine:
    a kernel splits its sums by thread count, so other counts round differently and, over 25
    epochs, train a measurably different model (R@1 0.575 vs 0.66 on two machines)."""
    config: Path = DEFAULT_CONFIG
    bridge_config: Path | None = BRIDGE_CONFIG
    """The geometry bridge's config, trained after the appearance model on the same drives and
    evaluated with the same protocols; None: the appearance model alone."""
    bridge_epochs: int | None = Field(BRIDGE_EPOCHS, ge=1)
    """The bridge's training epochs (None: its config's). Fewer than the appearance model's: its
    step costs about 2.3x as much here (64 x 192 inputs, the depth head and BEV encoders)."""
    sequence_windows_m: tuple[float, ...] = (20.0, 60.0)
    """Also localize each query with the images of the last this many metres driven (sequence
    matching with odometry), one row per window; empty (or zeros): single images only. The first
    window's trajectories go into the reports."""

    @field_validator("sequence_windows_m")
    @classmethod
    def _positive_windows(cls, windows: tuple[float, ...]) -> tuple[float, ...]:
        if any(w < 0 for w in windows):
            raise ValueError(f"sequence windows must be >= 0 m, got {windows}")
        return tuple(w for w in windows if w > 0)

    def seq_len(self, window_m: float) -> int:
        """Images in a sequence window: the window's metres over the frame spacing."""
        return max(1, round(window_m / self.spacing_m))


@dataclass
class DemoResult:
    """Where the demo wrote what, and what it reached."""

    out: Path
    metrics: dict[str, dict[str, Any]]
    seconds: float
    interrupted: bool = False
    """Training was stopped by a signal: nothing was evaluated (the same command resumes)."""
    bridge_metrics: dict[str, dict[str, Any]] | None = None
    """The geometry bridge's metrics per protocol (None: the demo ran without it)."""


def _demo_config(
    options: DemoOptions, data_root: Path, train_seqs: list[str], path: Path, epochs: int | None
) -> Config:
    if not path.is_file():
        option = "--config" if path == options.config else "--bridge-config"
        raise ConfigError(f"{path}: demo config not found (pass {option})")
    config = load_config(path)
    config = config.model_copy(deep=True)
    config.name = "demo" if path == options.config else f"demo-{path.stem}"
    config.data.datasets = [DatasetSplit(layout="kitti", root=data_root, train=train_seqs)]
    if epochs is not None:
        config.train.epochs = epochs
    if options.max_steps is not None:
        config.train.max_steps = options.max_steps
    return config


def train_or_restart(config: Config, run_dir: Path, console: Console, progress: bool = True) -> TrainResult:
    """Train into ``run_dir``, continuing a run there, or starting afresh when its data changed.

    A run trained on other data (the synthetic town was regenerated with other options, files
    were removed) cannot be continued; the old run folder is kept beside, renamed, and named.
    """
    if (run_dir / "checkpoints" / "last.safetensors").is_file():
        try:
            return train(config, run_dir, resume=True, progress=progress)
        except DataChangedError as err:
            kept = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            run_dir.rename(kept)
            console.print(
                f"[yellow]the previous run cannot continue: {'; '.join(err.changes)}; it was moved to "
                f"{kept} and a fresh run starts[/]"
            )
    return train(config, run_dir, resume=False, progress=progress)


def run_demo(
    out: str | Path, options: DemoOptions | None = None, console: Console | None = None
) -> DemoResult:
    """Run the demo into ``out`` (data/, run/, metrics.json); return the metrics per protocol."""
    options = options or DemoOptions()
    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    models = {"appearance": (options.config, options.epochs, out / "run", out / "eval")}
    if options.bridge_config is not None:
        bridge = (options.bridge_config, options.bridge_epochs, out / "run-bridge", out / "eval-bridge")
        models["bridge"] = bridge
    steps = 2 + len(models)  # the town, a training per model, the evaluation

    console.rule(f"[bold]1/{steps} synthetic town")
    train_seqs, test_seq, partner = _make_town(out / "data", options, console)

    trained: dict[str, int] = {}
    for k, (method, (path, epochs, run_dir, _)) in enumerate(models.items()):
        console.rule(f"[bold]{2 + k}/{steps} training the {METHOD_TITLES[method]} ({path.name}, CPU)")
        config = _demo_config(options, out / "data", train_seqs, path, epochs)
        console.print(
            f"torch runs on {options.torch_threads} CPU threads on every machine, so that the result "
            "does not depend on the number of cores"
        )
        with pinned_torch_threads(options.torch_threads):
            result = train_or_restart(config, run_dir, console)
        if result.stopped == "interrupted":
            # Evaluating the half-trained model would print figures that look like the demo's.
            console.print(
                f"[yellow]training interrupted at step {result.step}: nothing evaluated; the same "
                "command resumes it[/]"
            )
            return DemoResult(out, {}, time.perf_counter() - started, interrupted=True)
        console.print(f"trained {result.step} steps; checkpoints in {run_dir / 'checkpoints'}")
        trained[method] = result.step

    console.rule(f"[bold]{steps}/{steps} evaluation on held-out streets")
    protocols = {
        "same-sequence": dict(sequence=test_seq, protocol="same-sequence"),
        "cross-drive": dict(sequence=partner, protocol="cross-drive", map_sequence=test_seq),
    }
    by_method: dict[str, dict[str, dict[str, Any]]] = {}
    reports = {}
    for method, (_, _, run_dir, eval_root) in models.items():
        by_method[method] = {}
        for name, kwargs in protocols.items():
            by_method[method][name], reports[f"{name}, {method}"] = _evaluate_protocol(
                out, run_dir, eval_root / name, kwargs, options
            )
    seconds = time.perf_counter() - started
    metrics = by_method["appearance"]
    bridge_metrics = by_method.get("bridge")
    payload: dict[str, Any] = {
        **metrics,
        **({"bridge": bridge_metrics} if bridge_metrics is not None else {}),
        "seconds": seconds,
        "train_steps": trained["appearance"],
        **({"bridge_train_steps": trained["bridge"]} if "bridge" in trained else {}),
        "town_seed": options.town_seed,
        "torch_threads": options.torch_threads,
    }
    atomic_write_text(out / "metrics.json", json.dumps(payload, indent=2))
    for method, (path, epochs, _, _) in models.items():
        title = f"{METHOD_TITLES[method].capitalize()} ({path.name}"
        title += f", {epochs} epochs)" if epochs is not None else ")"
        _print_table(console, by_method[method], title)
    for name, path in reports.items():
        console.print(f"report ({name}): {path}")
    console.print(f"metrics: {out / 'metrics.json'}  |  total {seconds / 60:.1f} min")
    return DemoResult(out, metrics, seconds, bridge_metrics=bridge_metrics)


def demo_town_options(options: DemoOptions) -> SynthOptions:
    """The synthetic town of a demo with ``options`` (benchmarks reuse the demo's town)."""
    return SynthOptions(
        town_seed=options.town_seed,
        drives=options.drives,
        held_out_drives=options.held_out_drives,
        frames=options.frames,
        frame_spacing_m=options.spacing_m,
        size="small",
        blocks=options.blocks,
        pairs="same-direction",  # cross-drive queries see the map drive's view of the street
    )


def _make_town(data: Path, options: DemoOptions, console: Console) -> tuple[list[str], str, str]:
    """Step 1: the synthetic town (reused when an identical one is already there); its training
    drives, and the first pair of held-out drives over the same streets."""
    synth = demo_town_options(options)
    with progress_bar(console, transient=False, elapsed=True) as bar:
        task = bar.add_task("rendering drives", total=None)
        summary = generate_dataset(data, synth, progress=lambda d, t: bar.update(task, completed=d, total=t))
    train_seqs = summary.train_sequences()
    test_pairs = summary.pairs(role="test")
    if not test_pairs:
        raise ConfigError(
            "the synthetic town has no pair of held-out drives; raise --drives/--held-out-drives"
        )
    test_seq, partner = test_pairs[0]
    speed = "reused" if summary.reused else f"{summary.frames_per_s:.1f} frames/s"
    console.print(
        f"{summary.frames_total} frames ({speed}); "
        f"training drives {', '.join(train_seqs)}; held-out drives {test_seq} and {partner} (same streets)"
    )
    return train_seqs, test_seq, partner


def _evaluate_protocol(
    out: Path, run_dir: Path, eval_dir: Path, kwargs: dict[str, Any], options: DemoOptions
) -> tuple[dict[str, Any], Path]:
    """Step 3, one protocol: single images, and a row per sequence window; its metrics and report.

    The first window's evaluation writes the report with example queries; each further window
    gets its own folder beside it, without examples (the embeddings are cached, so it costs
    little more than the matching).
    """
    sequences = []
    first = None
    for k, window_m in enumerate(options.sequence_windows_m or (0.0,)):
        seq = {"seq_len": options.seq_len(window_m), "odometry": True} if window_m > 0 else {}
        folder = eval_dir if k == 0 else eval_dir.with_name(f"{eval_dir.name}-{window_m:g}m-window")
        with pinned_torch_threads(options.torch_threads):
            settings = EvaluationSettings(
                out_dir=folder, num_examples=3 if k == 0 else 0, **kwargs, **seq,  # type: ignore[arg-type]
            )  # fmt: skip
            output = evaluate(run_dir, out / "data", settings, console=None)
        if k == 0:
            first = output
        if output.sequence_result is not None:
            sequences.append(_sequence_metrics(output.sequence_result, window_m, options.seq_len(window_m)))
    assert first is not None
    main = first.result.main
    metrics = {
        "recall_at_1": main.recall[1],
        "recall_at_5": main.recall[5],
        "recall_at_10": main.recall[10],
        "recall_at_1_percent": main.recall_one_percent,
        "chance_at_1": main.chance[1],
        "chance_at_5": main.chance[5],
        "threshold_m": main.threshold_m,
        "own_scan_in_database": first.result.info["own_scan_in_database"],
        "median_error_m": main.median_error_m,
        "queries": main.num_counted,
        "database": first.result.db_size,
        "query_sequence": kwargs["sequence"],
        "map_sequence": kwargs.get("map_sequence", kwargs["sequence"]),
        "recall_at_1_10m": _recall_at(first.result, 10.0),
    }
    if sequences:
        metrics["sequences"] = sequences
    return metrics, first.files["html"]


def _sequence_metrics(result: Any, window_m: float, seq_len: int) -> dict[str, Any]:
    return {
        "seq_len": seq_len,
        "window_m": window_m,
        "odometry": True,
        "odometry_noise": result.info["sequence_matching"]["odometry_noise"],
        "recall_at_1": result.main.recall[1],
        "recall_at_5": result.main.recall[5],
        "recall_at_10": result.main.recall[10],
        "recall_at_1_percent": result.main.recall_one_percent,
        "median_error_m": result.main.median_error_m,
        "recall_at_1_10m": _recall_at(result, 10.0),
    }


def _recall_at(result: Any, threshold_m: float) -> float | None:
    try:
        return result.at(threshold_m).recall[1]
    except KeyError:
        return None


def _print_table(console: Console, metrics: dict[str, dict[str, Any]], model: str) -> None:
    # Kept to 80 columns: queries and scans per protocol go in the caption.
    table = Table(title=f"{model}: held-out drive, threshold 20 m (R@1 also at 10 m)")
    table.add_column("protocol", no_wrap=True, min_width=13)
    table.add_column("input", no_wrap=True)
    for col in ("R@1", "R@5", "R@1 10m", "chance", "med. err"):
        table.add_column(col, justify="right", no_wrap=True)

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for name, m in metrics.items():
        rows = [("single", m)]
        for s in m.get("sequences", []):
            rows.append((f"{s['window_m']:g} m seq", {**m, **s}))
        for label, r in rows:
            table.add_row(
                name,
                label,
                fmt(r["recall_at_1"]),
                fmt(r["recall_at_5"]),
                fmt(r.get("recall_at_1_10m")),
                fmt(m["chance_at_1"]),
                f"{r['median_error_m']:.1f} m",
            )
    sizes = "; ".join(f"{n}: {m['queries']} queries, {m['database']} scans" for n, m in metrics.items())
    caption = sizes
    sequences = next((m["sequences"] for m in metrics.values() if m.get("sequences")), [])
    if sequences:
        images = " / ".join(f"{s['seq_len']} ({s['window_m']:g} m)" for s in sequences)
        caption += (
            f". seq: sequence matching over the last {images} images with odometry "
            f"({100 * sequences[0]['odometry_noise']:.0f}% noise). Own scan in the database "
            "(same-sequence); map from the partner drive (cross-drive)"
        )
    table.caption = caption
    console.print(table)
