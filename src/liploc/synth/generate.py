"""``generate_dataset``: a town, its drives, rendered and written in the KITTI odometry layout.

Frames are rendered by a pool of threads (Embree and numpy release the GIL); each frame depends only
on the town, its drive and its own seeded noise, so the files do not depend on the thread count.
Everything is written into a hidden staging folder first and moved into place at the end, so an
interrupted run never leaves a half-written dataset that looks complete.

Crash safety, step by step:

- each frame's files are written under temporary names and renamed, so a frame on disk is whole;
- the staging folder records the options it renders (``options.json``): a rerun with the same
  options keeps the frames already there and renders only the rest (byte-identical to an
  uninterrupted run, since each frame has its own seeded noise); ``--force`` starts over;
- the finished stage gets its README and manifest *before* anything moves, so a kill while the
  sequences move into place leaves a complete stage that the next run (or ``--force``) finishes
  moving instead of refusing the folder; a ``.liploc-synth`` marker says that the folder is ours.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from liploc.atomic import atomic_write_text
from liploc.errors import DataError
from liploc.synth.camera_model import CameraModel
from liploc.synth.cars import drive_cars
from liploc.synth.drives import DrivePlan, plan_grid_drives, plan_trajectory_drives
from liploc.synth.lidar_model import LidarModel, simulate_scan
from liploc.synth.meshes import TriangleMesh
from liploc.synth.options import SynthOptions
from liploc.synth.readme import readme_text
from liploc.synth.rig import kitti_rig
from liploc.synth.scene import Scene
from liploc.synth.summary import MANIFEST_NAME, SequenceSummary, SynthSummary, load_summary
from liploc.synth.town import Town, build_grid_town, build_town_along_path
from liploc.synth.trajectory import flatten, read_trajectory, street_centre_line
from liploc.synth.writer import image_path, scan_path, write_frame, write_sequence_files

Progress = Callable[[int, int], None]
"""Called with (frames done, frames in total) as frames are written."""

_STAGING = ".synth-partial"
_STAGE_OPTIONS = "options.json"
_OWNER_MARK = ".liploc-synth"
_PARTIAL_SUFFIX = ".part"


def default_workers() -> int:
    """Render threads: one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def generate_dataset(
    out_dir: str | Path,
    options: SynthOptions | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    reuse: bool = True,
    notify: Callable[[str], None] | None = None,
) -> SynthSummary:
    """Generate a synthetic town and its drives as a KITTI odometry folder in ``out_dir``.

    Args:
        out_dir: output folder (created). Earlier ``liploc synth`` output there is replaced; a
            folder holding another dataset is refused.
        options: what to generate (defaults: ``SynthOptions()``).
        progress: called with (frames done, frames in total).
        workers: render threads (default: one per core).
        reuse: when ``out_dir`` already holds a complete output of the same options, keep it
            (generation is deterministic, so it would come out byte-identical), and resume an
            interrupted run of the same options from the frames it wrote. False starts over.
        notify: called with one line when an interrupted run is resumed or finished.

    Returns:
        The summary, also written as ``synth.json`` with a README.md.
    """
    options = options or SynthOptions()
    root = Path(out_dir)
    _check_output_folder(root)
    if reuse and finish_publishing(root) and notify is not None:
        notify(f"finished moving the output of an interrupted run into {root}")
    if reuse:
        previous = _reusable(root, options)
        if previous is not None:
            if progress is not None:
                progress(previous.frames_total, previous.frames_total)
            return previous

    started = time.perf_counter()
    town, plans = build_town_and_drives(options)
    rig = kitti_rig(options.resolved_image_scale)
    camera = CameraModel(rig, options.resolved_supersample, options.shadows, seed=town.seed)
    lidar = LidarModel(columns=options.resolved_lidar_columns)

    render_started = time.perf_counter()
    stage = root / _STAGING
    kept = _open_stage(root, stage, options, resume=reuse)
    total = sum(len(p.poses) for p in plans)
    if kept and notify is not None:
        notify(f"resuming: {kept} of {total} frames already rendered in {stage}")
    car_counts = _render_drives(stage, town, plans, options, (camera, lidar), workers, progress)
    finished = time.perf_counter()
    seconds = finished - started
    render_seconds = finished - render_started

    summary = SynthSummary(
        root=root,
        town_seed=options.town_seed,
        options=options.model_dump(mode="json"),
        town=_describe_town(town, options),
        sequences=[_describe_drive(p, plans, car_counts[p.index]) for p in plans],
        image_size=rig.image_size,
        lidar_columns=lidar.columns,
        pose_frame=options.pose_frame,
        frames_total=total,
        seconds=seconds,
        frames_per_s=(total - kept) / render_seconds if render_seconds > 0 else 0.0,
        notes=_notes(options),
    )
    _publish(stage, root, summary)
    return summary


