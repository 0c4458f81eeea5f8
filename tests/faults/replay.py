"""Replay the kill-at-instant probes of issue 15 and print each probe with its outcome.

Each probe runs a real ``liploc`` command in a subprocess with ``LIPLOC_FAULT_KILL_AT`` naming an
instant (see ``liploc.faults``): the process SIGKILLs itself there, as a power cut or the OOM
killer would. The probe then checks what a user would do next: resume the run at once, open the
map, rerun the command, and that nothing is mixed, stuck or left behind.

    PYTHONPATH=src .venv/bin/python tests/faults/replay.py [--only NAME] [--keep DIR]

Prints one line per probe (``PASS``/``FAIL`` with what was seen); last line JSON; exit status 1 if
any probe failed. A probe takes a few seconds (each command starts Python and torch).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))

TRAIN_SETTINGS = [
    "--set", "data.num_workers=0",
    "--set", "data.image_size=[32, 32]",
    "--set", "train.checkpoint_every_steps=1",
    "--set", "train.log_every=1",
]  # fmt: skip


@dataclass
class Outcome:
    probe: str
    ok: bool
    detail: str


def liploc(
    *args: str, kill_at: str | None = None, cache: Path, timeout: float = 600
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "OMP_NUM_THREADS": "1",
        "LIPLOC_CACHE_DIR": str(cache),
    }
    env.pop("LIPLOC_FAULT_KILL_AT", None)
    if kill_at:
        env["LIPLOC_FAULT_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "liploc", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def make_world(folder: Path) -> Path:
    from corridor_world import write_corridor

    write_corridor(folder, "00", 64, seed=0)
    write_corridor(folder, "01", 16, seed=100)
    return folder


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".old"))


def train_args(run: Path, steps: int, world: Path | None = None) -> list[str]:
    head = ["train", str(REPO / "configs" / "tiny.yaml"), "--data-root", str(world), "--out", str(run)]
    if world is None:
        head = ["train", str(run), "--resume"]
    return [*head, "--no-progress", *TRAIN_SETTINGS, "--set", f"train.max_steps={steps}"]


def probe_checkpoint_instant(instant: str, base: Path, work: Path, cache: Path) -> Outcome:
    from liploc.runtime.checkpoint import load_checkpoint

    run = work / f"run-{instant}"
    shutil.copytree(base, run)
    killed = liploc(*train_args(run, 3), kill_at=instant, cache=cache)
    if killed.returncode != -signal.SIGKILL:
        return Outcome(
            instant, False, f"expected a SIGKILL, got exit {killed.returncode}: {killed.stderr[-300:]}"
        )
    step_after_kill = load_checkpoint(run / "checkpoints" / "last.safetensors")[1]["step"]
    resumed = liploc(*train_args(run, 3), cache=cache)
    if resumed.returncode != 0:
        return Outcome(instant, False, f"resume after the kill failed: {resumed.stderr.strip()[-300:]}")
    final = load_checkpoint(run / "checkpoints" / "last.safetensors")[1]["step"]
    left = leftovers(run)
    ok = final == 3 and not left
    return Outcome(
        instant,
        ok,
        f"killed at step-2 save; checkpoint then at step {step_after_kill}; resumed at once to step {final}"
        + (f"; leftovers {left}" if left else "; no leftovers"),
    )


def probe_second_writer(base: Path, work: Path, cache: Path) -> Outcome:
    run = work / "run-two-writers"
    shutil.copytree(base, run)
    env_args = train_args(run, 400)
    first = subprocess.Popen(
        [sys.executable, "-m", "liploc", *env_args],
        env={
            **os.environ,
            "PYTHONPATH": str(REPO / "src"),
            "OMP_NUM_THREADS": "1",
            "LIPLOC_CACHE_DIR": str(cache),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (run / ".lock").read_text().startswith(f"pid {first.pid}"):
            time.sleep(0.2)
        second = liploc(*train_args(run, 400), cache=cache)
        refused = second.returncode == 1 and f"pid {first.pid}" in second.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        third = liploc(*train_args(run, 3 + 0), cache=cache)
        ok = refused and third.returncode == 0
        return Outcome(
            "run.second_writer",
            ok,
            (
                "second writer refused naming the holder; "
                if refused
                else f"NOT refused: {second.stderr[-200:]}; "
            )
            + f"after SIGKILL of the holder a resume {'ran at once' if third.returncode == 0 else 'failed'}",
        )
    finally:
        first.kill()
        first.wait(30)


def probe_random_kill(base: Path, straight: Path, work: Path, cache: Path, seed: int) -> Outcome:
    import torch

    from liploc.runtime.checkpoint import load_checkpoint

    run = work / f"run-random-{seed}"
    shutil.copytree(base, run)
    delay = random.Random(seed).uniform(0.0, 1.0)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "OMP_NUM_THREADS": "1",
        "LIPLOC_CACHE_DIR": str(cache),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "liploc", *train_args(run, 8)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # Kill at a random instant once training is under way (start-up time varies with the load).
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        rows = (run / "metrics.csv").read_text().count("\n") if (run / "metrics.csv").exists() else 0
        if rows >= 3:  # header, step 1 (from the base run), step 2 of this one
            break
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    at_kill = load_checkpoint(run / "checkpoints" / "last.safetensors")[1]["step"]
    resumed = liploc(*train_args(run, 8), cache=cache)
    if resumed.returncode != 0:
        return Outcome(f"train.random_kill_{seed}", False, f"resume failed: {resumed.stderr[-300:]}")
    a, _ = load_checkpoint(straight / "checkpoints" / "last.safetensors")
    b, _ = load_checkpoint(run / "checkpoints" / "last.safetensors")
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return Outcome(
        f"train.random_kill_{seed}",
        same and not leftovers(run),
        f"SIGKILL {delay:.2f} s after step 2 (checkpoint then at step {at_kill}); resumed to step 8: "
        + (
            "bit-exact with the uninterrupted run" if same else "DIFFERENT weights from the uninterrupted run"
        ),
    )


def probe_map_instant(instant: str, base: Path, world: Path, work: Path, cache: Path) -> Outcome:
    from liploc.localization.localize import Localizer

    maps = work / f"maps-{instant}"
    args = ["map", "build", str(base), "--data-root", str(world), "--sequence", "01", "--device", "cpu"]
    first = liploc(*args, "--out", str(maps / "m"), cache=cache)
    if first.returncode != 0:
        return Outcome(instant, False, f"first build failed: {first.stderr[-300:]}")
    killed = liploc(*args, "--out", str(maps / "m"), "--force", kill_at=instant, cache=cache)
    if killed.returncode != -signal.SIGKILL:
        return Outcome(
            instant, False, f"expected a SIGKILL, got exit {killed.returncode}: {killed.stderr[-300:]}"
        )
    try:
        size = len(Localizer.open(maps / "m").lidar_map)
        readable = f"map readable with its model ({size} scans)"
    except Exception as err:
        return Outcome(instant, False, f"map unreadable after the kill: {err}")
    stale = leftovers(maps)
    again = liploc(*args, "--out", str(maps / "m"), "--force", cache=cache)
    left = leftovers(maps)
    ok = again.returncode == 0 and not left
    return Outcome(
        instant,
        ok,
        f"{readable}; kill left {len(stale)} temporary folder(s); the next build "
        + ("swept them" if not left else f"left {left}"),
    )


def probe_cache_instant(world: Path, work: Path) -> Outcome:
    from liploc.checked_array import read_checked

    cache = work / "cache-probe"
    args = ["cache", "warm", str(REPO / "configs" / "tiny.yaml"), "--data-root", str(world), "--workers", "1"]
    args += ["--set", "data.image_size=[32, 32]", "--cache-dir", str(cache)]
    killed = liploc(*args, kill_at="cache.entry_written", cache=cache)
    if killed.returncode == 0:
        return Outcome("cache.entry_written", False, "the warm was not killed")
    again = liploc(*args, cache=cache)
    entries = list(cache.rglob("*.npy"))
    bad = 0
    for entry in entries:
        try:
            read_checked(entry)
        except Exception:
            bad += 1
    ok = again.returncode == 0 and bad == 0 and not leftovers(cache) and len(entries) == 2 * 80
    return Outcome(
        "cache.entry_written",
        ok,
        f"warm killed after its first entry; rerun filled {len(entries)} entries, "
        f"{bad} failing their checksum",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only the probes whose name contains this")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="liploc-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "user-cache"
    world = make_world(work / "world")
    base = work / "base"
    setup = liploc(*train_args(base, 1, world), cache=cache)
    if setup.returncode != 0:
        print(f"set-up training failed: {setup.stderr[-500:]}")
        return 1

    from liploc.faults import INSTANTS

    probes: list[tuple[str, Callable[[], Outcome]]] = []
    for instant in INSTANTS:
        if instant.startswith("checkpoint."):
            probes.append((instant, lambda i=instant: probe_checkpoint_instant(i, base, work, cache)))
        elif instant.startswith("map."):
            probes.append((instant, lambda i=instant: probe_map_instant(i, base, world, work, cache)))
    probes.append(("cache.entry_written", lambda: probe_cache_instant(world, work)))
    probes.append(("run.second_writer", lambda: probe_second_writer(base, work, cache)))

    def random_probe(seed: int) -> Outcome:
        straight = work / "straight"
        if not straight.exists():
            shutil.copytree(base, straight)
            liploc(*train_args(straight, 8), cache=cache)
        return probe_random_kill(base, straight, work, cache, seed)

    for seed in (1, 2):
        probes.append((f"train.random_kill_{seed}", lambda s=seed: random_probe(s)))

    outcomes = []
    for name, run in probes:
        if args.only and args.only not in name:
            continue
        start = time.monotonic()
        outcome = run()
        outcomes.append(outcome)
        print(
            f"{'PASS' if outcome.ok else 'FAIL'}  {outcome.probe:28s} {outcome.detail} "
            f"({time.monotonic() - start:.0f} s)"
        )
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"probes": len(outcomes), "failed": [o.probe for o in outcomes if not o.ok]}))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
