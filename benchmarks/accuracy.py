"""Accuracy benchmark: each method trained on one synthetic town at an equal budget, side by side.

One town (``liploc synth``) with training drives and held-out drives on streets no training drive
uses, in pairs over the same streets: the partner of a drive takes the other lane the same way, or
drives the opposite way (``pairs: mixed``). Every method of :data:`METHODS` is trained on the same
training drives for the same epochs and seeds, then evaluated on every held-out drive, the
figures pooled over the drives:

- ``paper``: same-sequence, 20 m, own scan in the database (LIP-Loc's protocol);
- ``kitti-b-like``: same-sequence, 10 m, own scan removed from the database;
- ``cross-drive``: 10 m, each held-out drive localized in the LiDAR map of its partner (both ways);
- ``cross-drive, one lane over``: the cross-drive queries more than 1.5 m sideways of their
  nearest map scan (half a 3 m lane, as ``sequence_windows.py`` splits them);

each with a single image and with sequence matching over the last 20 m of driving (``evaluate
--seq-len`` of 20 m over the frame spacing, odometry with 10 % noise); and ``zero-shot``: the real
posed KITTI raw drive of ``shared/data/kitti-raw-posed`` (24 frames), same-sequence, 20 m, own
scan in the database. Per method also the training wall time and the latency of localizing one
camera image in the map of one held-out drive (``Localizer.localize`` of a PNG file on the CPU:
decode, resize, camera tower, search; median of N), on torch and on the map's ONNX export.

``synth-to-real`` (``configs/synth_to_real.yaml``, issue 22) and ``synth-to-real-bridge``
(``configs/synth_to_real_bridge.yaml``) train their own epochs with their pretrained towers at
96 x 320 on the benchmark's town (one seed, about 2.5 and 2 s a step of 32 pairs on 2 cores; run
only when named in ``--methods``): their row that matters is the zero-shot one, beside the
others'. The README's figures for them come from a 40-drive town (the configs' commands).

Each figure is R@1: the mean and standard deviation over training seeds (how much the method
moves with its seed), a 95 % Wilson interval on the hits pooled over seeds and queries (how much
the query sample leaves open), and chance (R@1 of a random pick from the query's database).

    python benchmarks/accuracy.py [--quick] [--methods lip-loc,liploc] [--out runs/accuracy]

``--quick``: one seed, a smaller town, 3 epochs (a smoke run of every step, 2 min 53 s on a quiet
2-core machine, town included; its figures are not the benchmark's). The full run: a town of 18 drives of
80 frames 3 m apart, 12 for training and 6 held out in 3 pairs (480 queries per protocol), 10
epochs, 3 seeds of the main methods and 1 of the ablations: 12 training runs of 0.5 to 2 minutes
each and their evaluations, 14 minutes on a quiet 2-core CPU (README). Runs finished in ``--out`` are
reused (their recorded training time with them). Prints the table; the last line is one JSON
object in which every figure names its protocol, threshold and whether the own scan is in the
database.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.console import Console
from rich.table import Table

from liploc.atomic import atomic_write_text
from liploc.commands.demo import pinned_torch_threads
from liploc.config import Config, DatasetSplit, load_config
from liploc.datasets import open_dataset
from liploc.errors import ConfigError
from liploc.evaluation.evaluate import EvaluationSettings, evaluate, protocol_label
from liploc.evaluation.metrics import RetrievalResult
from liploc.runtime.data_roots import posed
from liploc.synth import SynthOptions, generate_dataset
from liploc.training.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark, also when imported
from sequence_windows import OTHER_LANE_M, sideways_offsets

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
TINY_BRIDGE = REPO / "configs" / "tiny_bridge.yaml"
SYNTH_TO_REAL = REPO / "configs" / "synth_to_real.yaml"
SYNTH_TO_REAL_BRIDGE = REPO / "configs" / "synth_to_real_bridge.yaml"
KITTI_POSED = REPO.parent / "shared" / "data" / "kitti-raw-posed"
"""The real posed KITTI raw drive (24 frames, 7 m apart) of the zero-shot row."""
Z_95 = 1.959963984540054


# ---------------------------------------------------------------------------------------------
# The methods
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """How one method trains: a config and ``key=value`` overrides on it (as ``liploc train --set``).

    ``role``: ``main`` methods train ``--seeds`` seeds, ``ablation`` ones ``--ablation-seeds``.
    ``config`` None: the method is named but not written yet (reported as not available).
    """

    config: Path | None
    overrides: tuple[str, ...] = ()
    role: Literal["main", "ablation"] = "main"
    note: str = ""
    own_epochs: bool = False
    """Train the config's own epochs, not the benchmark's: a recipe whose budget is part of it
    (the transfer recipe: pretrained towers at 96 x 320, about 2 s a step on 2 cores). Such a
    method runs only when named."""


PAPER_RECIPE: tuple[str, ...] = (
    # configs/*_paper.yaml and liploc.interop.lip_loc.PAPER_SETTINGS, on configs/tiny.yaml. What
    # depends on scale stays tiny's for both methods (timm test towers from scratch, 64 x 64
    # inputs, batch 16, the from-scratch learning rates: the paper's 1e-5 / 1e-4 are for
    # ImageNet-pretrained ResNet-50s), so the two columns differ in the recipe only.
    "model.normalize=false",  # raw dot product, no L2 normalisation (reference CLIPModelV1)
    "loss.kind=soft-target",  # softmax((S_cam + S_lidar) / 2) targets
    "loss.temperature=1.0",
    "loss.learnable_temperature=false",
    "data.val_split=random",  # a random 20 % of the training frames validate
    "data.val_fraction=0.2",
    "data.lidar_sideways_m=0",  # liploc's sideways scan moves are not the paper's
    "data.normalize=imagenet",
    "data.resize=opencv",
    "train.scheduler=plateau",
    "train.plateau_patience=1",
    "train.plateau_factor=0.8",
    "train.best_metric=val_loss",  # the reference keeps the checkpoint of the lowest val loss
    "train.encoder_weight_decay=0.0",
    "train.precision=fp32",
)

METHODS: dict[str, Method] = {
    "lip-loc": Method(TINY, PAPER_RECIPE, "main", "the paper's recipe at tiny scale"),
    "liploc": Method(TINY, (), "main", "configs/tiny.yaml as is"),
    # ---- issue 21: the geometry bridge (configs/tiny_bridge.yaml) and its ablations -----------
    "bridge": Method(
        TINY_BRIDGE, (), "main", "geometry bridge: camera depth -> BEV raster against the scan's BEV"
    ),
    "bridge-fused": Method(
        TINY_BRIDGE,
        ("model.bridge.fusion=fused",),
        "ablation",
        "the bridge's BEV embedding fused with the appearance towers' at equal weight",
    ),
    "liploc-wide": Method(
        TINY,
        ("data.image_size=[64,192]",),
        "ablation",
        "configs/tiny.yaml at the bridge's 64 x 192 inputs: what the input size gives without the bridge",
    ),
    "appearance+depth-aux": Method(
        TINY_BRIDGE,
        ("model.bridge.fusion=depth_aux",),
        "ablation",
        "liploc's towers with an auxiliary depth head",
    ),
    # ---- issue 22: the transfer recipe (its zero-shot row is the one that matters) ------------
    "synth-to-real": Method(
        SYNTH_TO_REAL,
        (),
        "ablation",
        "configs/synth_to_real.yaml: ImageNet Lite0 towers, 96 x 320, photometric jitter",
        own_epochs=True,
    ),
    "synth-to-real-bridge": Method(
        SYNTH_TO_REAL_BRIDGE,
        (),
        "ablation",
        "configs/synth_to_real_bridge.yaml: the bridge, ImageNet Lite0 camera tower, BEV alone",
        own_epochs=True,
    ),
    # ------------------------------------------------------------------------------------------
}


def method_config(name: str, method: Method, extra: tuple[str, ...] = ()) -> Config:
    """The method's validated config (ConfigError when it is not written or does not validate)."""
    if method.config is None:
        raise ConfigError("no config yet (the method is named but not written on this checkout)")
    config = load_config(method.config, [*method.overrides, *extra])
    from liploc.models import create_model  # the towers are built too: an unknown encoder fails here

    create_model(config.model)
    return config


