"""The fast paths of issue 11 compute what the plain paths compute: uint8 worker inputs with
device-side normalisation and dropout, embedding with loader workers, the resident camera-tower
Localizer, losses read from the device only at log steps (and before saves), DDP buffer rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from corridor_world import corridor_fixture
from tiny_runs import TINY
from tiny_runs import tiny_config as _config
from torch import nn

from liploc.config import load_config
from liploc.errors import LiplocError
from liploc.localization import embedding
from liploc.localization.embedding import embed_frames
from liploc.localization.lidar_map import LidarMap
from liploc.localization.localize import Localizer
from liploc.localization.map_folder import MODEL_DIR
from liploc.models import ImageTower, create_model
from liploc.runtime.checkpoint import load_checkpoint
from liploc.runtime.data_roots import split_frames
from liploc.runtime.frame_dataset import PairDataset
from liploc.runtime.preprocess_cache import CACHE_DIR_ENV, preprocess_cache_dir
from liploc.training.checkpointing import save_training_checkpoint
from liploc.training.distributed import _needs_buffer_broadcast
from liploc.training.losses import ClipLoss, build_loss
from liploc.training.train import train

drive = corridor_fixture(40, 16, name="drive")


def test_raw_worker_inputs_with_device_transform_equal_the_cpu_transform(drive: Path) -> None:
    cfg = _config(drive, "data.coarse_dropout_p=1.0")
    frames = split_frames(cfg.data, "train")
    for train_mode in (True, False):
        plain = PairDataset(frames, cfg, train=train_mode)
        raw = PairDataset(frames, cfg, train=train_mode, raw=True)
        keys = [(3, i) for i in range(6)]
        samples = [raw[k] for k in keys]
        assert samples[0]["image"].dtype == torch.uint8  # a quarter of float32's bytes to send
        assert ("image_holes" in samples[0]) == train_mode
        batch = torch.utils.data.default_collate(samples)
        for modality in ("image", "lidar"):
            device_side = raw.device_inputs(batch, modality, torch.device("cpu"))
            expected = torch.stack([plain[k][modality] for k in keys])
            assert device_side.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(device_side, expected), (modality, train_mode)
            if train_mode:
                assert (expected == 0).all(dim=1).any()  # the holes are there, not just the same


def test_embedding_with_workers_equals_the_plain_path(drive: Path) -> None:
    cfg = _config(drive)
    frames = split_frames(cfg.data, "val")
    torch.manual_seed(0)
    model = create_model(cfg.model).eval()
    with_workers = embed_frames(
        model, frames, cfg, "lidar", device=torch.device("cpu"), batch_size=5, num_workers=2
    )
    # Today's path before this change: float inputs transformed in the dataset, contiguous layout.
    loader = torch.utils.data.DataLoader(PairDataset(frames, cfg, modalities=("lidar",)), batch_size=5)
    with torch.no_grad():
        plain = torch.cat([model.encode_lidar(b["lidar"]) for b in loader]).numpy()
    assert with_workers.shape == (len(frames), cfg.model.embed_dim)
    np.testing.assert_allclose(with_workers, plain, atol=1e-5)


def test_image_and_scan_sets_embed_in_one_pass_as_they_do_apart(
    drive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(drive)
    queries, database = split_frames(cfg.data, "val"), split_frames(cfg.data, "train")
    torch.manual_seed(0)
    model = create_model(cfg.model).eval()
    cpu = torch.device("cpu")
    apart = [
        embed_frames(model, queries, cfg, "image", device=cpu, batch_size=4, num_workers=0),
        embed_frames(model, database, cfg, "lidar", device=cpu, batch_size=4, num_workers=0),
    ]
    # With 2 cores and a worker, the main process embeds on one torch thread (idle torch threads
    # would spin on the worker's core), and has its threads back afterwards.
    threads_seen: list[int] = []
    real_embed_batch = embedding.embed_batch

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads_seen.append(torch.get_num_threads())
        return real_embed_batch(*args, **kwargs)

    monkeypatch.setattr(embedding, "embed_batch", recording)
    monkeypatch.setattr(embedding, "loader_cores", lambda: 2)
    # A cache folder of this test alone: the embeddings above (and other tests) filled the session's.
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "user-cache"))
    cache = Path(preprocess_cache_dir(cfg.data))
    assert cache == tmp_path / "user-cache" and not cache.exists()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        together = embedding.embed_frame_sets(
            model, [(queries, "image"), (database, "lidar")], cfg, device=cpu, batch_size=4, num_workers=1
        )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert set(threads_seen) == {1}
    for a, b in zip(apart, together, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)  # one torch thread vs several: sums reorder
    # Evaluation-style embedding fills the shared preprocessing cache (training's) by default: one
    # entry per query image and per database scan.
    assert len(list(cache.rglob("*.npy"))) == len(queries) + len(database)


@pytest.fixture(scope="module")
def tiny_map(drive: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    cfg = _config(drive)
    torch.manual_seed(3)
    model = create_model(cfg.model).eval()
    out = tmp_path_factory.mktemp("map") / "map"
    frames = split_frames(cfg.data, "train")
    emb = embed_frames(model, frames, cfg, "lidar", device=torch.device("cpu"), num_workers=0)
    lidar_map = LidarMap.build(
        emb,
        np.stack([f.pose for f in frames]),
        [(f.sequence, f.index) for f in frames],
        model.fingerprint(),
        {},
    )
    lidar_map.save(out)
    position = {"step": 0, "epoch": 0, "step_in_epoch": 0, "epoch_loss_sum": 0.0, "epoch_loss_count": 0}
    (out / MODEL_DIR).mkdir()
    save_training_checkpoint(
        out / MODEL_DIR / "model.safetensors", cfg, model, build_loss(cfg.loss), position, {}
    )
    return out, model


def test_localizer_keeps_only_the_image_tower_and_fingerprints_once(
    tiny_map: tuple[Path, nn.Module], drive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    map_dir, full_model = tiny_map
    import liploc.models
    import liploc.models.image_tower as image_tower

    calls = {"fingerprint": 0}
    real_fingerprint = liploc.models.state_fingerprint

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["fingerprint"] += 1
        return real_fingerprint(*args, **kwargs)

    built_on: list[str] = []
    real_build = image_tower._build

    def recording_build(cfg):  # type: ignore[no-untyped-def]
        tower = real_build(cfg)
        built_on.append(next(tower.parameters()).device.type)
        return tower

    monkeypatch.setattr(liploc.models, "state_fingerprint", counting)
    monkeypatch.setattr(image_tower, "_build", recording_build)
    loc = Localizer.open(map_dir, max_batch=2)
    assert isinstance(loc.model, ImageTower) and not hasattr(loc.model, "lidar_encoder")
    assert built_on == ["meta"]  # shapes only: no random initialisation before the load
    assert loc.fingerprint == full_model.fingerprint() and calls["fingerprint"] == 1

    images = sorted((drive / "sequences" / "01" / "image_2").glob("*.png"))[:5]
    sizes: list[int] = []
    real_embed = loc.embedder.embed  # type: ignore[union-attr]
    monkeypatch.setattr(loc.embedder, "embed", lambda batch: (sizes.append(len(batch)), real_embed(batch))[1])
    batched = loc.localize(images, k=3)
    assert sizes == [2, 2, 1]  # bounded batches
    one_by_one = [loc.localize([image], k=3)[0] for image in images]
    assert calls["fingerprint"] == 1  # never again per query
    # The same answers as a Localizer around the whole two-tower model (the path before).
    reference = Localizer(loc.lidar_map, full_model, loc.config, "cpu").localize(images, k=3)
    for a, b, c in zip(batched, one_by_one, reference, strict=True):
        assert [m.map_index for m in a] == [m.map_index for m in b] == [m.map_index for m in c]
        np.testing.assert_allclose([m.score for m in a], [m.score for m in c], atol=1e-5)


def test_nan_loss_is_caught_before_the_next_save(
    drive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(drive, "train.max_steps=6", "train.log_every=5", "train.checkpoint_every_steps=2")
    real = ClipLoss._row_loss_sum
    steps = {"n": 0}

    def nan_from_third(self, batch):  # type: ignore[no-untyped-def]
        if self.training:
            steps["n"] += 1
        value = real(self, batch)
        return value * float("nan") if steps["n"] >= 3 else value

    monkeypatch.setattr(ClipLoss, "_row_loss_sum", nan_from_third)
    with pytest.raises(LiplocError, match="training loss is nan at step 3"):
        train(cfg, tmp_path / "run", progress=False)
    # The step-4 save was refused: the last checkpoint is the healthy one of step 2.
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")[1]["step"] == 2


def test_ddp_broadcasts_buffers_only_when_a_model_has_more_than_batch_norm_statistics() -> None:
    cfg = load_config(TINY)
    assert not _needs_buffer_broadcast(create_model(cfg.model))

    class WithCounter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.register_buffer("seen", torch.zeros(()))

    assert _needs_buffer_broadcast(WithCounter())
