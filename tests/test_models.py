"""The two-tower model: create_model, projection head, parameter groups, fingerprint, local weights.

Random initialisation only (no network): pretrained weights are tested through local files the
tests write.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from liploc.config import LossConfig, ModelConfig
from liploc.errors import ConfigError, DataError
from liploc.models import ProjectionHead, TwoTowerModel, create_model, inference_config
from liploc.training.losses import build_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


TINY = ModelConfig(image_encoder="test_resnet", lidar_encoder="test_vit", embed_dim=32, lidar_in_chans=1)


def tiny_model(seed: int = 0, **changes: object) -> TwoTowerModel:
    torch.manual_seed(seed)
    return create_model(TINY.model_copy(update=changes))


def save_backbone(path: Path, name: str, num_classes: int = 0, seed: int = 5, **kwargs: object) -> dict:
    """Write the state dict of a random timm model (with a classifier when num_classes > 0)."""
    torch.manual_seed(seed)
    backbone = timm.create_model(name, num_classes=num_classes, **kwargs)
    state = {k: v.contiguous() for k, v in backbone.state_dict().items()}
    save_file(state, str(path))
    return state


def test_towers_give_unit_embeddings_of_embed_dim() -> None:
    model = tiny_model().eval()
    image, lidar = torch.randn(3, 3, 64, 64), torch.randn(3, 1, 32, 96)
    image_emb, lidar_emb = model(image, lidar)
    assert image_emb.shape == (3, 32) and lidar_emb.shape == (3, 32)
    torch.testing.assert_close(image_emb.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(lidar_emb.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(model.encode_image(image), image_emb)
    torch.testing.assert_close(model.encode_lidar(lidar), lidar_emb)
    assert model.lidar_encoder.patch_embed.proj.in_channels == 1


def test_projection_head_is_linear_gelu_linear_dropout_residual_layernorm() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(in_dim=7, embed_dim=4, dropout=0.5).eval()
    x = torch.randn(5, 7)
    projected = x @ head.projection.weight.T + head.projection.bias
    hidden = F.gelu(projected) @ head.fc.weight.T + head.fc.bias
    expected = F.layer_norm(hidden + projected, (4,), head.layer_norm.weight, head.layer_norm.bias)
    torch.testing.assert_close(head(x), expected)
    head.train()
    assert not torch.allclose(head(x), head(x))  # dropout acts in training only


def test_param_groups_cover_every_parameter_once_with_their_rates() -> None:
    model = tiny_model()
    groups = model.param_groups(lr_head=1e-3, lr_image_encoder=1e-4, lr_lidar_encoder=1e-5, weight_decay=1e-3)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("heads", 1e-3),
        ("image_encoder", 1e-4),
        ("lidar_encoder", 1e-5),
    ]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in model.image_encoder.parameters()} == {id(p) for p in groups[1]["params"]}
    for p in model.lidar_encoder.parameters():
        p.requires_grad_(False)
    assert [g["name"] for g in model.param_groups()] == ["heads", "image_encoder"]
    torch.optim.AdamW(model.param_groups())  # accepted as is


def test_fingerprint_follows_weights_and_architecture_only() -> None:
    model = tiny_model(seed=0)
    same = tiny_model(seed=1, head_dropout=0.3)
    assert model.fingerprint() != same.fingerprint()  # other random weights
    same.load_state_dict(model.state_dict())
    assert model.fingerprint() == same.fingerprint()  # dropout does not enter
    assert len(model.fingerprint()) == 64
    with torch.no_grad():
        same.lidar_head.fc.bias[0] += 1e-6
    assert model.fingerprint() != same.fingerprint()
    wider = tiny_model(seed=0, embed_dim=33)
    assert wider.fingerprint() != model.fingerprint()


def test_unknown_encoder_name_lists_near_matches() -> None:
    with pytest.raises(ConfigError, match=r"model.image_encoder: unknown timm model 'resnet5O'.*resnet50"):
        create_model(ModelConfig(image_encoder="resnet5O"))
    with pytest.raises(ConfigError, match=r"lidar_encoder.*vit_small_patch16_224"):
        create_model(ModelConfig(image_encoder="test_resnet", lidar_encoder="vit_smal_patch16_224"))


def test_paper_presets_build_and_run_on_small_inputs() -> None:
    cfg = ModelConfig(
        image_encoder="vit_small_patch16_224",
        image_encoder_args={"img_size": 64},
        lidar_encoder="resnet50",
    )
    model = create_model(cfg).eval()
    assert model.image_head.projection.in_features == 384
    assert model.lidar_head.projection.in_features == 2048
    with torch.no_grad():
        image_emb, lidar_emb = model(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64))
    assert image_emb.shape == lidar_emb.shape == (1, 256)
    configs = model.data_configs()
    assert configs["image"]["mean"] == (0.5, 0.5, 0.5)  # timm's default ViT-S weights
    assert configs["lidar"]["mean"] == (0.485, 0.456, 0.406)  # ImageNet statistics


def test_local_weights_load_without_classifier(tmp_path: Path) -> None:
    path = tmp_path / "resnet.safetensors"
    state = save_backbone(path, "test_resnet", num_classes=10)  # file holds fc.weight / fc.bias
    model = tiny_model(image_weights=path)
    loaded = model.image_encoder.state_dict()
    assert set(loaded) == set(state) - {"fc.weight", "fc.bias"}
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert "state_dict" not in model.image_encoder.pretrained_cfg  # no second copy kept alive


def test_local_weights_adapt_the_stem_to_lidar_channels(tmp_path: Path) -> None:
    path = tmp_path / "resnet.safetensors"
    state = save_backbone(path, "test_resnet")
    model = tiny_model(lidar_encoder="test_resnet", lidar_weights=path, lidar_in_chans=1)
    stem = model.lidar_encoder.conv1[0].weight
    assert stem.shape[1] == 1
    torch.testing.assert_close(stem[:, 0], state["conv1.0.weight"].sum(dim=1))


def test_local_vit_weights_follow_a_new_image_size(tmp_path: Path) -> None:
    path = tmp_path / "vit.safetensors"
    save_backbone(path, "test_vit", img_size=160)
    model = tiny_model(
        lidar_encoder="test_vit", lidar_weights=path, lidar_in_chans=3, lidar_encoder_args={"img_size": 64}
    )
    assert model.lidar_encoder.pos_embed.shape[1] == 1 + (64 // 16) ** 2


def test_bad_weight_files_name_the_file_and_the_problem(tmp_path: Path) -> None:
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(DataError, match=r"missing\.safetensors: encoder weights file not found"):
        tiny_model(image_weights=missing)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(DataError, match=r"garbage\.safetensors: not a readable safetensors file"):
        tiny_model(image_weights=garbage)
    partial = tmp_path / "partial.safetensors"
    state = save_backbone(tmp_path / "full.safetensors", "test_resnet")
    del state["layer2.0.conv1.weight"]
    save_file(state, str(partial))
    with pytest.raises(
        DataError, match=r"partial.safetensors: .*missing 1 backbone keys \(layer2.0.conv1.weight\)"
    ):
        tiny_model(image_weights=partial)
    other = tmp_path / "vit.safetensors"
    save_backbone(other, "test_vit")
    with pytest.raises(
        DataError, match=r"vit.safetensors: does not hold weights of timm model 'test_resnet'"
    ):
        tiny_model(image_weights=other)


def test_inference_config_skips_weight_loading(tmp_path: Path) -> None:
    cfg = TINY.model_copy(update={"pretrained": True, "image_weights": tmp_path / "gone.safetensors"})
    rebuilt = inference_config(cfg)
    assert not rebuilt.pretrained and rebuilt.image_weights is None
    assert create_model(rebuilt).architecture() == tiny_model().architecture()


def test_tiny_model_learns_to_pair_views() -> None:
    # 16 "places"; the LiDAR view is a grey, shifted, noisy version of the camera view. A few
    # AdamW steps with the paper's learning rates must lower the contrastive loss clearly.
    torch.manual_seed(0)
    scenes = F.interpolate(torch.rand(16, 3, 8, 8), size=(32, 32), mode="bilinear", align_corners=False)
    lidar = torch.roll(scenes.mean(dim=1, keepdim=True), shifts=3, dims=3)
    model = tiny_model(image_encoder="test_resnet", lidar_encoder="test_resnet", head_dropout=0.0)
    loss_fn = build_loss(LossConfig(kind="clip", temperature=0.1))
    optimizer = torch.optim.AdamW(
        model.param_groups(lr_head=1e-3, lr_image_encoder=1e-3, lr_lidar_encoder=1e-3)
    )
    losses = []
    for _ in range(25):
        noisy = lidar + 0.05 * torch.randn_like(lidar)
        loss = loss_fn(*model(scenes, noisy))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_on_cuda_keeps_its_fingerprint() -> None:
    model = tiny_model().eval()
    fingerprint = model.fingerprint()
    image, lidar = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 32, 64)
    with torch.no_grad():
        cpu = model(image, lidar)
        model.cuda()
        gpu = model(image.cuda(), lidar.cuda())
    assert model.fingerprint() == fingerprint
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=1e-3)