# ---------------------------------------------------------------------------------------------
# What is measured
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProtocolRow:
    """One protocol of the table."""

    key: str
    title: str
    protocol: Literal["same-sequence", "cross-drive"]
    threshold_m: float
    own_scan_in_database: bool
    queries: Literal["all", "one lane over"] = "all"

    @property
    def label(self) -> str:
        label = protocol_label(self.protocol, self.threshold_m, not self.own_scan_in_database)
        return label if self.queries == "all" else f"{label}, queries one lane over"


ROWS: tuple[ProtocolRow, ...] = (
    ProtocolRow("paper", "paper (LIP-Loc)", "same-sequence", 20.0, True),
    ProtocolRow("kitti-b-like", "kitti-b-like", "same-sequence", 10.0, False),
    ProtocolRow("cross-drive", "cross-drive", "cross-drive", 10.0, False),
    ProtocolRow(
        "cross-drive-lane-over", "cross-drive, one lane over", "cross-drive", 10.0, False, "one lane over"
    ),
)
ZERO_SHOT = ProtocolRow("zero-shot-kitti", "zero-shot, real KITTI", "same-sequence", 20.0, True)
INPUTS = ("single", "window")


@dataclass
class BenchOptions:
    """The town, the budget and where to write."""

    out: Path = Path("runs/accuracy")
    town_seed: int = 7
    drives: int = 18
    held_out_drives: int = 6
    frames: int = 80
    spacing_m: float = 3.0
    blocks: tuple[int, int] = (8, 4)
    epochs: int = 10
    max_steps: int | None = None
    seeds: int = 3
    ablation_seeds: int = 1
    window_m: float = 20.0
    latency_repeats: int = 50
    threads: int = 2
    kitti_root: Path | None = KITTI_POSED
    extra_overrides: tuple[str, ...] = ()
    """Set on every method's config after its own (the test's smaller images)."""
    synth_extra: dict[str, Any] = field(default_factory=dict)
    """More SynthOptions (the test's smaller sensors)."""
    quick: bool = False

    @property
    def seq_len(self) -> int:
        return max(1, round(self.window_m / self.spacing_m))


