"""Typed configuration: defaults, YAML loading, overrides, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from liploc.config import Config, load_config, save_config
from liploc.errors import ConfigError


def test_defaults_reproduce_the_paper_projection() -> None:
    cfg = Config()
    p = cfg.projection
    assert (p.fov_up, p.fov_down, p.height, p.width, p.max_range) == (3.0, -25.0, 64, 900, 50.0)
    assert p.range_scale == pytest.approx(5.1)
    assert p.empty_value == 251
    assert cfg.model.embed_dim == 256
    assert cfg.data.image_size == (224, 224)


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.batch_size=8", "model.image_encoder=vit_small_patch16_224"])
    path = tmp_path / "cfg.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert again.train.batch_size == 8


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batch_sise: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.batch_sise" in str(err.value)
    assert str(path) in str(err.value)


def test_mistyped_value_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("projection:\n  height: sixty-four\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "projection.height" in str(err.value)


def test_unknown_section_and_override_errors() -> None:
    with pytest.raises(ConfigError, match="optimiser"):
        load_config(None, ["optimiser.lr=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.batch_size"])
    with pytest.raises(ConfigError, match=r"loss\.kind"):
        load_config(None, ["loss.kind=triplet"])


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    q = tmp_path / "broken.yaml"
    q.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(q)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
