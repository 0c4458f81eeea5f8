"""liploc synth after an interruption: it resumes from the frames already written, and a kill while
the output moves into place leaves a folder that the rerun (or ``--force``) finishes or redoes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import liploc.synth.generate as generate
from liploc.cli import app
from liploc.synth import SynthOptions, generate_dataset, load_summary

OPTIONS = SynthOptions(town_seed=5, drives=2, frames=4, size="small", blocks=(2, 2), pairs="none")
TOTAL = 8
WRITE_FRAME = generate.write_frame


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every file of the dataset proper (frames, calibration, times, poses)."""
    files = sorted(p for name in ("sequences", "poses") for p in (root / name).rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("reference")
    generate_dataset(root, OPTIONS, reuse=False, workers=2)
    return _digest(root)


def _count_frames(monkeypatch: pytest.MonkeyPatch, fail_after: int | None = None) -> list[int]:
    """Count the frames written; raise KeyboardInterrupt (Ctrl-C) at frame ``fail_after``."""
    calls: list[int] = []
    write = WRITE_FRAME

    def counting(*args, **kwargs) -> None:
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt
        write(*args, **kwargs)
        calls.append(1)

    monkeypatch.setattr(generate, "write_frame", counting)
    return calls


def test_interrupted_synth_resumes_from_the_frames_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: dict[str, str]
) -> None:
    out = tmp_path / "town"
    first = _count_frames(monkeypatch, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(out, OPTIONS, workers=1)
    assert len(first) == 3
    assert not (out / "synth.json").exists()  # nothing looks complete

    second = _count_frames(monkeypatch)
    seen: list[tuple[int, int]] = []
    generate_dataset(out, OPTIONS, workers=2, progress=lambda done, total: seen.append((done, total)))
    assert len(second) == TOTAL - 3  # only the frames not rendered before
    assert seen[0] == (3, TOTAL)  # progress starts from the kept frames
    assert seen[-1] == (TOTAL, TOTAL)
    assert _digest(out) == reference  # byte-identical to an uninterrupted run
    assert not (out / ".synth-partial").exists()
    assert not list(out.rglob("*.part"))


def test_other_options_or_force_start_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "town"
    _count_frames(monkeypatch, fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(out, OPTIONS, workers=1)
    again = _count_frames(monkeypatch, fail_after=1)
    with pytest.raises(KeyboardInterrupt):  # frames of other options are not reused
        generate_dataset(out, OPTIONS.model_copy(update={"town_seed": 6}), workers=1)
    stage_frames = list((out / ".synth-partial").glob("sequences/*/velodyne/*.bin"))
    assert len(again) == 1 and len(stage_frames) == 1  # the 4 frames of the other town were dropped
    forced = _count_frames(monkeypatch)
    generate_dataset(out, OPTIONS, workers=2, reuse=False)
    assert len(forced) == TOTAL


def _kill_before_manifest(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Simulate a kill at the instant the manifest would be renamed into ``root``."""
    replace = os.replace

    def dying(src, dst, *args, **kwargs):
        if Path(dst) == root / "synth.json":
            raise KeyboardInterrupt("killed")
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", dying)


@pytest.mark.parametrize("rerun", ["same command", "--force"])
def test_kill_between_moving_sequences_and_manifest_is_recovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: dict[str, str], rerun: str
) -> None:
    out = tmp_path / "town"
    with monkeypatch.context() as m:
        _kill_before_manifest(m, out)
        with pytest.raises(KeyboardInterrupt):
            generate_dataset(out, OPTIONS, workers=2)
    assert (out / "sequences").is_dir() and not (out / "synth.json").exists()

    rendered = _count_frames(monkeypatch)
    summary = generate_dataset(out, OPTIONS, workers=2, reuse=rerun != "--force")
    assert load_summary(out).options == OPTIONS.model_dump(mode="json")
    assert summary.frames_total == TOTAL
    assert _digest(out) == reference
    assert not (out / ".synth-partial").exists()
    if rerun == "same command":
        assert rendered == []  # finished, not redone


def test_cli_says_what_happened_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "town"
    args = ["synth", "--out", str(out), "--drives", "2", "--frames", "4", "--size", "small"]
    args += ["--blocks", "2x2", "--town-seed", "5", "--pairs", "none", "--workers", "1"]
    _count_frames(monkeypatch, fail_after=2)
    stopped = CliRunner().invoke(app, args)
    assert stopped.exit_code == 130, stopped.output
    assert "interrupted: 2 rendered frames kept" in stopped.output
    assert "Traceback" not in stopped.output
    resumed_frames = _count_frames(monkeypatch)
    resumed = CliRunner().invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming: 2 of 8 frames already rendered" in " ".join(resumed.output.split())
    assert len(resumed_frames) == 6