QUICK = dict(drives=12, held_out_drives=4, frames=60, epochs=3, seeds=1, ablation_seeds=1, latency_repeats=20)
"""``--quick``: 8 training drives and 4 held-out ones of 60 frames (240 queries per protocol), 3
epochs: a smoke run of every step, not figures to compare."""


def wilson_interval(hits: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``hits`` of ``n``); (nan, nan) for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    p = hits / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Outcomes:
    """Per-query outcomes of one evaluation: top-1 hit and chance of each counted query."""

    hits: np.ndarray
    chance: np.ndarray

    @staticmethod
    def join(parts: list[Outcomes]) -> Outcomes:
        return Outcomes(
            np.concatenate([p.hits for p in parts]) if parts else np.zeros(0, bool),
            np.concatenate([p.chance for p in parts]) if parts else np.zeros(0),
        )


def outcomes(
    result: RetrievalResult, threshold_m: float, own_scan_removed: bool, keep: Any = True
) -> Outcomes:
    """The counted queries' (those with a positive) top-1 hits and chance, optionally a subset.

    Chance of a query: its positives over the scans it can retrieve (its own scan removed, if so).
    """
    t = result.at(threshold_m)
    mask = t.counted & np.asarray(keep, dtype=bool)
    available = result.db_size - (1 if own_scan_removed else 0)
    return Outcomes(t.success[mask].astype(bool), t.num_positives[mask] / max(available, 1))


def summarize(per_seed: list[Outcomes]) -> dict[str, Any]:
    """R@1 per seed, their mean and sample std, the Wilson interval of the pooled hits, chance."""
    recalls = [float(o.hits.mean()) for o in per_seed if len(o.hits)]
    hits = int(sum(int(o.hits.sum()) for o in per_seed))
    n = int(sum(len(o.hits) for o in per_seed))
    lo, hi = wilson_interval(hits, n)
    chance = float(sum(float(o.chance.sum()) for o in per_seed) / n) if n else math.nan
    return {
        "recall_at_1_mean": _finite(float(np.mean(recalls))) if recalls else None,
        "recall_at_1_std": _finite(float(np.std(recalls, ddof=1))) if len(recalls) > 1 else None,
        "recall_at_1_per_seed": recalls,
        "hits": hits,
        "queries": n,
        "queries_per_seed": [len(o.hits) for o in per_seed],
        "wilson95": [_finite(lo), _finite(hi)],
        "chance_at_1": _finite(chance),
    }


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


# ---------------------------------------------------------------------------------------------
# The one call to liploc's evaluate()
# ---------------------------------------------------------------------------------------------


def run_evaluation(
    run_dir: Path,
    data_root: Path,
    out_dir: Path,
    sequence: str,
    *,
    protocol: str,
    map_sequence: str | None,
    exclude_self: bool,
    thresholds_m: list[float],
    seq_len: int | None,
) -> tuple[RetrievalResult, RetrievalResult | None]:
    """Single-image result and, with ``seq_len``, the sequence-matching result (odometry)."""
    settings = EvaluationSettings(
        sequence,
        protocol=protocol,
        map_sequence=map_sequence,
        exclude_self=exclude_self,
        thresholds_m=thresholds_m,
        out_dir=out_dir,
        num_examples=0,
        seq_len=seq_len,
        odometry=seq_len is not None,
    )
    output = evaluate(run_dir, data_root, settings, console=None)
    return output.result, output.sequence_result


