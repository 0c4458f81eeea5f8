"""Nothing dropped in silence: missing data is an error, changed data stops a resume, every
validation frame counts once, queries are embedded as the map was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny_runs
import torch
from corridor_world import write_corridor, write_train_and_val
from rich.console import Console
from tiny_runs import TINY
from typer.testing import CliRunner

from liploc.cli import app
from liploc.config import Config
from liploc.datasets import open_dataset
from liploc.errors import DataError
from liploc.localization.embedding import embed_frames
from liploc.localization.localize import Localizer, build_map
from liploc.runtime.run_folder import load_model_from_checkpoint
from liploc.training.data_fingerprint import DataChangedError
from liploc.training.samplers import ValidationBatches
from liploc.training.train import train

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def corridor(root: Path) -> Path:
    return write_train_and_val(root, 40, 16)


def tiny(root: Path, *overrides: str) -> Config:
    return tiny_runs.tiny_config(root, "train.max_steps=1", "train.batch_size=8", *overrides)


def test_a_named_sequence_without_images_is_an_error_unless_allowed(tmp_path: Path) -> None:
    data = corridor(tmp_path / "data")
    write_corridor(data, "02", 8, seed=200)
    shutil.rmtree(data / "sequences" / "02" / "image_2")
    (data / "sequences" / "00" / "image_2" / "000003.png").unlink()  # one unpaired scan
    args = ["train", str(TINY), "--data-root", str(data), "--no-progress", "--set", "data.num_workers=0"]
    args += ["--set", "train.max_steps=1", "--set", "train.batch_size=8"]
    args += ["--set", "data.datasets=[{train: ['00', '02'], val: ['01']}]"]
    runner = CliRunner()
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 1
    text = " ".join(refused.output.split())
    assert "error:" in text and "sequences/02/image_2" in "".join(text.split())
    assert "sequence 02 has no images" in text
    assert "--allow-missing" in text and "Traceback" not in refused.output

    done = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--allow-missing"])
    assert done.exit_code == 0, done.output
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["splits"]["missing_sequences"] == ["auto:02"]
    assert summary["splits"]["left_out"]["missing_sequence"] == 1
    assert summary["splits"]["left_out"]["unpaired"] == 1
    assert summary["train_pairs"] == 39 and summary["val_pairs"] == 16
    log = (tmp_path / "b" / "train.log").read_text()
    assert "auto:02" in log and "left out 1 scans or images without their pair" in log


def test_resume_on_changed_data_is_refused_naming_the_change(tmp_path: Path) -> None:
    data = corridor(tmp_path / "data")
    cfg = tiny(data, "train.epochs=3", "train.max_steps=null")
    run = tmp_path / "run"
    train(
        cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 2})}), run, progress=False
    )
    train(
        cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 3})}),
        run,
        resume=True,
        progress=False,
    )

    scan = data / "sequences" / "00" / "velodyne" / "000007.bin"
    scan.write_bytes(scan.read_bytes()[:-16])  # one point fewer
    (data / "sequences" / "01" / "image_2" / "000002.png").unlink()
    with pytest.raises(DataChangedError) as err:
        train(cfg, run, resume=True, progress=False)
    message = str(err.value)
    assert "sequence 00: 1 file(s) changed size (sequences/00/velodyne/000007.bin)" in message
    assert "sequence 01: 1 file(s) removed (sequences/01/image_2/000002.png)" in message
    assert "start a new run" in message


def test_the_demo_starts_a_fresh_run_when_the_data_changed(tmp_path: Path) -> None:
    from liploc.commands.demo import train_or_restart

    data = corridor(tmp_path / "data")
    cfg = tiny(data)
    console = Console(record=True, width=200)
    run = tmp_path / "run"
    train_or_restart(cfg, run, console, progress=False)
    write_corridor(data, "00", 48, seed=0)  # the town was regenerated with longer drives
    result = train_or_restart(cfg, run, console, progress=False)
    assert result.step == 1  # a new run, not the old one continued
    text = console.export_text()
    assert "sequence 00: 16 file(s) added" in text and "a fresh run starts" in text
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(kept) == 1 and (kept[0] / "checkpoints" / "last.safetensors").is_file()
    assert json.loads((run / "summary.json").read_text())["train_pairs"] == 48


@pytest.mark.parametrize(("n", "batch", "world"), [(17, 8, 2), (5, 4, 3), (16, 16, 2), (1, 4, 2)])
def test_validation_batches_count_every_frame_once_on_any_number_of_processes(
    n: int, batch: int, world: int
) -> None:
    parts = [list(ValidationBatches(n, batch, seed=1, rank=r, world_size=world)) for r in range(world)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == -(-n // batch)
    seen = [i for p in parts for b in p for i in b]
    assert sorted(seen) == list(range(n))  # no padded duplicates, nothing left out
    single = list(ValidationBatches(n, batch, seed=1))
    # Rank order within each global batch is the single-process batch.
    assert [[i for p in parts for i in p[k]] for k in range(len(single))] == single


def test_queries_are_embedded_with_the_maps_precision(tmp_path: Path) -> None:
    data = corridor(tmp_path / "data")
    train(tiny(data), tmp_path / "run", progress=False)  # precision auto: fp32 on a CPU, bf16 on a GPU
    ckpt = tmp_path / "run" / "checkpoints" / "last.safetensors"
    build_map(ckpt, data, ["01"], tmp_path / "map", precision="bf16")  # as on a GPU
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert manifest["embedding_precision"] == "bf16"

    localizer = Localizer.open(tmp_path / "map", device="cpu")  # queries on a CPU
    frame = open_dataset(data).frames("01")[5]
    match = localizer.localize([frame.image_path], k=1)[0][0]
    model, config = load_model_from_checkpoint(ckpt)
    device = torch.device("cpu")
    as_map = embed_frames(model, [frame], config, "image", device=device, precision="bf16")[0]
    fp32 = embed_frames(model, [frame], config, "image", device=device, precision="fp32")[0]
    assert np.abs(as_map - fp32).max() > 1e-4  # the precisions do differ
    best = int(np.argmax(localizer.lidar_map.embeddings @ as_map))
    assert match.score == pytest.approx(float(localizer.lidar_map.embeddings[best] @ as_map), abs=1e-6)
    with pytest.raises(ValueError, match="unknown embedding precision"):
        embed_frames(model, [frame], config, "image", device=device, precision="fp8")
    with pytest.raises(DataError):
        Localizer.open(tmp_path / "nowhere")
