"""The paper-exact settings: raw dot-product retrieval, the encoder fc, the soft-target loss at
temperature 1, OpenCV resizing, the reference code's metric, and the *_paper.yaml presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import IDEAL_TR, forward_camera_poses, write_kitti_odometry

from liploc.config import Config, LossConfig, ModelConfig, load_config
from liploc.datasets import Calibration, Frame
from liploc.errors import EmbeddingError
from liploc.evaluation.metrics import evaluate_retrieval
from liploc.evaluation.reference_metric import odometry_camera_translations, reference_metric
from liploc.interop.lip_loc import PAPER_SETTINGS
from liploc.localization.index import EmbeddingIndex
from liploc.localization.lidar_map import LidarMap
from liploc.models import create_model
from liploc.runtime.inputs import resize_chw, resize_chw_opencv
from liploc.training.losses import SoftTargetLoss, build_loss

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER_PRESETS = sorted(CONFIGS.glob("*_paper.yaml"))

# Raw dot product and cosine disagree here: the long vector wins by dot product only.
DB = np.array([[1.0, 0.0], [3.0, 3.0]], dtype=np.float32)
QUERY = np.array([[1.0, 0.2]], dtype=np.float32)


# --- retrieval by the raw dot product --------------------------------------------------------------
def test_index_ranks_by_raw_dot_product_when_not_unit_norm() -> None:
    _, raw = EmbeddingIndex.build(DB, kind="flat", unit_norm=False).search(QUERY, 1)
    assert raw[0, 0] == 1
    unit = DB / np.linalg.norm(DB, axis=1, keepdims=True)
    _, cosine = EmbeddingIndex.build(unit, kind="flat").search(QUERY / np.linalg.norm(QUERY), 1)
    assert cosine[0, 0] == 0
    with pytest.raises(EmbeddingError, match="L2-normalised"):
        EmbeddingIndex.build(DB, kind="flat")


def test_metrics_and_maps_take_unnormalised_embeddings(tmp_path: Path) -> None:
    xy = np.array([[0.0, 0.0], [100.0, 0.0]])
    result = evaluate_retrieval(
        QUERY, DB, np.array([[100.0, 0.0]]), xy, thresholds_m=[20.0], ks=[1], unit_norm=False
    )
    assert result.retrieved[0, 0] == 1 and result.main.recall[1] == 1.0
    poses = np.stack([np.eye(4), np.eye(4)])
    poses[1, 0, 3] = 100.0
    config = ModelConfig(normalize=False).model_dump(mode="json")
    lidar_map = LidarMap.build(DB, poses, [("00", 0), ("00", 1)], "f" * 64, config, index_kind="flat")
    loaded = LidarMap.load(lidar_map.save(tmp_path / "map"))
    assert loaded.localize(QUERY, 1, query_fingerprint="f" * 64)[0][0].frame_index == 1


# --- the model -------------------------------------------------------------------------------------
def _tiny(**kw) -> ModelConfig:
    return ModelConfig(image_encoder="test_resnet", lidar_encoder="test_resnet", embed_dim=16, **kw)


def test_model_normalize_false_keeps_raw_embeddings_and_encoder_fc() -> None:
    torch.manual_seed(0)
    model = create_model(_tiny(normalize=False, encoder_fc_dim=24)).eval()
    assert model.image_fc is not None and model.image_fc.out_features == 24
    assert model.image_head.projection.in_features == 24
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        raw = model.encode_image(x)
        expected = model.image_head(model.image_fc(model.image_encoder(x)))
    assert torch.allclose(raw, expected)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(2), atol=0.1)
    groups = {g["name"]: g for g in model.param_groups()}
    assert any(p is model.image_fc.weight for p in groups["image_encoder"]["params"])


def test_new_settings_change_the_fingerprint_only_when_set() -> None:
    torch.manual_seed(0)
    default = create_model(_tiny())
    assert "normalize" not in default.architecture() and "encoder_fc_dim" not in default.architecture()
    raw = create_model(_tiny(normalize=False))
    raw.load_state_dict(default.state_dict())
    assert raw.fingerprint() != default.fingerprint()


# --- the loss ---------------------------------------------------------------------------------------
def _reference_loss(camera: torch.Tensor, lidar: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The authors' CLIPModelV1.forward loss, written out."""
    logits = lidar @ camera.T / temperature
    targets = F.softmax((camera @ camera.T + lidar @ lidar.T) / 2 * temperature, dim=-1)
    lidar_loss = (-targets * F.log_softmax(logits, dim=-1)).sum(1)
    camera_loss = (-targets.T * F.log_softmax(logits.T, dim=-1)).sum(1)
    return ((camera_loss + lidar_loss) / 2).mean()