def _render_drives(
    stage: Path,
    town: Town,
    plans: list[DrivePlan],
    options: SynthOptions,
    sensors: tuple[CameraModel, LidarModel],
    workers: int | None,
    progress: Progress | None,
) -> dict[int, dict[str, int]]:
    """Render and write every frame of ``plans`` not yet in ``stage`` with ``sensors``; the cars
    of each drive, by drive index."""
    camera, lidar = sensors
    total = sum(len(p.poses) for p in plans)
    done = 0
    car_counts: dict[int, dict[str, int]] = {}
    first_car_id = int(town.mesh.parts.object_id.max(initial=-1)) + 1
    pool = ThreadPoolExecutor(max_workers=workers or default_workers())

    def build_scene(plan: DrivePlan) -> tuple[Scene, dict[str, int]]:
        rng = np.random.default_rng(plan.cars_seed)
        cars, counts = drive_cars(town.slots, town.streets, plan.path, rng, first_car_id)
        return Scene(TriangleMesh.concatenate([town.mesh, cars]), town.ground), counts

    try:
        # Each drive's scene (its cars, the ray-casting structure) is built by a pool thread while
        # the frames of the drive before are rendered, so that no thread waits for it.
        upcoming = pool.submit(build_scene, plans[0]) if plans else None
        for i, plan in enumerate(plans):
            scene, car_counts[plan.index] = upcoming.result()
            upcoming = pool.submit(build_scene, plans[i + 1]) if i + 1 < len(plans) else None
            write_sequence_files(stage, plan.name, camera.rig, plan.poses, options.pose_frame)
            todo = [k for k in range(len(plan.poses)) if not _frame_written(stage, plan.name, k)]
            done += len(plan.poses) - len(todo)
            if progress is not None:
                progress(done, total)

            def render(k: int, plan: DrivePlan = plan, scene: Scene = scene) -> None:
                rng = np.random.default_rng([options.town_seed, 1000, plan.index, k])
                image = camera.render(scene, plan.poses[k], plan.lighting, rng).image
                scan = simulate_scan(scene, plan.poses[k], lidar, rng)
                write_frame(stage, plan.name, k, image, scan.points, options.png_compression)

            for _ in pool.map(render, todo):
                done += 1
                if progress is not None:
                    progress(done, total)
    finally:
        # On an error or Ctrl-C, drop the frames not started instead of rendering them all first.
        pool.shutdown(wait=True, cancel_futures=True)
    return car_counts


def build_town_and_drives(options: SynthOptions) -> tuple[Town, list[DrivePlan]]:
    """The town and the planned drives of ``options`` (no rendering)."""
    if options.trajectory is not None:
        poses = flatten(read_trajectory(options.trajectory, options.trajectory_calib))
        if options.frames:
            poses = poses[: options.frames]
        town = build_town_along_path(options.town_seed, street_centre_line(poses))
        plans = plan_trajectory_drives(
            poses, options.drives, options.held_out_drives, options.pairs, options.town_seed
        )
        return town, plans
    town = build_grid_town(options.town_seed, options.blocks, options.held_out_columns)
    plans = plan_grid_drives(
        town.streets,
        options.drives,
        options.held_out_drives,
        options.frames,
        options.frame_spacing_m,
        options.pairs,
        options.town_seed,
    )
    return town, plans


