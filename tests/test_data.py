"""The dataset of pairs: preprocessing, transforms, augmentation determinism, cache, splits, sampler."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_kitti_odometry
from torch.utils.data import DataLoader

from liploc.config import Config, DatasetSplit, load_config
from liploc.datasets import load_scan
from liploc.errors import ConfigError, DataError
from liploc.lidar import lidar_range_input
from liploc.runtime.data_roots import resolve_data_roots, split_frames
from liploc.runtime.frame_dataset import ImageDataset, LidarDataset, PairDataset
from liploc.runtime.inputs import IMAGENET_MEAN, IMAGENET_STD, build_transforms, resize_chw
from liploc.runtime.preprocess_cache import PreprocessCache
from liploc.training.samplers import EpochSampler
from liploc.training.splits import training_splits

SIZE = (24, 40)  # (height, width) of the network inputs in these tests


def small_config(root: Path | None = None, *overrides: str) -> Config:
    cfg = load_config(None, [f"data.image_size=[{SIZE[0]}, {SIZE[1]}]", "data.cache=false", *overrides])
    return resolve_data_roots(cfg, [root] if root else [])


@pytest.fixture
def odometry(tmp_path: Path) -> Path:
    """KITTI odometry folder: sequence 00 (12 posed frames), 01 (6 frames without poses)."""
    root = tmp_path / "kitti"
    write_kitti_odometry(root, "00", 12, image_size=(64, 20), n_points=3000, seed=1)
    write_kitti_odometry(root, "01", 6, image_size=(64, 20), n_points=3000, pose_file=None, seed=2)
    return root


def test_normalisation_follows_each_encoders_pretrained_config_unless_set() -> None:
    # vit_small_patch16_224 was pretrained on inputs normalised with mean = std = 0.5, resnet50 on
    # ImageNet statistics; each tower follows its own encoder unless data.normalize says otherwise.
    cfg = small_config(None, "model.image_encoder=vit_small_patch16_224", "model.lidar_encoder=resnet50")
    assert cfg.data.normalize == "auto"
    array = np.full((3, *SIZE), 200, dtype=np.uint8)
    auto = build_transforms(cfg.data, train=False, model=cfg.model)
    np.testing.assert_allclose(auto.image(array)[:, 0, 0].numpy(), (200 / 255 - 0.5) / 0.5, rtol=1e-6)
    imagenet = (200 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(auto.lidar(array)[:, 0, 0].numpy(), imagenet, rtol=1e-6)
    forced = build_transforms(cfg.data.model_copy(update={"normalize": "imagenet"}), False, cfg.model)
    np.testing.assert_allclose(forced.image(array)[:, 0, 0].numpy(), imagenet, rtol=1e-6)
    with pytest.raises(ConfigError, match="no pretrained data config for encoder 'my_net'"):
        build_transforms(cfg.data, False, cfg.model.model_copy(update={"image_encoder": "my_net"}))


def test_transforms_normalise_like_imagenet_and_drop_out_only_in_training() -> None:
    cfg = small_config(None, "data.coarse_dropout_p=1.0")
    array = np.full((3, *SIZE), 200, dtype=np.uint8)
    evaluation = build_transforms(cfg.data, train=False, model=cfg.model)
    out = evaluation.image(array, np.random.default_rng(0))
    expected = (200 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert out.shape == (3, *SIZE) and out.dtype == torch.float32
    np.testing.assert_allclose(out[:, 0, 0].numpy(), expected, rtol=1e-6)
    assert torch.all(out == out[:, :1, :1])  # no holes when evaluating

    training = build_transforms(cfg.data, train=True, model=cfg.model)
    a = training.image(array, np.random.default_rng(7))
    b = training.image(array, np.random.default_rng(7))
    c = training.image(array, np.random.default_rng(8))
    holes = (a == 0).all(dim=0)
    # 5 holes of 22-45 % of each side: a clear part of the image, but not all of it.
    assert 0.04 < holes.float().mean() < 0.9
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, ~holes], out[:, ~holes])

    no_aug = build_transforms(small_config(None, "data.augment=false").data, train=True, model=cfg.model)
    assert torch.equal(no_aug.image(array, np.random.default_rng(7)), out)
    lidar_clean = build_transforms(
        small_config(None, "data.augment_lidar=false").data, train=True, model=cfg.model
    )
    assert lidar_clean.lidar.dropout is None and lidar_clean.image.dropout is not None


def test_pair_dataset_builds_the_paper_inputs(odometry: Path) -> None:
    cfg = small_config(odometry, "data.datasets=[{train: ['00']}]")
    frames = split_frames(cfg.data, "train")
    dataset = PairDataset(frames, cfg)
    sample = dataset[3]
    assert set(sample) == {"image", "lidar", "position_xy", "world", "index"}
    assert sample["image"].shape == (3, *SIZE) and sample["lidar"].shape == (3, *SIZE)
    assert int(sample["index"]) == 3
    np.testing.assert_allclose(sample["position_xy"].numpy(), frames[3].pose[:2, 3])

    # The LiDAR input is the paper's cropped range image (3 x 32 x 300) resized, then normalised.
    crop = lidar_range_input(load_scan(frames[3].scan_path), cfg.projection, frames[3].calib)
    assert crop.shape == (3, 32, 300)
    resized = np.clip(np.rint(resize_chw(crop, SIZE)), 0, 255) / 255.0
    normalised = (resized - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(sample["lidar"].numpy(), normalised, atol=1e-5)

    assert set(ImageDataset(frames, cfg)[0]) == {"image", "position_xy", "world", "index"}
    assert set(LidarDataset(frames, cfg)[0]) == {"lidar", "position_xy", "world", "index"}
    with pytest.raises(ValueError, match="modalities"):
        PairDataset(frames, cfg, modalities=("radar",))  # type: ignore[arg-type]


def test_augmentation_depends_only_on_seed_epoch_and_index(odometry: Path) -> None:
    cfg = small_config(odometry, "data.datasets=[{train: ['00']}]", "data.coarse_dropout_p=1.0")
    frames = split_frames(cfg.data, "train")
    dataset = PairDataset(frames, cfg, train=True)
    again = PairDataset(frames, cfg, train=True)  # a fresh copy, as in another worker or process
    first = dataset[(2, 5)]
    assert torch.equal(first["image"], again[(2, 5)]["image"])
    assert torch.equal(first["lidar"], again[(2, 5)]["lidar"])
    assert not torch.equal(first["image"], dataset[(3, 5)]["image"])  # next epoch: other holes
    plain = PairDataset(frames, cfg, train=False)[5]
    assert not torch.equal(first["image"], plain["image"])
    assert torch.equal(PairDataset(frames, cfg, train=False)[(4, 5)]["image"], plain["image"])


def test_photometric_jitter_changes_only_training_images_and_keeps_the_dropout_draws(
    odometry: Path,
) -> None:
    base = ("data.datasets=[{train: ['00']}]", "data.coarse_dropout_p=1.0")
    cfg = small_config(odometry, *base)
    jittered = small_config(odometry, *base, "data.photometric.p=1.0", "data.photometric.blur_p=1.0")
    frames = split_frames(cfg.data, "train")
    plain, jit = PairDataset(frames, cfg, train=True), PairDataset(frames, jittered, train=True)
    a, b = plain[(2, 5)], jit[(2, 5)]
    assert torch.equal(a["lidar"], b["lidar"])  # the LiDAR input is never jittered
    holes_a, holes_b = a["image"] == 0, b["image"] == 0
    assert torch.equal(holes_a, holes_a & holes_b)  # the same holes: dropout's stream is untouched
    assert not torch.equal(a["image"][~holes_a], b["image"][~holes_a])
    assert torch.equal(b["image"], PairDataset(frames, jittered, train=True)[(2, 5)]["image"])
    assert not torch.equal(b["image"], jit[(3, 5)]["image"])  # each epoch its own jitter
    evaluation = PairDataset(frames, jittered, train=False)[5]["image"]
    assert torch.equal(evaluation, PairDataset(frames, cfg, train=False)[5]["image"])
    off = small_config(odometry, *base, "data.photometric.p=0.0", "data.photometric.brightness=0.9")
    assert torch.equal(PairDataset(frames, off, train=True)[(2, 5)]["image"], a["image"])


def test_photometric_jitter_stays_in_range_and_moves_brightness_within_its_bounds() -> None:
    from liploc.config import PhotometricAugment
    from liploc.runtime.inputs import PhotometricJitter

    image = np.full((3, 16, 16), 100, np.uint8)
    only_brightness = PhotometricAugment(
        p=1.0, brightness=0.5, contrast=0, saturation=0, hue=0, gamma=0, white_balance=0, blur_p=0, noise=0
    )
    rng = np.random.default_rng(0)
    means = [PhotometricJitter(only_brightness)(image, rng).mean() for _ in range(200)]
    assert 50 - 1e-3 <= min(means) < 60 and 140 < max(means) <= 150 + 1e-3
    everything = PhotometricJitter(PhotometricAugment(p=1.0, blur_p=1.0, noise=0.2))
    out = everything(np.random.default_rng(1).integers(0, 256, (3, 16, 16)).astype(np.uint8), rng)
    assert out.dtype == np.float32 and out.shape == (3, 16, 16)
    assert out.min() >= 0 and out.max() <= 255


def test_camera_depth_input_is_projected_at_the_network_size(odometry: Path) -> None:
    cfg = small_config(odometry, "data.datasets=[{train: ['00']}]", "data.lidar_input=camera_depth")
    frames = split_frames(cfg.data, "train")
    dataset = PairDataset(frames, cfg, modalities=("lidar",))
    raw = dataset.preprocessed(0, "lidar")
    assert raw.shape == (3, *SIZE)
    assert 0 < np.count_nonzero(raw[0]) < raw[0].size  # sparse: some pixels hold a depth


def test_preprocess_cache_reuses_and_invalidates(odometry: Path, tmp_path: Path) -> None:
    cfg = small_config(odometry, "data.datasets=[{train: ['00']}]")
    frames = split_frames(cfg.data, "train")
    cache = PreprocessCache(tmp_path / "cache", cfg)
    calls: list[int] = []

    def make() -> np.ndarray:  # an entry of the shape the settings give (others are rebuilt)
        calls.append(1)
        h, w = cfg.data.image_size
        return (np.arange(3 * h * w) % 251).astype(np.uint8).reshape(3, h, w)

    source = frames[0].image_path
    first = cache.get(source, "image", make)
    second = cache.get(source, "image", make)
    assert len(calls) == 1 and np.array_equal(first, second)

    cache.path_for(source, "image").write_bytes(b"not an npy file")
    cache.get(source, "image", make)
    assert len(calls) == 2  # a damaged entry is made again

    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    cache.get(source, "image", make)
    assert len(calls) == 3  # an edited source is not served from the cache

    other = PreprocessCache(tmp_path / "cache", small_config(odometry, "data.image_size=[16, 16]"))
    assert other.folder != cache.folder  # other preprocessing settings, other entries

    cached = PairDataset(frames, cfg, cache_dir=tmp_path / "pairs")
    plain = PairDataset(frames, cfg)
    for _ in range(2):  # the second pass reads the cache
        assert torch.equal(cached[4]["lidar"], plain[4]["lidar"])
        assert torch.equal(cached[4]["image"], plain[4]["image"])
    assert len(list((tmp_path / "pairs").rglob("*.npy"))) == 2


def test_data_roots_by_default_and_by_layout() -> None:
    cfg = Config()
    cfg.data.datasets = [DatasetSplit(layout="semantickitti"), DatasetSplit(layout="kitti360")]
    both = resolve_data_roots(cfg, ["semantickitti=/data/sk", "/data/other"])
    assert [d.root for d in both.data.datasets] == [Path("/data/sk"), Path("/data/other")]
    assert cfg.data.datasets[0].root is None  # the input config is not modified
    odd = resolve_data_roots(cfg, ["/data/run=3"])  # '=' in a folder name, not a layout
    assert [d.root for d in odd.data.datasets] == [Path("/data/run=3")] * 2


def test_training_splits_refuse_a_sequence_without_poses_unless_allowed(odometry: Path) -> None:
    # 01 has images and scans but no pose file: training on it would drop all its frames.
    cfg = small_config(odometry, "data.datasets=[{train: ['00', '01']}]", "data.val_fraction=0.25")
    with pytest.raises(DataError, match=r"poses/01.txt: sequence 01 has no poses.*--allow-missing"):
        training_splits(cfg.data, seed=3)
    allowed = cfg.model_copy(deep=True)
    allowed.data.allow_missing = True
    splits = training_splits(allowed.data, seed=3)
    assert splits.missing_sequences == ["auto:01"] and splits.left_out["missing_sequence"] == 1
    assert any("left out 1 sequence(s) with missing data" in note for note in splits.notes)
    assert {f.sequence for f in splits.train + splits.val} == {"00"}

    random = allowed.model_copy(deep=True)
    random.data.val_split = "random"
    splits = training_splits(random.data, seed=3)
    assert len(splits.train) + len(splits.val) == 12 and len(splits.val) == 3
    key = {(f.sequence, f.index) for f in splits.val}
    assert key.isdisjoint({(f.sequence, f.index) for f in splits.train})
    assert key == {(f.sequence, f.index) for f in training_splits(random.data, seed=3).val}

    named = small_config(odometry, "data.datasets=[{train: ['00'], val: ['01'], frame_step: 3}]")
    assert [f.index for f in split_frames(named.data, "train")] == [0, 3, 6, 9]
    with pytest.raises(DataError, match="sequence 01 has no poses"):
        training_splits(named.data, seed=0)  # the val sequence cannot be validated on

    with pytest.raises(ConfigError, match="--data-root"):
        split_frames(small_config(None, "data.datasets=[{train: ['00']}]").data, "train")
    with pytest.raises(DataError, match="no sequence '07'"):
        split_frames(small_config(odometry, "data.datasets=[{train: ['07']}]").data, "train")


def test_epoch_sampler_shards_resumes_and_reshuffles() -> None:
    shards = []
    for rank in range(2):
        sampler = EpochSampler(10, shuffle=True, seed=5, rank=rank, world_size=2, drop_last=True)
        sampler.set_epoch(1)
        shards.append([index for epoch, index in sampler])
    assert all(len(s) == 5 for s in shards)
    assert set(shards[0]).isdisjoint(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(10))

    sampler = EpochSampler(10, shuffle=True, seed=5)
    sampler.set_epoch(1)
    full = list(sampler)
    assert all(epoch == 1 for epoch, _ in full)
    sampler.set_epoch(1, start=4)
    assert list(sampler) == full[4:] and len(sampler) == 6
    sampler.set_epoch(2)
    assert [i for _, i in sampler] != [i for _, i in full]


def test_one_iteration_of_the_epoch_sampler_spans_epochs_as_separate_ones_would() -> None:
    # The training loop iterates once for the rest of the run, so that its workers prepare the
    # next epoch while this one ends: the keys must be those of the separate epochs (resumed
    # mid-epoch at `start`, each epoch cut to the samples its steps take).
    def separate(sampler: EpochSampler, epoch: int, start: int = 0) -> list[tuple[int, int]]:
        sampler.set_epoch(epoch, start=start)
        return list(sampler)[: 8 - start]

    for rank in range(2):
        sampler = EpochSampler(20, shuffle=True, seed=3, rank=rank, world_size=2, drop_last=True)
        expected = separate(sampler, 1, start=2) + separate(sampler, 2) + separate(sampler, 3)
        sampler.set_epoch(1, start=2, through=3, per_epoch=8)
        assert list(sampler) == expected
        assert [e for e, _ in expected] == [1] * 6 + [2] * 8 + [3] * 8
    sampler.set_epoch(4, start=8, through=5, per_epoch=8)  # epoch 4's steps all done
    assert {e for e, _ in sampler} == {5}
    with pytest.raises(ValueError, match="per_epoch"):
        sampler.set_epoch(0, through=2)


def test_a_corrupt_image_is_named(odometry: Path) -> None:
    cfg = small_config(odometry, "data.datasets=[{train: ['00']}]")
    frames = split_frames(cfg.data, "train")
    frames[2].image_path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=str(frames[2].image_path)):
        PairDataset(frames, cfg)[2]
    # From a worker process too, the error names the file (and no traceback text).
    loader = DataLoader(PairDataset(frames, cfg), batch_size=4, num_workers=1)
    with pytest.raises(DataError) as err:
        list(loader)
    assert str(err.value).startswith(f"{frames[2].image_path}: ") and "Traceback" not in str(err.value)
    assert err.value.path == frames[2].image_path