def test_soft_target_loss_on_raw_embeddings_is_the_reference_loss() -> None:
    torch.manual_seed(1)
    # Not unit norm, as the paper's, and small enough that the targets are soft (not ~identity).
    camera, lidar = 0.4 * torch.randn(8, 16), 0.4 * torch.randn(8, 16)
    loss_fn = build_loss(LossConfig(kind="soft-target", temperature=1.0, learnable_temperature=False))
    assert isinstance(loss_fn, SoftTargetLoss) and not list(loss_fn.parameters())
    assert loss_fn(camera, lidar).item() == pytest.approx(_reference_loss(camera, lidar).item(), rel=1e-5)


# --- resizing ---------------------------------------------------------------------------------------
def test_opencv_resize_is_within_one_level_of_torch_and_handles_any_channels() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(3, 37, 121)).astype(np.uint8)
    ours = resize_chw_opencv(image, (224, 224))
    assert ours.shape == (3, 224, 224) and np.array_equal(ours, np.rint(ours))  # whole levels
    assert np.abs(ours - np.rint(resize_chw(image, (224, 224)))).max() <= 1
    single = resize_chw_opencv(image[:1], (20, 30))
    assert single.shape == (1, 20, 30)
    floats = resize_chw_opencv(image.astype(np.float32) + 0.5, (20, 30))  # not whole levels
    assert not np.array_equal(floats, np.rint(floats))


# --- the reference code's metric ---------------------------------------------------------------------
def _kitti_calibration() -> Calibration:
    tr = np.zeros((4, 4))
    tr[0, 1], tr[1, 2], tr[2, 0], tr[3, 3] = -1.0, -1.0, 1.0, 1.0  # LiDAR x fwd, y left, z up -> camera
    return Calibration(tr, np.hstack([np.eye(3), np.zeros((3, 1))]))


def _frame(index: int, x: float, y: float, calib: Calibration) -> Frame:
    pose = np.eye(4)
    pose[:2, 3] = (x, y)
    return Frame("00", index, Path(f"{index}.png"), Path(f"{index}.bin"), pose, calib)


def test_reference_metric_ignores_the_lateral_axis() -> None:
    calib = _kitti_calibration()
    # Database: the origin, and a scan 15 m to the left of it (lateral in camera 0's frame).
    database = [_frame(0, 0.0, 0.0, calib), _frame(1, 0.0, 15.0, calib), _frame(2, 30.0, 0.0, calib)]
    queries = [_frame(10, 0.0, 0.0, calib)]
    translations = odometry_camera_translations(database, database[0])
    assert np.allclose(translations[1], [-15.0, 0.0, 0.0]) and np.allclose(translations[2], [0.0, 0.0, 30.0])
    q_xy = np.array([[0.0, 0.0]])
    db_xy = np.array([[0.0, 0.0], [0.0, 15.0], [30.0, 0.0]])
    emb_q = np.array([[0.0, 1.0, 0.0]], dtype=np.float32)
    emb_db = np.eye(3, dtype=np.float32)  # the query retrieves scan 1, 15 m to the side
    result = evaluate_retrieval(emb_q, emb_db, q_xy, db_xy, thresholds_m=[10.0, 20.0], ks=[1])
    metric = reference_metric(result, queries, database)
    assert metric.distances_m[0] == pytest.approx(0.0)
    assert metric.recall_at_1 == (1.0, 1.0)  # the reference code calls it right
    assert metric.liploc_recall_at_1 == (0.0, 1.0)  # liploc: 15 m away, wrong at 10 m
    # KITTI-360: the reference reads world y and z, so it ignores world x instead.
    kitti360 = reference_metric(result, queries, database, layout="kitti360")
    assert kitti360.distances_m[0] == pytest.approx(15.0) and kitti360.recall_at_1 == (0.0, 1.0)


