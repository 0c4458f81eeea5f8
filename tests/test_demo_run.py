"""`liploc demo` end to end on a very small town: the recall tables of the appearance model and of
the geometry bridge have single-image and sequence rows for every window, for both protocols, and
metrics.json says the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from liploc.commands.demo import DemoOptions, run_demo


def test_the_demo_prints_single_and_sequence_rows_for_each_window_and_model(tmp_path: Path) -> None:
    options = DemoOptions(drives=4, frames=30, epochs=1, bridge_epochs=1, sequence_windows_m=(6.0, 0.0, 15.0))
    assert options.sequence_windows_m == (6.0, 15.0)  # a 0 m window is no window
    console = Console(record=True, width=100)
    result = run_demo(tmp_path / "demo", options, console=console)
    text = console.export_text()

    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert result.bridge_metrics is not None and saved["bridge"] == result.bridge_metrics
    assert saved["bridge_train_steps"] > 0
    # The appearance model's table first, then the bridge's, each titled with its config.
    first, second = "Appearance model (tiny.yaml, 1 epochs)", "Geometry bridge (tiny_bridge.yaml, 1 epochs)"
    assert text.index(first) < text.index(second)
    for protocol in ("same-sequence", "cross-drive"):
        rows = [line for line in text.splitlines() if line.startswith(f"│ {protocol}")]
        assert len(rows) == 6
        for model_rows, metrics in ((rows[:3], result.metrics), (rows[3:], result.bridge_metrics)):
            windows = metrics[protocol]["sequences"]
            assert [(w["window_m"], w["seq_len"]) for w in windows] == [(6.0, 2), (15.0, 5)]  # 3 m spacing
            assert [row.split("│")[2].strip() for row in model_rows] == ["single", "6 m seq", "15 m seq"]
            for row, figures in zip(model_rows, [metrics[protocol], *windows], strict=True):
                assert row.split("│")[3].strip() == f"{figures['recall_at_1']:.3f}"
        assert saved[protocol]["sequences"] == result.metrics[protocol]["sequences"]
    assert "last 2 (6 m) / 5 (15 m) images with odometry" in " ".join(text.split())
    # The first window's evaluation holds the report; further windows write their figures beside.
    assert (tmp_path / "demo" / "eval" / "cross-drive" / "report" / "index.html").is_file()
    further = json.loads(
        (tmp_path / "demo" / "eval" / "cross-drive-15m-window" / "sequence_metrics.json").read_text()
    )
    assert further["info"]["sequence_matching"]["seq_len"] == 5
    bridge_eval = tmp_path / "demo" / "eval-bridge"
    assert (bridge_eval / "cross-drive" / "report" / "index.html").is_file()
    info = json.loads((bridge_eval / "same-sequence" / "metrics.json").read_text())["info"]
    assert info["method"] == "bridge"


def test_demo_windows_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="sequence windows must be >= 0 m"):
        DemoOptions(sequence_windows_m=(20.0, -5.0))


def test_an_interrupted_training_stops_the_demo_before_any_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A demo whose training a signal stopped (the loop saved a checkpoint and returned) must not
    evaluate the half-trained model: its figures would pass for the demo's."""
    import liploc.commands.demo as demo
    from liploc.training.loop import TrainResult

    def interrupted(config: object, run_dir: Path, console: object, progress: bool = True) -> TrainResult:
        return TrainResult(run_dir, run_dir / "last", None, step=3, epoch=0, stopped="interrupted")

    monkeypatch.setattr(demo, "train_or_restart", interrupted)
    console = Console(record=True, width=100)
    result = run_demo(tmp_path / "demo", DemoOptions(drives=3, frames=10, epochs=1), console=console)
    assert result.interrupted and result.metrics == {}
    assert not (tmp_path / "demo" / "eval").exists() and not (tmp_path / "demo" / "metrics.json").exists()
    assert "training interrupted at step 3" in console.export_text()


def test_the_demo_command_passes_the_bridge_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`liploc demo --no-bridge` leaves the bridge out; `--bridge-epochs` sets its epochs."""
    from typer.testing import CliRunner

    import liploc.commands.demo as demo
    from liploc.cli import app

    seen: list[DemoOptions] = []

    def record(out: Path, options: DemoOptions, console: object = None) -> demo.DemoResult:
        seen.append(options)
        return demo.DemoResult(Path(out), {}, 0.0)

    monkeypatch.setattr(demo, "run_demo", record)
    runner = CliRunner()
    for args in (["--no-bridge"], ["--bridge-epochs", "3"], []):
        result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), *args])
        assert result.exit_code == 0, result.output
    assert seen[0].bridge_config is None
    assert seen[1].bridge_config == demo.BRIDGE_CONFIG and seen[1].bridge_epochs == 3
    assert seen[2].bridge_config == demo.BRIDGE_CONFIG and seen[2].bridge_epochs == demo.BRIDGE_EPOCHS


def test_a_missing_demo_config_names_the_option_that_sets_it(tmp_path: Path) -> None:
    from liploc.commands.demo import _demo_config
    from liploc.errors import ConfigError

    options = DemoOptions(config=tmp_path / "appearance.yaml", bridge_config=tmp_path / "bridge.yaml")
    with pytest.raises(ConfigError, match=r"appearance.yaml: demo config not found \(pass --config\)"):
        _demo_config(options, tmp_path, ["00"], options.config, None)
    with pytest.raises(ConfigError, match=r"bridge.yaml: demo config not found \(pass --bridge-config\)"):
        _demo_config(options, tmp_path, ["00"], tmp_path / "bridge.yaml", None)
