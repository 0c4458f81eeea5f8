"""Crash consistency of training runs: saves, resume fallback, one writer, leftovers, full disk."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny_runs
import torch
from corridor_world import corridor_fixture
from state_observer import observe_file_changes

from liploc import faults
from liploc.config import Config
from liploc.errors import DataError, LiplocError
from liploc.runtime.checkpoint import load_checkpoint, metadata_path
from liploc.runtime.run_folder import read_csv_rows
from liploc.training.train import train

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


corridor = corridor_fixture(64, 32)


def tiny_config(root: Path, *overrides: str) -> Config:
    return tiny_runs.tiny_config(root, "data.image_size=[32, 32]", *overrides)


def test_readers_and_resumes_never_see_a_mixed_checkpoint(corridor: Path, tmp_path: Path) -> None:
    # Every save: a reader (or a resume after a kill) at any instant between two file-system
    # operations finds a complete checkpoint whose weights match its metadata.
    run = tmp_path / "run"
    train(tiny_config(corridor, "train.max_steps=1"), run, progress=False)
    seen: list[int] = []

    def check(event: str) -> None:
        for kind in ("last", "best"):
            path = run / "checkpoints" / f"{kind}.safetensors"
            if metadata_path(path).exists() or path.exists():
                _, meta = load_checkpoint(path)  # raises on a mixed or partial pair
                seen.append(meta["step"])

    cfg = tiny_config(corridor, "train.max_steps=3", "train.checkpoint_every_steps=1")
    with observe_file_changes(check) as events:
        train(cfg, run, resume=True, progress=False)
    assert len(events) > 6 and max(seen) == 3


# --- kill -9: a real `liploc train` process SIGKILLed, then resumed --------------------------------
KILL_RUN = [
    "--no-progress",
    "--set", "data.num_workers=0",
    "--set", "data.image_size=[32, 32]",
    "--set", "train.batch_size=8",  # 8 steps per epoch on the 64 training pairs
    "--set", "train.max_steps=20",
    "--set", "train.checkpoint_every_steps=1",
    "--set", "train.log_every=1",
]  # fmt: skip
SAVE_INSTANTS = (
    "checkpoint.weights_written",
    "checkpoint.previous_kept",
    "checkpoint.manifest_renamed",
    "checkpoint.alias_linked",
)
"""The fault points of a checkpoint save (liploc.faults), in the order a save reaches them."""


def _train_command(run: Path, data: Path | None = None) -> list[str]:
    """``liploc train`` of :data:`tiny_runs.TINY` into ``run`` (``data``: a new run; None: ``--resume``)."""
    head = ["train", str(run), "--resume"]
    if data is not None:
        head = ["train", str(tiny_runs.TINY), "--data-root", str(data), "--out", str(run)]
    return [sys.executable, "-m", "liploc", *head, *KILL_RUN]


def _train_env(kill_at: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    env.pop(faults.ENV, None)
    if kill_at is not None:
        env[faults.ENV] = kill_at
    return env


def _last_step(run: Path) -> int:
    """The step of the run's last checkpoint; load_checkpoint raises on a partial or mixed one."""
    return load_checkpoint(run / "checkpoints" / "last.safetensors")[1]["step"]


def _logged_steps(run: Path) -> int:
    metrics = run / "metrics.csv"
    return max(metrics.read_text().count("\n") - 1, 0) if metrics.is_file() else 0


