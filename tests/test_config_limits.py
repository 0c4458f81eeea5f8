"""Configs are small: a YAML alias bomb or a huge file is refused with a short ConfigError
(fault found from outside: 10^6 leaves gave a 5.8 MB error message, 10^8 exhausted memory)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from liploc.config import MAX_CONFIG_NODES, load_config
from liploc.errors import ConfigError


def _alias_bomb(levels: int) -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "model:\n  image_encoder_args:\n" + "\n".join(f"    {line}" for line in lines) + "\n"


@pytest.mark.parametrize("levels", [6, 8])  # 10^6 and 10^8 leaves
def test_an_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path: Path, levels: int) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(levels))
    start = time.process_time()
    with pytest.raises(ConfigError, match=r"bomb\.yaml: the YAML expands to more than") as err:
        load_config(path)
    assert len(str(err.value)) < 300
    assert time.process_time() - start < 5  # CPU seconds: counting is linear in the document


def test_aliases_that_stay_small_still_load(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("train:\n  lr_head: &lr 0.002\n  lr_image_encoder: *lr\n")
    assert load_config(path).train.lr_image_encoder == 0.002
    assert MAX_CONFIG_NODES >= 10_000  # far above any real config


def test_a_huge_config_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("name: x\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match=r"huge\.yaml: .* characters; a config holds at most"):
        load_config(path)


def test_validator_messages_do_not_carry_pydantics_prefix(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("projection:\n  fov_up: -30\n")  # below fov_down: a model validator refuses it
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "fov_up (-30" in str(err.value) and "Value error" not in str(err.value)


def test_records_nested_too_deeply_are_refused_naming_the_file(tmp_path: Path) -> None:
    # Fault found from outside: a manifest, frames.json or checkpoint .json nested 100,000 levels
    # deep gave RecursionError tracebacks in localize, evaluate and serve.
    import json

    import numpy as np

    from liploc.checksums import file_size_and_sha256
    from liploc.errors import DataError
    from liploc.localization.lidar_map import LidarMap
    from liploc.runtime.checkpoint import load_checkpoint

    deep = "[" * 100_000 + "]" * 100_000
    emb = np.eye(4, 8, dtype=np.float32)
    LidarMap.build(emb, np.tile(np.eye(4), (4, 1, 1)), [("00", i) for i in range(4)], "fp", {}).save(
        tmp_path / "m"
    )
    for name in ("manifest.json", "frames.json"):
        folder = tmp_path / f"m-{name}"
        folder.mkdir()
        for f in (tmp_path / "m").iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        (folder / name).write_text(deep)
        if name == "frames.json":  # with its checksum updated, as a crafted map would have it
            manifest = json.loads((folder / "manifest.json").read_text())
            manifest["files"][name]["sha256"] = file_size_and_sha256(folder / name)[1]
            (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(DataError, match=rf"{name}: .*nested too deeply"):
            LidarMap.load(folder)
    (tmp_path / "ck.safetensors").write_bytes(b"")
    (tmp_path / "ck.json").write_text(deep)
    with pytest.raises(DataError, match=r"ck\.json: .*nested too deeply"):
        load_checkpoint(tmp_path / "ck.safetensors")