def test_reference_metric_reproduces_an_odometry_poses_file(tmp_path: Path) -> None:
    from liploc.datasets import open_dataset

    camera_poses = forward_camera_poses(5, step_m=3.0)
    for i, pose in enumerate(camera_poses):  # turning about the camera's y (down) axis, climbing
        a = 0.2 * i
        pose[:3, :3] = [[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]]
        pose[:3, 3] = (2.0 * i, -0.5 * i, 3.0 * i)
    tr = IDEAL_TR.copy()
    tr[:3, 3] = (0.27, -0.08, -0.06)
    write_kitti_odometry(tmp_path / "kitti", "00", 5, camera_poses=camera_poses, Tr=tr)
    frames = open_dataset(tmp_path / "kitti").frames("00")
    translations = odometry_camera_translations(frames, frames[0])
    assert np.allclose(translations, camera_poses[:, :3, 3], atol=1e-6)


# --- the presets -------------------------------------------------------------------------------------
def test_there_is_a_paper_preset_for_every_reference_experiment() -> None:
    names = {p.stem for p in PAPER_PRESETS}
    assert names == {
        "kitti_resnet50_paper",
        "kitti_vit_small_paper",
        "kitti360_resnet50_paper",
        "kitti360_vit_small_paper",
        "combined_resnet50_paper",
    }


@pytest.mark.parametrize("path", PAPER_PRESETS, ids=lambda p: p.stem)
def test_paper_presets_are_paper_exact(path: Path) -> None:
    text = path.read_text()
    assert "PAPER-EXACT" in text.split("name:")[0]  # the header says which kind of config it is
    # Set explicitly, so that a default taken from timm's per-model statistics never applies.
    assert "normalize: imagenet" in text
    cfg = load_config(path)
    assert cfg.model.normalize is False
    assert (cfg.loss.kind, cfg.loss.temperature, cfg.loss.learnable_temperature) == (
        "soft-target",
        1.0,
        False,
    )
    assert cfg.data.resize == "opencv" and cfg.projection.empty_value == 251.0
    assert cfg.model.pretrained and cfg.model.embed_dim == 256
    vit = cfg.model.image_encoder.startswith("vit")
    assert cfg.model.encoder_fc_dim == (2048 if vit else None)
    tc = cfg.train
    assert (tc.lr_head, tc.lr_image_encoder, tc.lr_lidar_encoder) == (1e-3, 1e-5, 1e-4)
    assert (tc.weight_decay, tc.encoder_weight_decay) == (1e-3, 0.0)
    assert (tc.scheduler, tc.plateau_patience, tc.plateau_factor) == ("plateau", 1, 0.8)
    expected = {  # batch, epochs: the reference configs exp_largest(_vit), exp_360(_vit), exp_combined
        "kitti_resnet50_paper": (32, 100),
        "kitti_vit_small_paper": (32, 100),
        "kitti360_resnet50_paper": (16, 100),
        "kitti360_vit_small_paper": (32, 50),
        "combined_resnet50_paper": (32, 100),
    }[path.stem]
    assert (tc.batch_size, tc.epochs) == expected


def test_the_import_uses_the_paper_preset_settings() -> None:
    preset = load_config(CONFIGS / "kitti_resnet50_paper.yaml").model_dump(mode="json")
    for section, values in PAPER_SETTINGS.items():
        for key, value in values.items():
            got = preset[section][key]
            assert (list(got) if isinstance(got, (list, tuple)) else got) == value, f"{section}.{key}"


def test_a_paper_model_trains_a_step_on_raw_embeddings() -> None:
    cfg = Config.model_validate(
        {
            "model": {"image_encoder": "test_resnet", "lidar_encoder": "test_resnet", "embed_dim": 16},
            "loss": {"kind": "soft-target", "temperature": 1.0},
        }
    )
    cfg.model.normalize = False
    torch.manual_seed(0)
    model = create_model(cfg.model)
    loss_fn = build_loss(cfg.loss)
    optimizer = torch.optim.AdamW(model.param_groups(), lr=1e-3)
    image, lidar = model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    loss = loss_fn(image, lidar)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and image.norm(dim=1).min() > 1.5