def test_kill_9_anywhere_then_resume_ends_bit_exact_with_an_uninterrupted_run(
    corridor: Path, tmp_path: Path
) -> None:
    # SIGKILL, as a power cut or the OOM killer: no handler, no rollback, nothing after it runs.
    # The uninterrupted run trains meanwhile (another process, the same command).
    straight_log = (tmp_path / "straight.log").open("w")
    straight = subprocess.Popen(
        _train_command(tmp_path / "straight", corridor),
        env=_train_env(),
        stdout=straight_log,
        stderr=subprocess.STDOUT,
    )
    run = tmp_path / "killed"
    try:
        # 1. Killed from outside once step 2 is logged: wherever it is in a step or a save.
        proc = subprocess.Popen(_train_command(run, corridor), env=_train_env(), stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300  # bounds a failure only
            while _logged_steps(run) < 2:
                assert proc.poll() is None, f"training ended (exit {proc.returncode}) before step 2"
                assert time.monotonic() < deadline, "no step 2 logged"
                time.sleep(0.01)
        finally:
            proc.kill()
            proc.wait(60)
        assert proc.returncode == -signal.SIGKILL
        steps = [_last_step(run)]
        assert 1 <= steps[0] <= 6, steps  # in the first epoch (8 steps): no epoch end below
        # 2. Resumed at once (the lock died with the process) and killed inside its first save
        # (step + 1's last checkpoint), at each instant of the save in turn.
        for instant in SAVE_INSTANTS:
            done = subprocess.run(
                _train_command(run), env=_train_env(instant), capture_output=True, text=True, timeout=600
            )
            assert done.returncode == -signal.SIGKILL, (
                f"{instant}: exit {done.returncode}: {done.stderr[-2000:]}"
            )
            steps.append(_last_step(run))
        # Killed before the manifest's rename, the save of step s + 1 has not happened (the
        # checkpoint stays at s); from the rename on it has: s + 1, then s + 2 for the next resume.
        s = steps[0]
        assert steps == [s, s, s, s + 1, s + 2], steps
        # 3. Resumed to the end.
        done = subprocess.run(
            _train_command(run), env=_train_env(), capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        try:
            straight.wait(600)
        finally:
            straight.kill()
            straight_log.close()
    assert straight.returncode == 0, (tmp_path / "straight.log").read_text()[-3000:]
    for kind in ("last", "best"):
        a, meta_a = load_checkpoint(tmp_path / "straight" / "checkpoints" / f"{kind}.safetensors")
        b, meta_b = load_checkpoint(run / "checkpoints" / f"{kind}.safetensors")
        assert meta_a["step"] == meta_b["step"] and a.keys() == b.keys(), kind
        # Weights, loss and optimiser state: bit for bit.
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], kind
    assert _last_step(run) == 20
    # The step log too: one row per step, as if never interrupted (the timings aside).
    logged = [
        [{k: v for k, v in row.items() if k not in ("pairs_per_s", "elapsed_s")} for row in read_csv_rows(r)]
        for r in (run / "metrics.csv", tmp_path / "straight" / "metrics.csv")
    ]
    assert len(logged[0]) == 20 and logged[0] == logged[1]
    leftovers = [p.name for p in run.rglob("*") if p.name.endswith((".tmp", ".old"))]
    assert leftovers == []


# --- in process: an exception at any instant of a save (Ctrl-C, a full disk) rolls back ------------
class Interrupted(BaseException):
    """An exception that ``except Exception`` does not catch (as KeyboardInterrupt): the save's own
    ``except BaseException`` rollbacks run, unlike after a kill -9 (see the test above)."""


def test_an_exception_at_any_save_instant_rolls_back_and_resumes_bit_exact(
    corridor: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(corridor, "train.max_steps=2")
    # The uninterrupted run, and the same run stopped (Ctrl-C) after step 1: the template of the
    # runs below, whose step-2 save is interrupted at each of its renames in turn.
    train(cfg, tmp_path / "straight", progress=False)
    expected, _ = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.safetensors")

    def sigint_at_1(step: int, row: dict[str, float]) -> None:
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    template = tmp_path / "template"
    assert train(cfg, template, progress=False, on_step=sigint_at_1).step == 1
    instant = 0
    while True:
        instant += 1
        run = tmp_path / f"interrupted-{instant}"
        shutil.copytree(template, run)
        count = 0

        def raise_at_instant(event: str, instant: int = instant) -> None:
            nonlocal count
            if event != "end" and "rename" in event:
                count += 1
                if count == instant:
                    raise Interrupted

        try:
            with observe_file_changes(raise_at_instant):
                result = train(cfg, run, resume=True, progress=False)
        except Interrupted:
            pass
        else:
            assert result.step == 2
            break
        # A new process resumes at once (the lock was released) and finishes where the
        # uninterrupted run did.
        resumed = train(cfg, run, resume=True, progress=False)
        assert resumed.step == 2, f"exception before rename {instant}"
        got, _ = load_checkpoint(run / "checkpoints" / "last.safetensors")
        assert got.keys() == expected.keys()
        assert [k for k in got if not torch.equal(got[k], expected[k])] == [], f"rename {instant}"
        assert instant < 40
    assert instant > 3  # the save's renames were all visited


def test_resume_falls_back_to_the_newest_complete_checkpoint(corridor: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(corridor, "train.max_steps=2", "train.checkpoint_every_steps=1")
    train(cfg, run, progress=False)
    last = run / "checkpoints" / "last.safetensors"
    assert load_checkpoint(last)[1]["step"] == 2
    data = bytearray(last.read_bytes())  # the weights the manifest vouches for, damaged in place
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    lines: list[str] = []

    class Console:
        def print(self, message: str, **_: object) -> None:
            lines.append(message)

    result = train(
        tiny_config(corridor, "train.max_steps=3"), run, resume=True, progress=False, console=Console()
    )
    assert result.step == 3
    said = " ".join(lines)
    assert "previous" in said and "step 1" in said and "last" in said


def test_a_second_writer_is_refused_naming_the_holder(corridor: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(corridor, "train.max_steps=1"), run, progress=False)
    refusals: list[str] = []

    def second_writer(step: int, row: dict[str, float]) -> None:
        if step == 2:
            for resume in (True, False):
                try:
                    train(tiny_config(corridor, "train.max_steps=3"), run, resume=resume, progress=False)
                except LiplocError as err:
                    refusals.append(str(err))

    train(tiny_config(corridor, "train.max_steps=3"), run, resume=True, progress=False, on_step=second_writer)
    assert len(refusals) == 2
    for text in refusals:
        assert f"pid {os.getpid()}" in text and socket.gethostname() in text


def test_a_killed_writer_releases_the_run_at_once(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from liploc.runtime.run_folder import RunLock\n"
        "lock = RunLock(sys.argv[1]).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        from liploc.runtime.run_folder import RunLock

        with pytest.raises(LiplocError, match=f"pid {proc.pid}"):
            RunLock(tmp_path).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        RunLock(tmp_path).acquire().release()
    finally:
        proc.kill()
        proc.wait(10)


def test_leftovers_of_a_failed_save_are_removed_and_stale_ones_swept(
    corridor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    train(tiny_config(corridor, "train.max_steps=1"), run, progress=False)
    checkpoints = run / "checkpoints"
    before = sorted(p.name for p in checkpoints.iterdir())
    # A stale temporary file of a process killed mid-save, as safetensors or our writer leave them.
    (checkpoints / ".last.safetensors.abc123.tmp").write_bytes(b"x" * 1000)
    (checkpoints / "last.safetensors.tmp").write_bytes(b"x" * 1000)
    (run / ".summary.json.k2j3.tmp").write_text("{")
    real_replace = os.replace

    def full_disk(src: str, dst: str) -> None:
        if str(dst).endswith(".safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(LiplocError, match="space"):
        train(tiny_config(corridor, "train.max_steps=2"), run, resume=True, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in checkpoints.iterdir()) == before  # swept, nothing new left
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    assert load_checkpoint(checkpoints / "last.safetensors")[1]["step"] == 1  # previous intact


def test_run_files_follow_the_umask(corridor: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        train(tiny_config(corridor, "train.max_steps=1"), tmp_path / "run", progress=False)
    finally:
        os.umask(old)
    for path in (tmp_path / "run" / "checkpoints").iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert (tmp_path / "run" / "checkpoints").stat().st_mode & 0o777 == 0o755


def test_first_logged_loss_after_a_resume_averages_the_whole_interval(corridor: Path, tmp_path: Path) -> None:
    common = ["train.max_steps=5", "train.log_every=5", "train.checkpoint_every_steps=1"]
    straight = tmp_path / "straight"
    train(tiny_config(corridor, *common), straight, progress=False)

    def sigint_at_3(step: int, row: dict[str, float]) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "resumed"
    assert train(tiny_config(corridor, *common), run, progress=False, on_step=sigint_at_3).step == 3
    train(tiny_config(corridor, *common), run, resume=True, progress=False)
    a = read_csv_rows(straight / "metrics.csv")
    b = read_csv_rows(run / "metrics.csv")
    assert [r["step"] for r in b] == [r["step"] for r in a] == [5.0]
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=1e-6)


def _limited_writes(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_no_space_for_a_checkpoint_is_an_error_line_and_keeps_the_previous(
    corridor: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(tiny_config(corridor, "train.max_steps=1"), run, progress=False)
    size = (run / "checkpoints" / "last.safetensors").stat().st_size
    cli = [sys.executable, "-m", "liploc", "train", str(run), "--resume", "--no-progress"]
    cli += ["--set", "train.max_steps=2", "--set", "data.num_workers=0"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    # A hang would raise TimeoutExpired (the test fails); there is no speed claim here.
    proc = subprocess.run(
        cli,
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=lambda: _limited_writes(size // 2),
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr, proc.stderr
    assert "could not write" in proc.stderr and "bytes" in proc.stderr
    assert load_checkpoint(run / "checkpoints" / "last.safetensors")[1]["step"] == 1
    leftovers = [p for p in (run / "checkpoints").iterdir() if "tmp" in p.name]
    assert leftovers == []


def test_a_damaged_checkpoint_without_a_previous_one_names_the_file(corridor: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(corridor, "train.max_steps=1"), run, progress=False)
    last = run / "checkpoints" / "last.safetensors"
    last.write_bytes(last.read_bytes()[:-10])
    with pytest.raises(DataError, match="last"):
        train(tiny_config(corridor, "train.max_steps=2"), run, resume=True, progress=False)
