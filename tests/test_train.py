"""Training: untrained loss, learning on a toy world, exact resume, checkpoints, run folder, CLI."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from corridor_world import corridor_fixture
from tiny_runs import TINY, tiny_config
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from liploc.cli import app
from liploc.config import TrainConfig
from liploc.errors import ConfigError, DataError
from liploc.models import create_model
from liploc.runtime.checkpoint import load_checkpoint, metadata_path, strip_prefix
from liploc.runtime.data_roots import split_frames
from liploc.runtime.frame_dataset import PairDataset
from liploc.runtime.run_folder import load_model_from_checkpoint, read_csv_rows
from liploc.training.losses import build_loss
from liploc.training.schedule import LrSchedule
from liploc.training.train import train
from liploc.training.validation import validate

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


corridor = corridor_fixture(64, 32)  # 64 training places (sequence 00), 32 for validation (01)


def test_untrained_loss_is_near_log_n(corridor: Path) -> None:
    cfg = tiny_config(corridor)
    frames = split_frames(cfg.data, "val")
    torch.manual_seed(0)
    model, loss_fn = create_model(cfg.model), build_loss(cfg.loss)
    n = 16
    loader = DataLoader(PairDataset(frames, cfg), batch_size=n, drop_last=True)
    results = validate(model, loss_fn, loader, torch.device("cpu"))
    assert results["val_pairs"] == len(frames)
    assert abs(results["val_loss"] - math.log(n)) < 0.1 * math.log(n)


def test_tiny_config_learns_the_corridor(corridor: Path, tmp_path: Path) -> None:
    cfg = tiny_config(corridor, "train.max_steps=60", "train.epochs=100", "train.log_every=1")
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 60 and result.stopped == "finished"

    losses = [row["loss"] for row in read_csv_rows(tmp_path / "run" / "metrics.csv")]
    assert abs(losses[0] - math.log(16)) < 0.15 * math.log(16)  # about log N at the start
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    epochs = read_csv_rows(tmp_path / "run" / "epochs.csv")
    chance = 1 / 16
    # Validation places were never trained on: matching them needs the learnt cross-modal code.
    assert result.metrics["val_top1_image_to_lidar"] >= 4 * chance
    assert result.metrics["val_top1_lidar_to_image"] >= 4 * chance
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"] - 0.5
    assert all(row["pairs_per_s"] > 0 for row in read_csv_rows(tmp_path / "run" / "metrics.csv"))

    # Checkpoints round-trip: the best model reloads from the run folder alone.
    model, saved = load_model_from_checkpoint(tmp_path / "run")
    assert saved == cfg
    tensors, meta = load_checkpoint(result.best_checkpoint)
    assert model.fingerprint() == meta["model_fingerprint"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, strip_prefix(tensors, "model.")[key])

    # best.safetensors is the epoch of the highest validation top-1 (train.best_metric: val_top1).
    def top1(row: dict) -> float:
        return 0.5 * (row["val_top1_image_to_lidar"] + row["val_top1_lidar_to_image"])

    assert top1(meta["metrics"]) == pytest.approx(max(top1(row) for row in epochs), rel=1e-5)
    last_model, _ = load_model_from_checkpoint(result.last_checkpoint)
    summary = (tmp_path / "run" / "summary.json").read_text()
    assert '"step": 60' in summary and last_model.embed_dim == cfg.model.embed_dim
    # The run records the input normalisation its towers were trained with, and where it came from.
    normalization = json.loads(summary)["input_normalization"]
    assert normalization["setting"] == cfg.data.normalize
    assert set(normalization) == {"setting", "image", "lidar"} and "source" in normalization["image"]


@pytest.mark.parametrize(("metric", "best_epoch"), [("val_top1", 2), ("val_loss", 1)])
def test_best_checkpoint_follows_the_chosen_metric(
    corridor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metric: str, best_epoch: int
) -> None:
    # Scripted validation: the loss is lowest at epoch 1 while the retrieval accuracy peaks at
    # epoch 2, as on a leak-free validation set where the model grows confident.
    import liploc.training.loop as loop_module

    script = iter([(1.0, 0.1), (2.0, 0.5), (3.0, 0.3)])

    def scripted_validate(*args, **kwargs) -> dict[str, float]:
        loss, top1 = next(script)
        return {
            "val_loss": loss,
            "val_top1_image_to_lidar": top1,
            "val_top1_lidar_to_image": top1,
            "val_pairs": 16.0,
        }

    monkeypatch.setattr(loop_module, "validate", scripted_validate)
    cfg = tiny_config(corridor, "train.epochs=3", "train.scheduler=none", f"train.best_metric={metric}")
    result = train(cfg, tmp_path / "run", progress=False)
    epochs = read_csv_rows(tmp_path / "run" / "epochs.csv")
    _, meta = load_checkpoint(result.best_checkpoint)
    assert meta["step"] == epochs[best_epoch - 1]["step"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best"]["metric"] == metric and summary["best"]["step"] == meta["step"]


def test_tampered_or_truncated_checkpoints_are_refused(corridor: Path, tmp_path: Path) -> None:
    cfg = tiny_config(corridor, "train.max_steps=2")
    result = train(cfg, tmp_path / "run", progress=False)
    path = result.last_checkpoint
    good = path.read_bytes()

    tampered = bytearray(good)
    tampered[len(good) // 2] ^= 0xFF
    path.write_bytes(bytes(tampered))
    with pytest.raises(DataError, match="sha256"):
        load_model_from_checkpoint(path)
    with pytest.raises(DataError, match=str(path)):
        train(cfg, tmp_path / "run", resume=True, progress=False)

    path.write_bytes(good[: len(good) - 100])
    with pytest.raises(DataError, match="truncated"):
        load_model_from_checkpoint(path)

    path.write_bytes(good)
    metadata_path(path).unlink()
    with pytest.raises(DataError, match="missing"):
        load_model_from_checkpoint(path)
    with pytest.raises(DataError, match="no checkpoints"):
        load_model_from_checkpoint(tmp_path)


def test_resumed_runs_end_where_an_uninterrupted_run_does(corridor: Path, tmp_path: Path) -> None:
    # 64 pairs / batch 16 = 4 steps per epoch; 10 steps end inside the third epoch.
    common = ["train.epochs=3", "train.max_steps=10", "train.checkpoint_every_steps=5", "train.log_every=1"]
    straight = train(tiny_config(corridor, *common), tmp_path / "straight", progress=False)

    # The interrupted run loads data in worker processes: the data order and the augmentation
    # must not depend on who loads a sample.
    cfg = tiny_config(corridor, *common, "data.num_workers=2")
    run = tmp_path / "interrupted"

    def sigint_at_3(step: int, row: dict[str, float]) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: stop after this step and save

    first = train(cfg, run, progress=False, on_step=sigint_at_3)
    assert first.stopped == "interrupted" and first.step == 3
    assert load_checkpoint(first.last_checkpoint)[1]["step"] == 3

    class Crash(Exception):
        pass

    def crash_at_7(step: int, row: dict[str, float]) -> None:
        if step == 7:
            raise Crash  # killed: nothing saved after the step-5 checkpoint

    with pytest.raises(Crash):
        train(cfg, run, resume=True, progress=False, on_step=crash_at_7)
    assert load_checkpoint(run / "checkpoints" / "last.safetensors")[1]["step"] == 5

    final = train(cfg, run, resume=True, progress=False)
    assert final.step == straight.step == 10 and final.stopped == "finished"
    a, meta_a = load_checkpoint(straight.last_checkpoint)
    b, meta_b = load_checkpoint(final.last_checkpoint)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []  # model, loss temperature and AdamW moments all identical
    assert meta_a["schedule"] == meta_b["schedule"]

    # The logs tell the same story: one row per step, no repeats after the resumes.
    rows_a = read_csv_rows(tmp_path / "straight" / "metrics.csv")
    rows_b = read_csv_rows(run / "metrics.csv")
    assert [r["step"] for r in rows_b] == list(range(1, 11))
    np.testing.assert_allclose([r["loss"] for r in rows_b], [r["loss"] for r in rows_a], rtol=1e-6)
    epochs_b = read_csv_rows(run / "epochs.csv")
    epochs_a = read_csv_rows(tmp_path / "straight" / "epochs.csv")
    assert [(r["step"], r["val_loss"]) for r in epochs_b] == [(r["step"], r["val_loss"]) for r in epochs_a]
    assert "resumed from" in (run / "train.log").read_text()


def test_run_folder_guards(corridor: Path, tmp_path: Path) -> None:
    cfg = tiny_config(corridor, "train.max_steps=1")
    with pytest.raises(DataError, match="cannot resume"):
        train(cfg, tmp_path / "run", resume=True, progress=False)
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(cfg, tmp_path / "run", progress=False)
    other_model = tiny_config(corridor, "train.max_steps=2", "model.embed_dim=32")
    with pytest.raises(ConfigError, match="model"):
        train(other_model, tmp_path / "run", resume=True, progress=False)
    with pytest.raises(DataError, match="fewer than one step"):
        train(tiny_config(corridor, "train.batch_size=128"), tmp_path / "big", progress=False)


def test_cli_trains_resumes_and_reports_errors(corridor: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "cli"
    args = ["train", str(TINY), "--data-root", str(corridor), "--out", str(run), "--no-progress"]
    sets = ["--set", "train.max_steps=2", "--set", "data.num_workers=0", "--set", "train.log=tensorboard"]
    accumulate = ["--set", "train.batch_size=8", "--set", "train.grad_accum=2"]
    result = runner.invoke(app, args + sets + accumulate)
    assert result.exit_code == 0, result.output
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.safetensors").is_file()
    log = (run / "train.log").read_text()
    assert "batch 8 (x2 accumulation), 4 steps per epoch" in log  # 64 pairs = 4 x 2 x 8
    if "tensorboard package is not installed" not in log:
        assert (run / "tensorboard").is_dir()

    # A run folder stands for its config: continue it for two more steps.
    more = runner.invoke(app, ["train", str(run), "--resume", "--no-progress", "--set", "train.max_steps=4"])
    assert more.exit_code == 0, more.output
    assert load_checkpoint(run / "checkpoints" / "last.safetensors")[1]["step"] == 4
    assert "resuming with changed settings: train.max_steps" in (run / "train.log").read_text()

    missing = runner.invoke(app, ["train", str(TINY), "--out", str(tmp_path / "x"), "--no-progress"])
    assert missing.exit_code == 1
    assert "--data-root" in missing.output and "Traceback" not in missing.output
    bad = runner.invoke(
        app, ["train", str(TINY), "--data-root", str(corridor), "--set", "train.batch_sise=4"]
    )
    assert bad.exit_code == 1 and "train.batch_sise" in bad.output


def test_learning_rate_schedule() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": params, "lr": 1.0}])
    cosine = LrSchedule(optimizer, TrainConfig(scheduler="cosine", warmup_steps=4), total_steps=104)
    factors = [cosine.factor(s) for s in (0, 3, 4, 54, 104)]
    np.testing.assert_allclose(factors, [0.25, 1.0, 1.0, 0.5, 0.0], atol=1e-9)
    cosine.apply(54)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)

    plateau = LrSchedule(
        optimizer, TrainConfig(scheduler="plateau", plateau_patience=1, plateau_factor=0.5), 10
    )
    assert [plateau.validation_done(v) for v in (3.0, 2.0, 2.5, 2.4)] == [False, False, False, True]
    assert plateau.factor(0) == 0.5
    again = LrSchedule(optimizer, TrainConfig(scheduler="plateau"), 10)
    again.load_state_dict(plateau.state_dict())
    assert again.state_dict() == plateau.state_dict()