# ---------------------------------------------------------------------------------------------
# Town, training, evaluation of one model
# ---------------------------------------------------------------------------------------------


@dataclass
class Town:
    root: Path
    train: list[str]
    pairs: list[tuple[str, str]]
    variants: dict[str, str]

    @property
    def held_out(self) -> list[str]:
        return [s for pair in self.pairs for s in pair]

    def cross_runs(self) -> list[tuple[str, str]]:
        """(query drive, map drive): each held-out drive on its partner's map, both ways."""
        return [run for a, b in self.pairs for run in ((b, a), (a, b))]


def make_town(opts: BenchOptions, console: Console) -> Town:
    synth = SynthOptions(
        town_seed=opts.town_seed,
        drives=opts.drives,
        held_out_drives=opts.held_out_drives,
        frames=opts.frames,
        frame_spacing_m=opts.spacing_m,
        size="small",
        blocks=opts.blocks,
        pairs="mixed",  # partners one lane over the same way, or the opposite way
        **opts.synth_extra,
    )
    summary = generate_dataset(opts.out / "data", synth)
    pairs = summary.pairs(role="test")
    if len(pairs) < 2:
        raise ConfigError(
            f"the town has {len(pairs)} pair(s) of held-out drives; the benchmark needs 2 or more "
            "(at least 4 held-out drives)"
        )
    variants = {s.name: s.variant for s in summary.sequences}
    made = "reused" if summary.reused else f"{summary.seconds:.0f} s"
    console.print(
        f"town: {summary.frames_total} frames ({made}); "
        f"{len(summary.train_sequences())} training drives, held-out pairs "
        + ", ".join(f"{a}+{b} ({variants[b]})" for a, b in pairs)
    )
    return Town(summary.root, summary.train_sequences(), pairs, variants)


def lane_over(data_root: Path, query: str, map_sequence: str) -> np.ndarray:
    """(Q,) whether each query of ``query`` lies more than half a lane sideways of its nearest map scan."""
    reader = open_dataset(data_root)
    queries, _ = posed(reader.frames(query))
    database, _ = posed(reader.frames(map_sequence))
    return np.abs(sideways_offsets(queries, database)) > OTHER_LANE_M


TrainFn = Callable[[Config, Path], Any]


def train_once(config: Config, run_dir: Path, train_fn: TrainFn = train) -> dict[str, Any]:
    """Train into ``run_dir`` (or reuse a finished run of the same config there); steps and seconds."""
    record = run_dir / "accuracy_train.json"
    wanted = config.to_yaml()
    if record.is_file():
        done = json.loads(record.read_text())
        if done.get("config") == wanted:
            return {"steps": done["steps"], "seconds": done["seconds"], "reused": True}
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished or other run: train afresh, so the time is the whole
    started = time.perf_counter()
    result = train_fn(config, run_dir)
    seconds = time.perf_counter() - started
    steps = int(getattr(result, "step", 0))
    atomic_write_text(record, json.dumps({"config": wanted, "steps": steps, "seconds": seconds}))
    return {"steps": steps, "seconds": seconds, "reused": False}


def evaluate_model(run_dir: Path, town: Town, opts: BenchOptions) -> dict[str, Outcomes]:
    """Outcomes of one trained model per ``<row key>/<input>``, pooled over the held-out drives."""
    parts: dict[str, list[Outcomes]] = {f"{r.key}/{i}": [] for r in ROWS for i in INPUTS}
    ev = run_dir / "accuracy_eval"
    for drive in town.held_out:
        for exclude_self, thresholds in ((False, [20.0]), (True, [10.0])):
            single, seq = run_evaluation(
                run_dir, town.root, ev / f"{drive}-same{'-exclude-self' if exclude_self else ''}", drive,
                protocol="same-sequence", map_sequence=None, exclude_self=exclude_self,
                thresholds_m=thresholds, seq_len=opts.seq_len,
            )  # fmt: skip
            key = "kitti-b-like" if exclude_self else "paper"
            for inp, res in (("single", single), ("window", seq)):
                assert res is not None
                parts[f"{key}/{inp}"].append(outcomes(res, thresholds[0], exclude_self))
    for query, map_seq in town.cross_runs():
        single, seq = run_evaluation(
            run_dir, town.root, ev / f"{query}-on-{map_seq}", query,
            protocol="cross-drive", map_sequence=map_seq, exclude_self=False,
            thresholds_m=[10.0], seq_len=opts.seq_len,
        )  # fmt: skip
        over = lane_over(town.root, query, map_seq)
        if len(over) != single.num_queries:
            raise RuntimeError(
                f"{query}: {len(over)} posed frames but {single.num_queries} queries evaluated"
            )
        for inp, res in (("single", single), ("window", seq)):
            assert res is not None
            parts[f"cross-drive/{inp}"].append(outcomes(res, 10.0, False))
            parts[f"cross-drive-lane-over/{inp}"].append(outcomes(res, 10.0, False, over))
    return {key: Outcomes.join(p) for key, p in parts.items()}


