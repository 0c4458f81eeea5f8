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
from pathlib import Path

import pytest
import tiny_runs
from corridor_world import corridor_fixture
from state_observer import observe_file_changes

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


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even ``except Exception`` handlers)."""


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


def test_a_kill_during_any_save_instant_leaves_a_resumable_run(corridor: Path, tmp_path: Path) -> None:
    template = tmp_path / "template"
    train(tiny_config(corridor, "train.max_steps=1"), template, progress=False)
    cfg = tiny_config(corridor, "train.max_steps=2")
    instant = 0
    while True:
        instant += 1
        run = tmp_path / f"killed-{instant}"
        shutil.copytree(template, run)
        count = 0

        def kill_at_instant(event: str, instant: int = instant) -> None:
            nonlocal count
            if event != "end" and "rename" in event:
                count += 1
                if count == instant:
                    raise Killed

        try:
            with observe_file_changes(kill_at_instant):
                result = train(cfg, run, resume=True, progress=False)
        except Killed:
            pass
        else:
            assert result.step == 2
            break
        # A new process resumes at once (the lock died with the writer) and finishes.
        resumed = train(cfg, run, resume=True, progress=False)
        assert resumed.step == 2, f"kill before rename {instant}"
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