def _check_output_folder(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise DataError(root, "output path exists and is not a folder")
    ours = any((root / p).exists() for p in (MANIFEST_NAME, _OWNER_MARK, f"{_STAGING}/{MANIFEST_NAME}"))
    if (root / "sequences").exists() and not ours:
        raise DataError(root, "holds a dataset that liploc synth did not write; choose another output folder")


def _open_stage(root: Path, stage: Path, options: SynthOptions, resume: bool) -> int:
    """Prepare the staging folder; return how many whole frames of the same options it keeps."""
    wanted = json.dumps(options.model_dump(mode="json"), sort_keys=True)
    if resume and stage.is_dir():
        try:
            recorded = (stage / _STAGE_OPTIONS).read_text(encoding="utf-8")
        except OSError:
            recorded = None
        if recorded == wanted:
            return sum(1 for _ in stage.glob("sequences/*/velodyne/*.bin"))
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    # Marks the output folder as written by liploc synth before any sequence can appear in it.
    (root / _OWNER_MARK).write_text("written by liploc synth\n", encoding="utf-8")
    atomic_write_text(stage / _STAGE_OPTIONS, wanted)
    return 0


def _frame_written(stage: Path, name: str, index: int) -> bool:
    # The scan is renamed into place after the image: a frame with its scan is whole.
    return scan_path(stage, name, index).is_file() and image_path(stage, name, index).is_file()


def resume_hint(out_dir: str | Path) -> str:
    """One line after an interrupted ``liploc synth``: what was kept and how to go on."""
    stage = Path(out_dir) / _STAGING
    kept = sum(1 for _ in stage.glob("sequences/*/velodyne/*.bin")) if stage.is_dir() else 0
    if not kept:
        return "no frame was finished; nothing kept"
    return (
        f"{kept} rendered frames kept in {stage}; run the same command again to resume (--force starts over)"
    )


def _reusable(root: Path, options: SynthOptions) -> SynthSummary | None:
    if not (root / MANIFEST_NAME).is_file():
        return None
    try:
        previous = load_summary(root)
    except DataError:
        return None
    if previous.options != options.model_dump(mode="json"):
        return None
    for seq in previous.sequences:
        last = seq.frames - 1
        if not (image_path(root, seq.name, last).is_file() and scan_path(root, seq.name, last).is_file()):
            return None
    return previous


def _publish(stage: Path, root: Path, summary: SynthSummary) -> None:
    for leftover in stage.glob(f"sequences/*/*/*{_PARTIAL_SUFFIX}"):
        leftover.unlink()
    atomic_write_text(stage / "README.md", readme_text(summary))
    # From here the stage is complete: a run killed while moving it is finished by the next run.
    atomic_write_text(stage / MANIFEST_NAME, summary.to_json())
    finish_publishing(root)


def finish_publishing(root: Path) -> bool:
    """Move a complete staging folder's output into ``root``; False when there is none to move.

    Idempotent, so a kill at any instant of it is completed by calling it again. The old manifest
    goes first and the new one last: a manifest in ``root`` always describes the files there.
    """
    stage = root / _STAGING
    if not (stage / MANIFEST_NAME).is_file():
        return False
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    (root / "preview.png").unlink(missing_ok=True)  # a preview of the previous output
    for name in ("sequences", "poses"):
        if (stage / name).exists():
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            os.replace(stage / name, target)
    if (stage / "README.md").exists():
        os.replace(stage / "README.md", root / "README.md")
    os.replace(stage / MANIFEST_NAME, root / MANIFEST_NAME)
    shutil.rmtree(stage)
    (root / _OWNER_MARK).unlink(missing_ok=True)  # the manifest says it from now on
    return True


def _describe_town(town: Town, options: SynthOptions) -> dict:
    x0, y0, x1, y1 = town.bounds
    return {
        "kind": "trajectory" if options.trajectory is not None else "grid",
        "blocks": list(options.blocks) if options.trajectory is None else None,
        "bounds_m": [round(v, 1) for v in (x0, y0, x1, y1)],
        "street_length_m": round(town.streets.total_length(), 1),
        "street_segments": len(town.streets.edges),
        "parking_slots": len(town.slots),
        "triangles": len(town.mesh.faces),
        **town.counts,
    }


def _describe_drive(plan: DrivePlan, plans: list[DrivePlan], cars: dict[str, int]) -> SequenceSummary:
    shares: dict[str, float] = {}
    if plan.region == "trajectory":
        shares = {p.name: 1.0 for p in plans if p.index != plan.index}
    else:
        mine = set(plan.streets)
        for other in plans:
            if other.index == plan.index or not mine:
                continue
            common = mine & set(other.streets)
            if common:
                shares[other.name] = round(len(common) / len(mine), 2)
    return SequenceSummary(
        name=plan.name,
        role=plan.role,
        region=plan.region,
        variant=plan.variant,
        partner=None if plan.partner is None else f"{plan.partner:02d}",
        shares_streets_with=shares,
        frames=len(plan.poses),
        length_m=round(plan.length_m, 1),
        streets=list(plan.streets),
        lighting=plan.lighting.describe(),
        parked_cars=cars["parked"],
        traffic_cars=cars["traffic"],
    )


def _notes(options: SynthOptions) -> list[str]:
    notes = []
    if options.trajectory is not None:
        notes.append(
            "Trajectory drives are flattened: x, y and heading of the given poses, "
            "LiDAR 1.73 m above a flat road."
        )
    if options.pose_frame == "town":
        notes.append(
            "Poses of all sequences share the town frame (the first pose of a sequence is not the identity)."
        )
    return notes