def held_out_depth_error(run_dir: Path, town: Town) -> dict[str, float] | None:
    """Depth error of a model with a depth head (the geometry bridge's methods) on the held-out
    drives' frames against their scans projected into the image, every pixel with a return once
    (pooled over the drives, as validation pools them); None for a model without one."""
    import torch
    from torch.utils.data import DataLoader

    from liploc.models.depth_head import depth_error_sums, pooled_depth_metrics
    from liploc.runtime.frame_dataset import PairDataset
    from liploc.runtime.run_folder import load_model_from_checkpoint

    model, config = load_model_from_checkpoint(run_dir)
    if config.model.method != "bridge":
        return None
    reader = open_dataset(town.root)
    frames = [f for drive in town.held_out for f in posed(reader.frames(drive))[0]]
    dataset = PairDataset(frames, config, train=False)
    sums = np.zeros(4)  # depth_error_sums added up over the batches
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=32):
            _, depth = model.predict_depth(dataset.device_inputs(batch, "image", torch.device("cpu")))
            sums += depth_error_sums(depth, batch["depth"], max_depth=config.model.bridge.max_depth)
    m = pooled_depth_metrics(sums)
    return {
        "abs_rel": m["abs_rel"],
        "rmse_m": m["rmse"],
        "delta1": m["delta1"],
        "pixels": int(sums[3]),
        "frames": len(frames),
    }


def zero_shot(run_dir: Path, kitti_root: Path) -> Outcomes:
    """The trained model on the real posed KITTI drive: same-sequence, 20 m, own scan in the database."""
    sequence = open_dataset(kitti_root).sequences()[0]
    single, _ = run_evaluation(
        run_dir, kitti_root, run_dir / "accuracy_eval" / "zero-shot-kitti", sequence,
        protocol="same-sequence", map_sequence=None, exclude_self=False, thresholds_m=[20.0], seq_len=None,
    )  # fmt: skip
    return outcomes(single, 20.0, False)


