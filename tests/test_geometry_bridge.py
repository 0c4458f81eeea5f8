"""The geometry bridge through the pipeline: configs/tiny_bridge.yaml trains a few steps on corridor
drives, evaluates with sequence matching, builds a map, localizes an image (CLI API and service),
resumes exactly; its samples carry the depth target, the scan's BEV and the calibration; an
appearance run is what it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from corridor_world import write_corridors
from tiny_runs import TINY

from liploc.config import load_config
from liploc.datasets import load_image
from liploc.errors import DataError
from liploc.evaluation.evaluate import EvaluationSettings, evaluate
from liploc.interop.onnx_encoder import OnnxImageEncoder
from liploc.lidar import camera_depth_image
from liploc.localization.backend import choose_backend, open_localizer
from liploc.localization.embedding import embed_frames
from liploc.localization.lidar_map import LidarMap
from liploc.localization.localize import Localizer, build_map
from liploc.models import GeometryBridgeModel, TwoTowerModel, create_model
from liploc.models.geometry_bridge import bev_shape, depth_image_bev
from liploc.runtime.checkpoint import load_checkpoint
from liploc.runtime.data_roots import resolve_data_roots, split_frames
from liploc.runtime.frame_dataset import PairDataset
from liploc.runtime.run_folder import load_model_from_checkpoint, read_csv_rows
from liploc.training.train import train

BRIDGE = TINY.parent / "tiny_bridge.yaml"
MAP_SEQUENCE = "02"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corridor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corridors(tmp_path_factory.mktemp("corridor"), ("00", 24, 1), ("01", 8, 2), ("02", 12, 3))


def bridge_config(root: Path, *overrides: str, config: Path = BRIDGE):
    datasets = f"data.datasets=[{{root: '{root}', train: ['00'], val: ['01']}}]"
    base = [datasets, "data.image_size=[32, 32]", "train.batch_size=8", "data.num_workers=0"]
    return load_config(config, [*base, *overrides])


@pytest.fixture(scope="module", params=["bev_only", "fused"])
def bridge_run(
    request: pytest.FixtureRequest, corridor: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A bridge run of each fusion: tiny_bridge.yaml's BEV alone, and fused with appearance."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bridge") / "run"
    fusion = f"model.bridge.fusion={request.param}"
    train(bridge_config(corridor, "train.max_steps=3", "train.log_every=1", fusion), out, progress=False)
    return out


def test_samples_carry_the_depth_target_the_scan_bev_and_the_calibration(
    corridor: Path, tmp_path: Path
) -> None:
    moves = ("data.lidar_sideways_m=3.5", "data.lidar_sideways_p=1")
    cfg = resolve_data_roots(bridge_config(corridor, *moves), [corridor])
    frames = split_frames(cfg.data, "train")
    bridge = cfg.model.bridge
    h, w = bridge.depth_size
    sample = PairDataset(frames, cfg, train=False, cache_dir=tmp_path)[4]
    assert sample["P"].shape == (3, 4) and sample["T_cam_lidar"].shape == (4, 4)
    assert sample["depth"].shape == (1, h, w) and sample["bev"].shape == bev_shape(bridge)
    # The target is the scan's own depth image at depth_size, and the scan's BEV is made from it by
    # the rasteriser of the predicted depth: both sides sample the scene alike.
    frame = frames[4]
    scan = np.fromfile(frame.scan_path, dtype=np.float32).reshape(-1, 4)
    expected = camera_depth_image(scan, frame.calib, out_size=(w, h), max_depth=bridge.max_depth)
    np.testing.assert_array_equal(sample["depth"][0].numpy(), expected)
    assert (expected > 0).sum() > 500
    raster = depth_image_bev(sample["depth"], sample["P"][None], sample["T_cam_lidar"][None], bridge)[0]
    torch.testing.assert_close(sample["bev"], raster)
    assert float(sample["bev"][1].sum()) > 0  # the walls are in the raster
    # The projection is the camera's scaled to depth_size: a scan point lands where the target has it.
    u, v, d = sample["P"] @ sample["T_cam_lidar"] @ torch.tensor([10.0, 0.0, -1.0, 1.0], dtype=torch.float64)
    assert 0 <= float(u / d) < w and 0 <= float(v / d) < h
    # BEV alone (tiny_bridge.yaml) reads no range image: an empty placeholder, nothing cached for
    # it; fused with appearance, the LiDAR tower's input is there.
    assert bridge.fusion == "bev_only" and sample["lidar"].numel() == 0
    assert PairDataset(frames, cfg, train=False).cached_inputs() == ("image", "depth", "bev")
    fused = resolve_data_roots(bridge_config(corridor, "model.bridge.fusion=fused"), [corridor])
    assert PairDataset(frames, fused, train=False, cache_dir=tmp_path)[4]["lidar"].shape == (3, 32, 32)
    # The depth_aux ablation has no BEV branch: no raster made or cached, an empty bev, and the
    # model's forward takes the batch as it comes; the depth target stays (it is what aux learns).
    aux = resolve_data_roots(bridge_config(corridor, "model.bridge.fusion=depth_aux"), [corridor])
    assert PairDataset(frames, aux, train=False).cached_inputs() == ("image", "lidar", "depth")
    assert PairDataset(frames, aux, modalities=("lidar",)).cached_inputs() == ("lidar",)
    aux_data = PairDataset(frames, aux, train=True, cache_dir=tmp_path)
    batch = torch.utils.data.default_collate([aux_data[(0, i)] for i in (3, 4)])
    assert batch["bev"].shape == (2, 0) and batch["depth"].shape == (2, 1, h, w)
    model = create_model(aux.model).eval()
    extras = {**aux_data.model_extras(batch, "image", "cpu"), **aux_data.model_extras(batch, "lidar", "cpu")}
    with torch.no_grad():
        image_emb, lidar_emb, depth = model(batch["image"], batch["lidar"], **extras)
    assert image_emb.shape == lidar_emb.shape == (2, aux.model.embed_dim) and depth.shape == (2, h, w)
    # Cached: a second dataset reads the same arrays; an entry of the wrong shape is rebuilt.
    again = PairDataset(frames, cfg, train=False, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.preprocessed(4, "bev"), sample["bev"].numpy())
    entry = again.cache.path_for(frame.scan_path, "bev", again.cache_variant(4, "bev"))
    assert entry.is_file() and "bev-" in entry.parent.name
    from liploc.checked_array import write_checked

    write_checked(entry, np.zeros((2, 8, 8), np.float32))
    with pytest.warns(UserWarning, match="damaged"):
        np.testing.assert_array_equal(again.preprocessed(4, "bev"), sample["bev"].numpy())
    # Training samples with their scan moved sideways: the BEV moves, the depth target does not.
    moved = PairDataset(frames, cfg, train=True, cache_dir=tmp_path)[(0, 4)]
    torch.testing.assert_close(moved["depth"], sample["depth"])
    assert not torch.equal(moved["bev"], sample["bev"])


def test_a_bridge_run_trains_evaluates_maps_localizes_and_serves(
    bridge_run: Path, corridor: Path, tmp_path: Path
) -> None:
    # Training logged the depth loss and validated the depth on held-out frames.
    steps = read_csv_rows(bridge_run / "metrics.csv")
    assert [r["step"] for r in steps] == [1, 2, 3] and all(np.isfinite(r["depth_loss"]) for r in steps)
    epoch = read_csv_rows(bridge_run / "epochs.csv")[-1]
    assert 0 < epoch["val_abs_rel"] < 5 and 0 < epoch["val_rmse"] < 80 and 0 <= epoch["val_delta1"] <= 1
    model, config = load_model_from_checkpoint(bridge_run)
    assert isinstance(model, GeometryBridgeModel)
    if config.model.bridge.fusion == "fused":  # appearance (64) and BEV (64) side by side
        assert model.embed_dim == 128 and model.lidar_encoder is not None
    else:  # the BEV embedding alone: no appearance towers to build or run
        assert model.embed_dim == 64 and model.lidar_encoder is None and model.image_head is None

    # Evaluation, every frame counted, with sequence matching; nothing in evaluation/ knows the method.
    ev = evaluate(bridge_run, corridor, EvaluationSettings(MAP_SEQUENCE, num_examples=0, seq_len=3))
    assert ev.result.main.num_counted == 12 and ev.sequence_result is not None

    # The map records the method and the camera, and keeps the ONNX export of its camera tower
    # (depth, back-projection with the camera's rays, BEV), which auto picks on a CPU.
    map_dir = tmp_path / "map"
    build_map(bridge_run, corridor, [MAP_SEQUENCE], map_dir, device="cpu")
    manifest = json.loads((map_dir / "manifest.json").read_text())
    assert manifest["method"] == "bridge" and manifest["camera"]["image_size"] == [128, 40]
    assert choose_backend(map_dir) == "onnx"

    # A query with the map's camera embeds as evaluation embeds the frame with its own.
    localizer = open_localizer(map_dir, "torch", device="cpu")
    assert isinstance(localizer, Localizer)
    from liploc.datasets import open_dataset

    frame = open_dataset(corridor).frames(MAP_SEQUENCE)[7]
    expected = embed_frames(model, [frame], config, "image", device=torch.device("cpu"))
    got = localizer.embed([frame.image_path])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    matches = localizer.localize([frame.image_path], k=3)[0]
    assert len(matches) == 3 and matches[0].sequence == MAP_SEQUENCE
    path = localizer.localize_sequence(
        [f.image_path for f in open_dataset(corridor).frames(MAP_SEQUENCE)[4:8]]
    )
    assert len(path.path) == 4

    # onnxruntime, fed the map camera's pixel rays, gives torch's embeddings and matches; fed
    # those of a camera 6 m further back, it would not (the check sees the rays).
    onnx = open_localizer(map_dir, "onnx")
    query = [load_image(frame.image_path)]
    off = np.abs(onnx.encoder.embed(query) - expected).max()
    camera = manifest["camera"]
    moved = np.array(camera["T_cam_lidar"])
    moved[2, 3] += 6.0
    elsewhere = OnnxImageEncoder(map_dir / "model" / "onnx", camera={**camera, "T_cam_lidar": moved.tolist()})
    # (A model of 3 steps moves little with its input: 4e-6 to 8e-6 here, against 3e-8 to 5e-8.)
    assert off < 5e-7 and np.abs(elsewhere.embed(query) - expected).max() > 10 * off
    onnx_matches = onnx.localize([frame.image_path], k=3)[0]
    assert [m.frame_id for m in onnx_matches] == [m.frame_id for m in matches]
    # The export embeds one camera's images: without the map's camera it is refused, saying why.
    with pytest.raises(DataError, match="embeds the images of one camera"):
        OnnxImageEncoder(map_dir / "model" / "onnx")

    # The service answers as the localizer, on either backend.
    from fastapi.testclient import TestClient

    from liploc.serving.app import create_app
    from liploc.serving.engine import MapService

    for backend in ("torch", "onnx"):
        service = MapService.open(map_dir, backend=backend, device="cpu")  # type: ignore[arg-type]
        with TestClient(create_app(service)) as client:
            image = {"image": ("q.png", frame.image_path.read_bytes())}
            body = client.post("/localize?k=3", files=image).json()
        assert [m["frame_id"] for m in body["matches"]] == [m.frame_id for m in matches], backend

    # `liploc export` writes both towers; the LiDAR graph embeds a scan's BEV raster as torch does.
    import onnxruntime as ort

    from liploc.interop.onnx_export import export_onnx
    from liploc.runtime.inputs import depth_calibration, depth_target, scan_bev_input

    export = export_onnx(bridge_run, tmp_path / "export")
    spec = json.loads((tmp_path / "export" / "preprocessing.json").read_text())
    names = [i["name"] for i in spec["lidar"]["inputs"]]
    assert spec["method"] == "bridge" and max(export.max_abs_diff.values()) <= 1e-4
    bev = scan_bev_input(depth_target(frame, config), *depth_calibration(frame, config), config)
    feed = {"bev": bev[None]}
    # Only a graph that reads the range image describes how to make it.
    assert ("lidar_input" in spec["lidar"]) == (config.model.bridge.fusion == "fused")
    if config.model.bridge.fusion == "fused":
        assert names == ["lidar", "bev"]
        lidar = PairDataset([frame], config, train=False, modalities=("lidar",))[0]["lidar"]
        feed["lidar"] = lidar[None].numpy()
    else:
        assert names == ["bev"]
    session = ort.InferenceSession(
        str(tmp_path / "export" / "lidar_tower.onnx"), providers=["CPUExecutionProvider"]
    )
    scan_expected = embed_frames(model, [frame], config, "lidar", device=torch.device("cpu"))
    np.testing.assert_allclose(session.run(None, feed)[0], scan_expected, atol=1e-5)


def test_a_bridge_run_resumes_exactly(corridor: Path, tmp_path: Path) -> None:
    # 24 pairs / batch 8 = 3 steps an epoch; a stop at step 5 falls between two log rows.
    common = ["train.epochs=2", "train.log_every=2", "train.scheduler=none"]
    straight = train(bridge_config(corridor, *common), tmp_path / "straight", progress=False)
    run = tmp_path / "interrupted"

    def sigint_at_5(step: int, row: dict[str, float]) -> None:
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    first = train(bridge_config(corridor, *common), run, progress=False, on_step=sigint_at_5)
    assert first.stopped == "interrupted" and first.step == 5
    final = train(bridge_config(corridor, *common), run, resume=True, progress=False)
    assert final.step == straight.step == 6
    a, _ = load_checkpoint(straight.last_checkpoint)
    b, _ = load_checkpoint(final.last_checkpoint)
    assert a.keys() == b.keys() and any(k.startswith("model.depth_head.") for k in a)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    rows_a, rows_b = (read_csv_rows(r / "metrics.csv") for r in (tmp_path / "straight", run))
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a] == [2, 4, 6]
    for key in ("loss", "depth_loss"):  # the row after the resume averages steps 5 and 6 as straight
        np.testing.assert_allclose([r[key] for r in rows_b], [r[key] for r in rows_a], rtol=1e-6)
    epochs_a, epochs_b = (read_csv_rows(r / "epochs.csv") for r in (tmp_path / "straight", run))
    assert [r["val_rmse"] for r in epochs_b] == [r["val_rmse"] for r in epochs_a]


def test_an_appearance_run_and_map_are_what_they_were(corridor: Path, tmp_path: Path) -> None:
    cfg = bridge_config(corridor, "train.max_steps=2", config=TINY)
    assert cfg.model.method == "appearance"
    train(cfg, tmp_path / "run", progress=False)
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "depth_loss" not in header and "lr_bridge" not in header
    assert "val_abs_rel" not in (tmp_path / "run" / "epochs.csv").read_text()
    model, _ = load_model_from_checkpoint(tmp_path / "run")
    assert isinstance(model, TwoTowerModel) and "method" not in model.architecture()
    map_dir = tmp_path / "map"
    build_map(tmp_path / "run", corridor, [MAP_SEQUENCE], map_dir, device="cpu", onnx=False)
    manifest = json.loads((map_dir / "manifest.json").read_text())
    assert manifest["method"] == "appearance" and "camera" not in manifest
    # A map written before methods existed loads as an appearance map.
    del manifest["method"]
    (map_dir / "manifest.json").write_text(json.dumps(manifest))
    assert LidarMap.load(map_dir).method == "appearance"
    assert Localizer.open(map_dir, device="cpu").localize(
        [corridor / "sequences" / "02" / "image_2" / "000003.png"]
    )


@pytest.mark.slow
def test_torchrun_trains_a_bridge_run_whose_validation_is_the_single_process_one(
    corridor: Path, tmp_path: Path
) -> None:
    from torch.utils.data import DataLoader

    from liploc.runtime.checkpoint import strip_prefix
    from liploc.training.losses import build_loss
    from liploc.training.validation import validate

    run = tmp_path / "run"
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")
    }
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "liploc", "train", str(BRIDGE), "--data-root", str(corridor), "--out", str(run),
        "--no-progress",
        "--set", "train.max_steps=2", "--set", "train.log_every=1", "--set", "data.num_workers=0",
        "--set", "train.batch_size=8", "--set", "data.image_size=[32, 32]",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["processes"] == 2
    assert all(np.isfinite(r["depth_loss"]) for r in read_csv_rows(run / "metrics.csv"))

    # The depth metrics the two processes summed over their halves of the held-out frames are the
    # single-process figures of the saved weights.
    tensors, meta = load_checkpoint(run / "checkpoints" / "last.safetensors")
    model, config = load_model_from_checkpoint(run / "checkpoints" / "last.safetensors")
    loss_fn = build_loss(config.loss)
    loss_fn.load_state_dict(strip_prefix(tensors, "loss."))
    loader = DataLoader(PairDataset(split_frames(config.data, "val"), config), batch_size=8)
    single = validate(model, loss_fn, loader, torch.device("cpu"))
    for key in ("val_loss", "val_depth_loss", "val_abs_rel", "val_rmse", "val_delta1"):
        assert single[key] == pytest.approx(meta["metrics"][key], rel=1e-5), key