def localize_latency(run_dir: Path, data_root: Path, sequence: str, repeats: int) -> dict[str, Any]:
    """Median wall time of localizing one PNG in the map of ``sequence`` (CPU, map built first),
    on torch and on the map's ONNX export (``--backend auto``'s choice on a CPU)."""
    from liploc.localization.localize import Localizer, build_map
    from liploc.localization.map_folder import MapFolder
    from liploc.localization.onnx_localizer import OnnxLocalizer

    map_dir = run_dir / "accuracy_map"
    build_map(run_dir, data_root, [sequence], map_dir, device="cpu", onnx=True, force=True)
    images = [f.image_path for f in posed(open_dataset(data_root).frames(sequence))[0]]
    out: dict[str, Any] = {}
    # One backend after the other: onnxruntime's threads spin after each call and would slow
    # torch's if the calls were interleaved.
    for backend, loc in (
        ("torch", Localizer.open(map_dir, device="cpu")),
        ("onnx", OnnxLocalizer.open(map_dir) if MapFolder(map_dir).onnx_dir.is_dir() else None),
    ):
        if loc is None:
            continue
        loc.localize([images[0]])  # warm-up: first-call allocations
        seconds = []
        for i in range(repeats):
            started = time.perf_counter()
            loc.localize([images[i % len(images)]])
            seconds.append(time.perf_counter() - started)
        ms = np.array(seconds) * 1000
        prefix = "" if backend == "torch" else "onnx_"
        out[f"{prefix}median_ms"], out[f"{prefix}p90_ms"] = float(np.median(ms)), float(np.percentile(ms, 90))
        out["map_scans"] = len(loc.lidar_map)
    return {
        **out,
        "repeats": repeats,
        "what": "localize of one PNG file on the CPU (decode, resize, camera tower, search): "
        "Localizer (torch) and OnnxLocalizer (the map's ONNX export)",
    }


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def run_method(
    name: str, method: Method, town: Town, opts: BenchOptions, console: Console, train_fn: TrainFn
) -> dict[str, Any]:
    """Train the method's seeds and evaluate each; its figures (or why it has none)."""
    out: dict[str, Any] = {
        "config": str(method.config) if method.config else None,
        "overrides": list(method.overrides),
        "role": method.role,
        "note": method.note,
    }
    try:
        base = method_config(name, method, opts.extra_overrides)
    except ConfigError as err:
        console.print(f"[yellow]{name}: not available ({err})[/]")
        return {**out, "available": False, "why": f"not available: {err}"}
    seeds = list(range(opts.seeds if method.role == "main" else opts.ablation_seeds))
    per_seed: dict[str, list[Outcomes]] = {}
    trained: list[dict[str, Any]] = []
    latency: dict[str, Any] | None = None
    depth_errors: list[dict[str, float]] = []
    zero_why = None
    try:
        for seed in seeds:
            config = base.model_copy(deep=True)
            config.name = f"accuracy-{name}-seed{seed}"
            config.data.datasets = [DatasetSplit(layout="kitti", root=town.root, train=town.train)]
            if not method.own_epochs:
                config.train.epochs = opts.epochs
            config.train.max_steps = opts.max_steps
            config.train.seed = seed
            run_dir = opts.out / "runs" / f"{name}-seed{seed}"
            with pinned_torch_threads(opts.threads):
                info = train_once(config, run_dir, train_fn)
                console.print(
                    f"{name} seed {seed}: {info['steps']} steps in {info['seconds'] / 60:.1f} min"
                    + (" (reused)" if info["reused"] else "")
                )
                for key, o in evaluate_model(run_dir, town, opts).items():
                    per_seed.setdefault(key, []).append(o)
                depth_error = held_out_depth_error(run_dir, town)
                if depth_error is not None:
                    depth_errors.append(depth_error)
                if opts.kitti_root is not None and opts.kitti_root.is_dir():
                    per_seed.setdefault(ZERO_SHOT.key, []).append(zero_shot(run_dir, opts.kitti_root))
                else:
                    zero_why = f"no posed KITTI drive at {opts.kitti_root}"
                if latency is None:
                    latency = localize_latency(run_dir, town.root, town.held_out[0], opts.latency_repeats)
            trained.append({"seed": seed, **info})
    except Exception as err:  # a method that breaks is reported, the others still run
        console.print(f"[red]{name}: failed ({type(err).__name__}: {err})[/]")
        return {
            **out,
            "available": False,
            "why": f"failed: {type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=5),
        }
    figures = {key: summarize(outs) for key, outs in per_seed.items()}
    return {
        **out,
        "available": True,
        "seeds": seeds,
        "train": trained,
        "train_seconds_mean": float(np.mean([t["seconds"] for t in trained])),
        "train_steps": [t["steps"] for t in trained],
        "localize_latency": latency,
        "held_out_depth": _depth_summary(depth_errors),
        "figures": figures,
        **({"zero_shot_why_missing": zero_why} if zero_why else {}),
    }


def _latency_text(latency: dict[str, Any] | None) -> str | None:
    """``torch / onnx`` medians of one localize call (onnx absent from runs made before it)."""
    if not latency:
        return None
    onnx = latency.get("onnx_median_ms")
    return f"{latency['median_ms']:.1f} ms" + (f" / onnx {onnx:.1f} ms" if onnx is not None else "")


def _depth_summary(per_seed: list[dict[str, float]]) -> dict[str, Any] | None:
    """Mean over seeds of the held-out depth error, and each seed's (None: no depth head)."""
    if not per_seed:
        return None
    return {
        "abs_rel_mean": float(np.mean([d["abs_rel"] for d in per_seed])),
        "rmse_m_mean": float(np.mean([d["rmse_m"] for d in per_seed])),
        "delta1_mean": float(np.mean([d["delta1"] for d in per_seed])),
        "per_seed": per_seed,
        "what": "predicted depth against the scan projected into the image, held-out drives, "
        "every pixel with a return once",
    }


def figure_meta(row: ProtocolRow, inp: str, opts: BenchOptions) -> dict[str, Any]:
    """What a figure is: protocol, threshold, own scan in the database, queries, input."""
    seq = inp == "window"
    return {
        "protocol": row.protocol,
        "protocol_label": row.label,
        "threshold_m": row.threshold_m,
        "own_scan_in_database": row.own_scan_in_database,
        "query_subset": row.queries,
        "input": f"{opts.window_m:g} m window" if seq else "single image",
        "seq_len": opts.seq_len if seq else 1,
        "odometry_noise": 0.1 if seq else None,
        "data": "real KITTI raw drive 2011_09_26_drive_0013_sync (24 frames)"
        if row is ZERO_SHOT
        else "held-out drives of the synthetic town",
    }


def run_benchmark(
    opts: BenchOptions,
    methods: dict[str, Method],
    console: Console | None = None,
    train_fn: TrainFn | None = None,
) -> dict[str, Any]:
    """Every figure of every method, as the JSON the benchmark prints."""
    console = console or Console()
    train_fn = train_fn or (lambda config, run_dir: train(config, run_dir, progress=False))
    started = time.perf_counter()
    load_start = os.getloadavg()
    town = make_town(opts, console)
    results = {name: run_method(name, m, town, opts, console, train_fn) for name, m in methods.items()}
    figures_meta = {f"{r.key}/{i}": figure_meta(r, i, opts) for r in ROWS for i in INPUTS}
    figures_meta[ZERO_SHOT.key] = figure_meta(ZERO_SHOT, "single", opts)
    for res in results.values():  # every figure names its protocol, threshold, own scan
        for key, fig in res.get("figures", {}).items():
            fig.update(figures_meta[key])
    return {
        "benchmark": "accuracy",
        "quick": opts.quick,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "town": {
            "root": str(town.root),
            "training_drives": len(town.train),
            "held_out_pairs": [
                {"drive": a, "partner": b, "partner_is": town.variants[b]} for a, b in town.pairs
            ],
            "frames_per_drive": opts.frames,
            "spacing_m": opts.spacing_m,
        },
        "figures": figures_meta,
        "methods": results,
        "machine": {
            "cores": os.cpu_count(),
            "load_average_start": round(load_start[0], 1),
            "load_average_end": round(os.getloadavg()[0], 1),
            "torch_threads": opts.threads,
        },
        "seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def cell(fig: dict[str, Any] | None) -> str:
    """``0.523 ± 0.031`` over ``[0.49, 0.56]`` (one seed: no ±)."""
    if fig is None or fig.get("recall_at_1_mean") is None:
        return "n/a"
    std = fig.get("recall_at_1_std")
    lo, hi = fig["wilson95"]
    top = f"{fig['recall_at_1_mean']:.3f}" + (f" ± {std:.3f}" if std is not None else "")
    return f"{top}\n[{lo:.2f}, {hi:.2f}]"


def build_table(payload: dict[str, Any]) -> Table:
    """Rows: protocol and input; columns: chance, then each method."""
    methods = payload["methods"]
    table = Table(title="R@1 on held-out streets: mean ± std over seeds, [95 % Wilson interval]")
    table.add_column("protocol", min_width=26, max_width=30)
    table.add_column("input", no_wrap=True)
    table.add_column("chance", justify="right")
    for name in methods:
        table.add_column(name, justify="right", no_wrap=True)

    def unavailable(res: dict[str, Any]) -> str:
        return "failed" if res["why"].startswith("failed") else "not available"

    def chance_of(key: str) -> str:
        for res in methods.values():
            fig = res.get("figures", {}).get(key)
            if fig is not None and fig.get("chance_at_1") is not None:
                return f"{fig['chance_at_1']:.3f}"
        return "n/a"

    meta = payload["figures"]
    for row in (*ROWS, ZERO_SHOT):
        inputs = INPUTS if row is not ZERO_SHOT else ("single",)
        for inp in inputs:
            key = f"{row.key}/{inp}" if row is not ZERO_SHOT else row.key
            m = meta[key]
            title = (
                f"{row.title}: {row.threshold_m:g} m, own scan {'in' if row.own_scan_in_database else 'out'}"
            )
            if row.protocol == "cross-drive":
                title = f"{row.title}: {row.threshold_m:g} m"
            cells = [
                cell(res["figures"].get(key)) if res["available"] else unavailable(res)
                for res in methods.values()
            ]
            table.add_row(title if inp == inputs[0] else "", m["input"], chance_of(key), *cells)
        table.add_section()

    def summary_row(title: str, per: str, text: Callable[[dict[str, Any]], str | None], missing: str) -> None:
        """A row of one figure per method: ``text`` of an available method's results, ``missing``
        where it gives None."""
        cells = []
        for res in methods.values():
            shown = text(res) if res["available"] else None
            cells.append(shown if shown is not None else (missing if res["available"] else unavailable(res)))
        table.add_row(title, per, "", *cells)

    summary_row("training wall time", "per seed", lambda r: f"{r['train_seconds_mean'] / 60:.1f} min", "n/a")
    summary_row(
        "localize latency",
        "one image",
        lambda r: _latency_text(r.get("localize_latency")),
        "n/a",
    )
    summary_row(
        "depth AbsRel / RMSE",
        "held-out drives",
        lambda r: (
            f"{r['held_out_depth']['abs_rel_mean']:.3f} / {r['held_out_depth']['rmse_m_mean']:.2f} m"
            if r.get("held_out_depth")
            else None
        ),
        "no depth head",
    )
    table.caption = caption(payload)
    return table


def caption(payload: dict[str, Any]) -> str:
    town, methods, machine = payload["town"], payload["methods"], payload["machine"]
    seeds = {name: len(res["seeds"]) for name, res in methods.items() if res["available"]}
    queries = {}
    for res in methods.values():
        for key, fig in res.get("figures", {}).items():
            queries.setdefault(key, fig["queries_per_seed"][0] if fig["queries_per_seed"] else 0)
    pairs = ", ".join(f"{p['drive']}+{p['partner']} ({p['partner_is']})" for p in town["held_out_pairs"])
    parts = [
        f"{town['training_drives']} training drives; held-out pairs {pairs}; "
        f"{town['frames_per_drive']} frames {town['spacing_m']:g} m apart",
        "queries per seed: "
        + ", ".join(
            f"{k.split('/')[0]} {n}" for k, n in queries.items() if k.endswith("/single") or "/" not in k
        ),
        f"seeds: {', '.join(f'{n} {s}' for n, s in seeds.items())}; "
        f"{payload['options']['epochs']} epochs each",
        "± std over seeds; [ ] 95 % Wilson interval on the hits pooled over seeds and queries; chance: "
        "R@1 of a random pick; window: sequence matching over the last "
        f"{payload['options']['window_m']:g} m (odometry, 10 % noise); one lane over: > {OTHER_LANE_M:g} m "
        "sideways of the nearest map scan",
        "latency: median of localizing one PNG (CPU, map of one held-out drive) on torch / on the "
        "map's ONNX export (auto's choice on a CPU)",
        f"machine: {machine['cores']} cores, load average {machine['load_average_start']} at start, "
        f"{machine['load_average_end']} at end; torch on {machine['torch_threads']} threads",
    ]
    for name, res in methods.items():
        if not res["available"]:
            parts.append(f"{name}: {res['why']}")
    return ".\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="default runs/accuracy (--quick: runs/accuracy_quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 seed, 12 drives of 60 frames, 3 epochs"
    )
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated, of {', '.join(METHODS)} (default: all but "
        f"{', '.join(n for n, m in METHODS.items() if m.own_epochs)}, which train their own budget)",
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds of the main methods (default 3)")
    parser.add_argument("--ablation-seeds", type=int, default=None, help="seeds of the ablations (default 1)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--drives", type=int, default=None, help="all drives, held-out ones included")
    parser.add_argument("--held-out-drives", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None, help="frames per drive")
    parser.add_argument("--latency-repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the README's machine: 2)")
    parser.add_argument("--kitti-root", type=Path, default=KITTI_POSED, help="the zero-shot drive")
    args = parser.parse_args()
    default = [n for n, m in METHODS.items() if not m.own_epochs]  # their own budget: asked for by name
    names = [n.strip() for n in args.methods.split(",") if n.strip()] if args.methods else default
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        parser.error(
            f"--methods: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(METHODS)}"
        )
    flags = ("seeds", "ablation_seeds", "epochs", "drives", "held_out_drives", "frames", "latency_repeats")
    given = {flag: getattr(args, flag) for flag in flags if getattr(args, flag) is not None}
    opts = BenchOptions(
        **{**(QUICK if args.quick else {}), **given},
        out=args.out or Path("runs/accuracy_quick" if args.quick else "runs/accuracy"),
        quick=args.quick,
        threads=args.threads,
        kitti_root=args.kitti_root,
    )
    console = Console()
    console.print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start (shared machine: "
        "times are noisy, recall is not)"
    )
    payload = run_benchmark(opts, {n: METHODS[n] for n in names}, console)
    atomic_write_text(opts.out / "accuracy.json", json.dumps(payload, indent=2))  # tracebacks too
    table = build_table(payload)
    # As wide as the table needs (five method columns pass 132): a log keeps every column.
    width = max(console.width, Console(width=1000).measure(table).maximum)
    Console(width=width).print(table)
    console.print(f"all figures: {opts.out / 'accuracy.json'}")
    for res in payload["methods"].values():
        res.pop("traceback", None)
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
